"""The user's own models and runs: self-contained run folders (a copy of the model source), extending
a run with --resume --epochs, --init-from, export, and the user's own image files."""
import csv
import importlib.util
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnscope.cli import cli
from cnnscope.errors import RunError, TrustError

BLOCKS = textwrap.dedent('''
    import torch.nn as nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
''')
NET = textwrap.dedent('''
    import torch.nn as nn
    from .blocks import block

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(block(3, 8), nn.MaxPool2d(2), block(8, 16), nn.AdaptiveAvgPool2d(1),
                                          nn.Flatten())
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            return self.fc(self.features(x))
''')
QUICK = ["--dataset", "fake", "--procs", "1", "--train-subset", "64", "--batch-size", "32"]


def write_package(folder):
    pkg = folder / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "blocks.py").write_text(BLOCKS)
    (pkg / "net.py").write_text(NET)
    return pkg


def invoke(runner, args, cwd):
    """`cnnscope ARGS` run from the folder `cwd`."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, args, catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A 2-epoch run of mypkg/net.py:Net (relative import) trained from folder `project`."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("own")
    project = root / "project"
    write_package(project)
    result = invoke(CliRunner(), ["train", "mypkg/net.py:Net", *QUICK, "--epochs", "2", "--out", str(root / "runs"),
                                  "--name", "net"], project)
    assert result.exit_code == 0, result.output
    return root, project, root / "runs" / "net"


def test_run_keeps_a_copy_of_the_model_source(own_run):
    root, project, run = own_run
    for name in ("__init__.py", "blocks.py", "net.py"):
        assert (run / "model_source" / "mypkg" / name).read_bytes() == (project / "mypkg" / name).read_bytes()
    source = json.loads((run / "config.json").read_text())["options"]["source"]
    assert source["spec"] == "model_source/mypkg/net.py:Net"
    assert sorted(source["files"]) == ["mypkg/__init__.py", "mypkg/blocks.py", "mypkg/net.py"]
    ckpt = torch.load(run / "checkpoints" / "best.pth", weights_only=True)
    assert ckpt["config"]["options"]["source"] == source


def test_run_works_after_its_model_moved_changed_and_the_run_moved(own_run, runner, tmp_path):
    root, project, run = own_run
    moved_run = tmp_path / "elsewhere" / "net-copy"
    shutil.copytree(run, moved_run)
    shutil.move(project / "mypkg", tmp_path / "mypkg-moved")  # the original is gone
    try:
        other = tmp_path / "cwd"
        other.mkdir()
        result = invoke(runner, ["evaluate", str(moved_run), "--trust-spec", "--format", "json"], other)
        assert result.exit_code == 0, result.output
        expected = json.loads((run / "metrics.json").read_text())["test_acc"]
        assert json.loads(result.stdout)["test_acc"] == pytest.approx(expected)
    finally:
        shutil.move(tmp_path / "mypkg-moved", project / "mypkg")
    # the original back, but changed: a warning, and the run's own copy is built
    (project / "mypkg" / "blocks.py").write_text(BLOCKS.replace("bias=False", "bias=True"))
    try:
        result = invoke(runner, ["evaluate", str(moved_run), "--trust-spec", "--format", "json"], tmp_path)
        assert result.exit_code == 0, result.output
        assert "warning: The model source changed since the run was trained (mypkg/blocks.py" in result.stderr
    finally:
        (project / "mypkg" / "blocks.py").write_text(BLOCKS)


def test_a_run_copy_is_still_code_the_user_must_trust(own_run, runner, error_of, tmp_path):
    result = invoke(runner, ["evaluate", str(own_run[2])], tmp_path)
    assert isinstance(error_of(result), TrustError) and "mypkg/net.py:Net" in result.stderr  # what would run


def test_a_package_named_models_resumes_from_its_own_folder_and_a_different_one_is_named(runner, tmp_path,
                                                                                       monkeypatch):
    """The most common layout: a `models/` package whose __init__ imports its siblings. Resumed from
    the folder that holds it (where `models` is on the import path as the same code), nothing is said;
    from a folder that holds another package named `models`, the run's copy is built with a warning."""
    repository = Path(__file__).resolve().parents[1]  # its models/ is the zoo's folder: not on a user's path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != repository])
    project = tmp_path / "repo"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text("from .blocks import *\nfrom .net import *\n")
    (project / "models" / "blocks.py").write_text(BLOCKS)
    (project / "models" / "net.py").write_text(NET)
    run = tmp_path / "runs" / "net"
    trained = invoke(runner, ["train", "models/net.py:Net", *QUICK, "--epochs", "1", "--out", str(run.parent),
                              "--name", "net"], project)
    assert trained.exit_code == 0, trained.output
    resumed = invoke(runner, ["train", "--resume", str(run), "--epochs", "2", "--trust-spec"], project)
    assert resumed.exit_code == 0, resumed.output
    assert "warning" not in resumed.stderr and len(json.loads((run / "metrics.json").read_text())["lr_per_step"]) == 4
    other = tmp_path / "other"
    (other / "models").mkdir(parents=True)
    (other / "models" / "__init__.py").write_text("SOMETHING_ELSE = 1\n")
    evaluated = invoke(runner, ["evaluate", str(run), "--trust-spec", "--format", "json"], other)
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.stderr.count("warning:") == 1
    assert f"Another package named 'models' ({other / 'models'}) is on the import path and differs" in \
        " ".join(evaluated.stderr.split())


