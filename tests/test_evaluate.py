"""`cnnscope evaluate` and `cnnscope compare`: metrics computed by hand, files, formats, errors."""
import csv
import json
import textwrap

import numpy as np
import pytest

from cnnscope.core import metrics
from cnnscope.cli import cli
from cnnscope.errors import RunError

TINY_MODEL = textwrap.dedent('''
    import torch.nn as nn

    class Small(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

        def forward(self, x):
            return self.body(x)
''')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short fake-data runs of a tiny model: reports/one (1 epoch), reports/two (2 epochs)."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("eval")
    (root / "small.py").write_text(TINY_MODEL)
    for name, epochs in (("one", 1), ("two", 2)):
        result = CliRunner().invoke(cli, ["train", f"{root / 'small.py'}:Small", "--dataset", "fake", "--epochs",
                                          str(epochs), "--batch-size", "64", "--device", "cpu", "--name", name,
                                          "--out", str(root / "reports")])
        assert result.exit_code == 0, result.output
    return root / "reports"


def test_per_class_metrics_by_hand():
    # class 2 never occurs and is never predicted: its precision, recall and F1 are 0, and the macro
    # average is over the two classes that occur (as sklearn's report, which lists only those)
    cm = metrics.confusion_counts([0] * 6 + [1] * 4, [0] * 5 + [1] + [0, 0, 1, 1], 3)
    assert cm.tolist() == [[5, 1, 0], [2, 2, 0], [0, 0, 0]]
    m = metrics.per_class_metrics(cm)
    assert m["precision"] == pytest.approx([5 / 7, 2 / 3, 0])
    assert m["recall"] == pytest.approx([5 / 6, 1 / 2, 0])
    assert m["f1"] == pytest.approx([10 / 13, 4 / 7, 0])
    assert m["support"].tolist() == [6, 4, 0]
    assert m["macro_avg"]["f1"] == pytest.approx((10 / 13 + 4 / 7) / 2)
    assert m["weighted_avg"]["precision"] == pytest.approx(0.6 * 5 / 7 + 0.4 * 2 / 3)
    assert m["weighted_avg"]["recall"] == pytest.approx(0.7)  # = accuracy
    top = metrics.top_confusions(cm, ["a", "b", "c"])
    assert top == [{"true": "b", "pred": "a", "count": 2, "rate": 0.5},
                   {"true": "a", "pred": "b", "count": 1, "rate": pytest.approx(1 / 6)}]


