"""Memory format is a speed choice, never a correctness one (cnnscope.core.memory_format): a model
whose forward fails on channels_last batches, or gives other logits on them, gets contiguous batches
and weights, in training, evaluation, bench and the Python API, and the run says so once and records
it; --no-channels-last means contiguous weights and batches."""
import json
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cnnscope
from cnnscope.cli import cli
from cnnscope.core.memory_format import channels_last_refusal
from cnnscope.runs import bench, loaders
from cnnscope.runs.datasets import load_dataset
from cnnscope.zoo import build

LENET = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F


    class LeNet(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc = nn.Linear(16 * 5 * 5, num_classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc(x.view(x.size(0), -1))
''')


class ViewLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = F.max_pool2d(self.conv(x), 4)
        return self.fc(x.view(x.size(0), -1))


class StorageOrder(nn.Module):
    """Reads its input's memory as if it were contiguous: no error on channels_last, other logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 32 * 32, 10)

    def forward(self, x):
        y = self.conv(x)
        flat = torch.as_strided(y, (y.shape[0], y[0].numel()), (y[0].numel(), 1))
        return self.fc(flat)


def images(n=4):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_a_model_that_fails_on_channels_last_batches_only_is_named_with_the_error():
    model = ViewLeNet()
    with pytest.raises(RuntimeError, match="view size is not compatible"):  # what the check protects from
        model(images().contiguous(memory_format=torch.channels_last))
    reason = channels_last_refusal(model, images())
    assert reason.startswith("its forward fails on channels_last batches only (RuntimeError: view size is not "
                             "compatible with input tensor's size and stride")


def test_a_model_that_gives_other_logits_on_channels_last_batches_is_refused():
    reason = channels_last_refusal(StorageOrder(), images())
    assert reason.startswith("its logits on channels_last batches differ from those on contiguous ones (by up to ")
    assert float(reason.rsplit("by up to ", 1)[1].rstrip(")")) > 1e-3


def test_a_model_that_takes_channels_last_is_left_as_it_was():
    model = build("basic").train()
    before = {name: (t.clone(), t.stride()) for name, t in model.state_dict().items()}
    assert channels_last_refusal(model, images()) == ""
    assert model.training  # the check runs in eval mode, then gives the flag back
    for name, t in model.state_dict().items():  # values and layout as they were
        assert torch.equal(t, before[name][0]) and t.stride() == before[name][1], name


def test_the_api_evaluates_and_fits_a_view_model():
    model = ViewLeNet()
    x, y = images(16), torch.arange(16) % 10
    result = cnnscope.evaluate(model, x, y)
    assert result.num_test == 16 and sum(map(sum, result.confusion)) == 16
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    fitted = cnnscope.fit(model, loader, loader, recipe=cnnscope.get_recipe("basic"), epochs=1)
    assert len(fitted.history) == 1 and 0 <= fitted.history[0]["val_acc"] <= 100
    assert model.conv.weight.is_contiguous()  # its weights stayed contiguous


def test_loaders_give_contiguous_batches_when_asked():
    ds = load_dataset("fake", fake_size=(40, 10))
    for channels_last in (True, False):
        x, _ = next(iter(loaders.make_loader(ds.train, ds, batch_size=8, train=True, channels_last=channels_last)))
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert x.is_contiguous() != channels_last


def test_bench_of_a_view_model_runs_contiguous_and_says_so(tmp_path):
    (tmp_path / "lenet.py").write_text(LENET)
    said = []
    *_, channels_last = bench.probe_model(f"{tmp_path / 'lenet.py'}:LeNet", {}, (3, 32, 32), 8, torch.device("cpu"),
                                          True, said.append)
    assert channels_last is False and len(said) == 1
    assert said[0].startswith(f"{tmp_path / 'lenet.py'}:LeNet runs on contiguous batches and weights: its forward "
                              "fails on channels_last batches only")
    assert bench.probe_model("basic", {}, (3, 32, 32), 8, torch.device("cpu"), True, said.append)[3] is True
    assert len(said) == 1


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """A LeNet (x.view flatten) trained in one process, and evaluated after."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("lenet")
    (root / "lenet.py").write_text(LENET)
    runner = CliRunner()
    trained = runner.invoke(cli, ["train", f"{root / 'lenet.py'}:LeNet", "--dataset", "fake", "--procs", "1",
                                  "--train-subset", "64", "--batch-size", "32", "--epochs", "1", "--out",
                                  str(root / "runs"), "--name", "lenet"])
    evaluated = runner.invoke(cli, ["evaluate", str(root / "runs" / "lenet"), "--trust-spec", "--format", "json"])
    return root / "runs" / "lenet", trained, evaluated


def test_a_view_model_trains_on_contiguous_batches_says_so_once_and_records_it(lenet_run):
    run, trained, evaluated = lenet_run
    assert trained.exit_code == 0, trained.output
    line = (f"{run.parent.parent / 'lenet.py'}:LeNet runs on contiguous batches and weights: its forward fails "
            "on channels_last batches only (RuntimeError: view size is not compatible")
    assert trained.output.count(line) == 1  # training and its closing test: one line
    config = json.loads((run / "config.json").read_text())
    assert config["channels_last"] is False
    assert config["contiguous_because"].startswith("its forward fails on channels_last batches only (RuntimeError")
    assert (run / "model_summary.txt").is_file() and (run / "rf.md").is_file()
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.stderr.count(line) == 1
    assert json.loads(evaluated.stdout)["test_acc"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["test_acc"])


def test_no_channels_last_means_contiguous_weights_and_batches(runner, tmp_path):
    result = runner.invoke(cli, ["train", "basic", "--dataset", "fake", "--procs", "1", "--train-subset", "32",
                                 "--batch-size", "32", "--epochs", "1", "--no-channels-last", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "basic" / "config.json").read_text())
    assert config["channels_last"] is False and config["contiguous_because"] == "asked for (channels_last off)"
    assert "runs on contiguous batches" not in result.output  # asked for: nothing to explain
    help_text = runner.invoke(cli, ["train", "--help"]).output
    assert "the batches always are" not in help_text and "off: both contiguous" in " ".join(help_text.split())