def one_cycle_lrs(recipe, total):
    """OneCycle's LR after each step of a `total`-step schedule of `recipe`."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total, pct_start=recipe.pct_start,
                                                div_factor=recipe.div_factor, final_div_factor=recipe.final_div_factor)
    out = []
    for _ in range(total):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_resume_extends_a_finished_run_with_a_replanned_schedule(tiny_spec, runner, error_of, tmp_path):
    from cnnscope.runs.recipes import get_recipe

    args = ["train", tiny_spec, *QUICK, "--out", str(tmp_path), "--name", "ext"]
    assert runner.invoke(cli, [*args, "--epochs", "1"]).exit_code == 0
    result = runner.invoke(cli, ["train", "--resume", str(tmp_path / "ext"), "--epochs", "3", "--trust-spec"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "ext" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    recipe = get_recipe("basic")  # a user model gets basic's recipe
    assert recipe.scheduler == "onecycle"
    steps = 64 // 32  # batches per epoch
    replanned = one_cycle_lrs(recipe, 3 * steps)
    # epochs 2 and 3 follow the 3-epoch schedule from the step the 1-epoch run reached; the log's lr is
    # the last batch's, which ran after k * steps - 1 scheduler steps (replanned[k * steps - 2])
    assert float(rows[1]["lr"]) == pytest.approx(replanned[2 * steps - 2], rel=1e-4)
    assert float(rows[2]["lr"]) == pytest.approx(replanned[3 * steps - 2], rel=1e-4)
    assert replanned[2 * steps - 2] != pytest.approx(one_cycle_lrs(recipe, 2 * steps)[2 * steps - 2], rel=1e-2)
    assert json.loads((tmp_path / "ext" / "config.json").read_text())["epochs"] == 3
    shorter = error_of(runner.invoke(cli, ["train", "--resume", str(tmp_path / "ext"), "--epochs", "2",
                                           "--trust-spec"]))
    assert isinstance(shorter, RunError) and shorter.arguments == ("epochs",)  # extended, never shortened


def test_init_from_copies_the_weights_and_replaces_a_head_of_another_class_count(own_run):
    from cnnscope.runs.checkpoint import load_checkpoint
    from cnnscope.runs.spec import build_model
    from cnnscope.runs.train_state import init_weights

    run = own_run[2]
    source = load_checkpoint(run / "checkpoints" / "best.pth")["model"]
    spec = f"{run / 'model_source' / 'mypkg' / 'net.py'}:Net"
    model = build_model(spec, {"num_classes": 3})
    fresh_head = model.fc.weight.detach().clone()
    note = init_weights(model, run / "checkpoints" / "best.pth", 3)
    assert "the classifier head 'fc' is new (10 -> 3 classes)" in note
    assert "12 of 14 tensors" in note  # 2 x (conv weight + 5 BN entries), fc weight and bias
    state = model.state_dict()
    for key, value in source.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key
    assert torch.equal(model.fc.weight, fresh_head)


def test_init_from_refuses_another_architecture(own_run, runner, error_of, tmp_path):
    result = runner.invoke(cli, ["train", "basic", *QUICK, "--epochs", "1", "--out", str(tmp_path),
                                 "--init-from", str(own_run[2])])
    assert isinstance(error_of(result), RunError) and error_of(result).arguments == ("init_from",)
    assert not (tmp_path / "basic").exists()


def test_init_from_starts_a_new_run_from_the_weights(own_run, runner, tmp_path):
    run = own_run[2]
    spec = f"{own_run[1] / 'mypkg' / 'net.py'}:Net"
    result = runner.invoke(cli, ["train", spec, *QUICK, "--epochs", "1", "--out", str(tmp_path), "--name", "ft",
                                 "--init-from", str(run)])
    assert result.exit_code == 0, result.output
    assert f"Initialised from {(run / 'checkpoints' / 'best.pth').resolve()}: 14 of 14 tensors." in result.output
    options = json.loads((tmp_path / "ft" / "config.json").read_text())["options"]
    assert options["init_from"] == str((run / "checkpoints" / "best.pth").resolve())


@pytest.mark.parametrize("to, suffix", [("export", ".pt2"), ("torchscript", ".torchscript.pt")])
def test_export_writes_a_program_that_gives_the_checkpoints_outputs(own_run, runner, tmp_path, to, suffix):
    from cnnscope.runs.checkpoint import load_run_model
    from cnnscope.runs.datasets import load_dataset

    run = own_run[2]
    out = tmp_path / f"net{suffix}"
    result = runner.invoke(cli, ["export", str(run), "--trust-spec", "--to", to, "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["format"], report["path"], report["images"]) == (to, str(out), 16)
    assert report["max_abs_diff"] <= 1e-4 and report["dynamic_batch"] is True
    model, ckpt, _ = load_run_model(run, trust_spec=True)
    test = load_dataset("fake").test.images[16:21].float() / 255  # other images, another batch size
    x = (test - torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)) / torch.tensor(ckpt["std"]).view(1, 3, 1, 1)
    program = torch.export.load(out).module() if to == "export" else torch.jit.load(out)
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), atol=1e-5)


def test_onnx_export_or_the_extra_it_needs(own_run, runner, tmp_path):
    result = runner.invoke(cli, ["export", str(own_run[2]), "--trust-spec", "--to", "onnx", "--out",
                                 str(tmp_path / "net.onnx")])
    if importlib.util.find_spec("onnx") is None:
        assert result.exit_code == 2
        assert 'ONNX export needs the onnx package: pip install "cnnscope[onnx]"' in result.stderr
        assert not (tmp_path / "net.onnx").exists()
    else:
        assert result.exit_code == 0, result.output
        assert (tmp_path / "net.onnx").stat().st_size > 1000


def test_user_images_are_resized_and_normalised_as_the_run_was_trained(tmp_path):
    from cnnscope.runs.user_images import load_images

    rgb = (np.arange(40 * 48 * 3) % 251).astype(np.uint8).reshape(40, 48, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    gray = np.full((32, 32), 200, np.uint8)
    Image.fromarray(gray).save(tmp_path / "b.png")
    x, pixels, files = load_images([tmp_path], (3, 32, 32), (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    assert [f.name for f in files] == ["a.png", "b.png"] and x.shape == (2, 3, 32, 32)
    resized = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.Resampling.BILINEAR), np.float32) / 255
    expected = (torch.from_numpy(resized).permute(2, 0, 1) - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) \
        / torch.tensor([0.2, 0.25, 0.5]).view(3, 1, 1)
    assert torch.allclose(x[0], expected, atol=1e-6)
    assert torch.allclose(x[1, 2], torch.full((32, 32), (200 / 255 - 0.3) / 0.5), atol=1e-6)  # gray -> RGB
    x1, pixels1, _ = load_images([tmp_path / "a.png"], (1, 16, 16), (0.5,), (0.5,))
    assert x1.shape == (1, 1, 16, 16) and pixels1.shape == (1, 16, 16, 3)  # drawn as RGB


def test_attribute_and_erf_on_the_users_images(own_run, runner, error_of, tmp_path):
    run = own_run[2]
    for i in range(2):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    result = runner.invoke(cli, ["attribute", str(run), "--trust-spec", "--image", str(tmp_path), "--method",
                                 "saliency", "--out", str(tmp_path / "plots"), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"] == "image files"
    assert [i["file"] for i in report["images"]] == [str(tmp_path / "img0.png"), str(tmp_path / "img1.png")]
    assert (tmp_path / "plots" / "attributions.png").is_file()
    result = runner.invoke(cli, ["attribute", str(run), "--trust-spec", "--image", str(tmp_path), "--target", "true"])
    assert error_of(result).arguments == ("target_class",)  # image files have no labels
    erf = runner.invoke(cli, ["rf", "--erf", str(run), "--trust-spec", "--image", str(tmp_path / "img1.png"),
                              "--format", "json"])
    assert erf.exit_code == 0, erf.output
    assert json.loads(erf.stdout)["erf"]["images"] == 1