def test_evaluate_a_module_on_tensors_and_on_batches():
    """The notebook API: any nn.Module, images and labels (or (x, y) batches), no run folder."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    images, labels = torch.randn(50, 3, 8, 8), torch.randint(0, 3, (50,))
    result = metrics.evaluate(model, images, labels, classes=["a", "b", "c"], batch_size=16)
    assert model.training  # evaluated an eval-mode copy, left the module as it was
    with torch.no_grad():
        logits = model.eval()(images)
    assert result.num_test == 50 and result.classes == ["a", "b", "c"]
    assert result.test_acc == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    assert result.test_loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-4)
    assert sum(map(sum, result.confusion)) == 50
    batches = list(zip(images.split(16), labels.split(16)))  # the same sums
    assert metrics.evaluate(model, batches, classes=["a", "b", "c"]).to_json() == result.to_json()
    assert metrics.evaluate(model, images, labels).classes == [str(i) for i in range(len(result.confusion))]


def test_evaluate_json_agrees_with_the_files(runner, runs):
    run = runs / "two"
    # the runs are of the user's own model file, not a zoo model: evaluating them needs --trust-spec
    result = runner.invoke(cli, ["evaluate", str(run), "--format", "json", "--device", "cpu", "--trust-spec"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    cm = np.array(report["confusion"])
    assert cm.sum() == report["num_test"] == 128
    assert report["test_acc"] == pytest.approx(100 * np.trace(cm) / 128)
    with open(run / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true\\pred", *report["classes"]]
    assert np.array([[int(v) for v in r[1:]] for r in rows[1:]]).tolist() == cm.tolist()
    for i, c in enumerate(report["per_class"]):
        assert c["support"] == cm[i].sum()
        assert c["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_acc"] == report["test_acc"] and metrics["test_loss"] == report["test_loss"]
    assert metrics["macro_avg"] == report["macro_avg"] and metrics["epochs"] == 2  # training keys kept
    off_diagonal = cm - np.diag(np.diag(cm))
    if off_diagonal.any():
        assert report["top_confusions"][0]["count"] == off_diagonal.max()


def test_evaluate_markdown_and_checkpoint_file(runner, error_of, runs):
    result = runner.invoke(cli, ["evaluate", str(runs / "one" / "checkpoints" / "last.pth"), "--format", "markdown",
                                 "--device", "cpu", "--trust-spec"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((runs / "one" / "metrics.json").read_text())
    assert f"Test accuracy {metrics['test_acc']:.2f}% (128 images)" in result.output
    assert "| **macro avg** |" in result.output and "| **weighted avg** |" in result.output
    assert isinstance(error_of(runner.invoke(cli, ["evaluate", str(runs / "nope")])), RunError)  # no such run


def test_compare_writes_the_summary_and_combined_plots(runner, runs, tmp_path):
    out = tmp_path / "combined"
    result = runner.invoke(cli, ["compare", str(runs / "one"), str(runs / "two"), "--out", str(out),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["run"] for r in rows] == ["one", "two"]
    for row in rows:
        metrics = json.loads((runs / row["run"] / "metrics.json").read_text())
        for key in ("model", "dataset", "params", "macs", "rf", "best_val_acc", "test_acc", "best_epoch", "epochs",
                    "train_time_s", "images_per_s"):
            assert row[key] == metrics[key], key
    assert [r["epochs"] for r in rows] == [1, 2]
    # the 3x3 stride-2 conv on 32x32 (16x16 outputs x 8 x 27) and the 8 -> 10 linear; RF 3 before the pooling
    assert [(r["macs"], r["rf"]) for r in rows] == [(16 * 16 * 8 * 27 + 80, 3)] * 2
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["one", "two"] and float(table[1]["test_acc"]) == rows[1]["test_acc"]
    md = (out / "summary.md").read_text().splitlines()
    assert len(md) == 4 and md[0].startswith("| run | model | dataset | params | MACs | RF | best val acc (%) | test acc")
    assert md[2].startswith(f"| one | {rows[0]['model']} | fake | ") and "| 0.06 M | 3 |" in md[2]
    assert "warning" not in result.output
    assert f"| {rows[1]['test_acc']:.2f} |" in md[3]
    for name in ("combined_acc.png", "combined_loss.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    bad = runner.invoke(cli, ["compare", str(runs / "one"), str(tmp_path)])
    assert bad.exit_code == 2 and "not a finished run folder" in bad.output


def test_compare_warns_when_the_runs_mix_datasets(runner, runs, tmp_path):
    import shutil

    other = tmp_path / "three"
    shutil.copytree(runs / "two", other)
    metrics_path = other / "metrics.json"
    metrics_path.write_text(json.dumps({**json.loads(metrics_path.read_text()), "dataset": "fashion-mnist"}))
    args = ["compare", str(runs / "one"), str(runs / "two"), str(other), "--out", str(tmp_path / "combined")]
    warning = ("the runs were trained on different datasets, so their numbers do not compare: one, two on fake; "
               "three on fashion-mnist")
    as_json = runner.invoke(cli, [*args, "--format", "json"])
    assert as_json.exit_code == 0 and f"warning: {warning}" in as_json.stderr
    assert [r["dataset"] for r in json.loads(as_json.stdout)] == ["fake", "fake", "fashion-mnist"]
    assert f"> warning: {warning}" in (tmp_path / "combined" / "summary.md").read_text()
    as_table = runner.invoke(cli, [*args, "--format", "table"])
    assert "different datasets" in as_table.stdout


def test_predict_builds_no_autograd_graph():
    """Validation and testing run without a graph: with one, the summed loss held every batch's
    activations, and egrr's validation grew to 24 GB on 6,000 Fashion-MNIST images."""
    import torch
    import torch.nn as nn

    from cnnscope.core.metrics import predict

    grad_enabled = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            grad_enabled.append(torch.is_grad_enabled())
            return self.fc(x.mean((2, 3)))

    loader = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))] * 3
    loss_sum, preds, targets = predict(Probe(), loader, torch.device("cpu"))
    assert len(grad_enabled) >= 3 and not any(grad_enabled)  # inference_copy may run one probe forward too
    assert len(preds) == len(targets) == 12 and loss_sum > 0


def test_predict_with_mirror_images_averages_the_logits():
    """Test-time hflip: the logits are the mean of the image's and its mirror image's, so a model
    that reads only the left column sees both edges."""
    import torch
    import torch.nn as nn

    from cnnscope.core.metrics import predict

    class LeftColumn(nn.Module):
        def forward(self, x):
            left = x[:, 0, :, 0].sum(1)
            return torch.stack([left, -left], 1)

    x = torch.zeros(2, 1, 3, 4)
    x[0, 0, :, 3] = 1.0  # image 0: only its right edge is bright
    x[1, 0, :, 0] = -2.0  # image 1: only its left edge, dark
    labels = torch.tensor([0, 1])
    plain = predict(LeftColumn(), [(x, labels)], torch.device("cpu"))
    mirrored = predict(LeftColumn(), [(x, labels)], torch.device("cpu"), hflip=True)
    expected_logits = torch.tensor([[1.5, -1.5], [-3.0, 3.0]])  # (0 + 3) / 2 and (-6 + 0) / 2
    expected_loss = torch.nn.functional.cross_entropy(expected_logits, labels, reduction="sum").item()
    assert mirrored[0] == pytest.approx(expected_loss) and mirrored[1].tolist() == [0, 1]
    assert plain[1].tolist() == [0, 1] and plain[0] == pytest.approx(
        torch.nn.functional.cross_entropy(torch.tensor([[0.0, 0.0], [-6.0, 6.0]]), labels, reduction="sum").item())
