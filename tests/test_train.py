"""`cnnscope train`: the run folder, exact resume, torchrun, clear errors, and the recipes."""
import csv
import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cnnscope.core import hooks, training
from cnnscope.core.callbacks import Callback
from cnnscope.core.augment import AugmentSpec
from cnnscope.runs import datasets, launch, loaders, recipes
from cnnscope.runs.checkpoint import load_checkpoint
from cnnscope.runs.train_console import duration
from cnnscope.cli import cli
from cnnscope.errors import CnnscopeError, DataError, RunError
from conftest import LoaderAt, sigint, wrap_training_loaders

LOG_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s"]
FAKE_TEST = 128  # datasets.load_dataset("fake") default: 512 train (461 + 51 val), 128 test


def invoke(runner, args):
    result = runner.invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def train_args(spec, out, *extra, epochs=2, batch_size=32):
    return ["train", spec, "--dataset", "fake", "--epochs", epochs, "--batch-size", batch_size, "--device", "cpu",
            "--out", out, *extra]


def read_log(run):
    with open(run / "train_log.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, [{k: float(v) for k, v in row.items()} for row in reader]


@pytest.fixture(scope="module")
def basic_run(tmp_path_factory):
    """One real 2-epoch run of the zoo's basic model on fake data, shared by the content tests."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("reports")
    result = invoke(CliRunner(), train_args("basic", out, "--save-every", 1, batch_size=64))
    assert result.exit_code == 0, result.output
    return out / "basic", result.output


# ---- the run folder ---------------------------------------------------------------------------

def test_run_folder_has_every_file(basic_run):
    run, _ = basic_run
    for name in ["config.json", "train_log.csv", "metrics.json", "model_summary.txt", "rf.md",
                 "classification_report.csv", "classification_report.md", "confusion_matrix.csv",
                 "checkpoints/last.pth", "checkpoints/best.pth", "checkpoints/epoch_001.pth",
                 "checkpoints/epoch_002.pth"]:
        assert (run / name).stat().st_size > 0, name
    for name in ["acc_curves", "loss_curves", "lr", "cm", "test_samples_grid", "misclassified_grid"]:
        assert (run / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "84,322" in (run / "model_summary.txt").read_text()
    assert "**Final RF:** 55" in (run / "rf.md").read_text()


def test_train_log_and_metrics_agree(basic_run):
    run, output = basic_run
    columns, rows = read_log(run)
    assert columns == LOG_COLUMNS
    assert [r["epoch"] for r in rows] == [1, 2]
    metrics = json.loads((run / "metrics.json").read_text())
    best = max(rows, key=lambda r: r["val_acc"])  # first of equals, as the trainer keeps the first
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["best_val_acc"] == pytest.approx(best["val_acc"], abs=1e-4)
    assert metrics["epochs"] == 2 and metrics["params"] == 84322 and metrics["selected_on"] == "val"
    assert metrics["train_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in rows), abs=1e-4)
    assert 0 < metrics["images_per_s"]
    for r in rows:  # accuracies are percentages of whole counts of the 461 training / 51 validation images
        for key, n in (("train_acc", 461), ("val_acc", 51)):
            assert abs(r[key] * n / 100 - round(r[key] * n / 100)) < 1e-3
        assert r["images_per_s"] > 461 / r["epoch_time_s"]  # throughput counts training time only
    # OneCycle (max_lr 0.1, div 10, final div 100) ends at 1e-4 on the last batch
    assert rows[-1]["lr"] == pytest.approx(0.1 / 10 / 100, rel=0.02)
    assert f"test acc {metrics['test_acc']:.2f}%" in " ".join(output.split())
    # one file, its values handed in by the model texts, each epoch, then the test evaluation
    assert list(metrics) == ["macs", "rf", "run", "model", "params", "dataset", "selected_on", "best_val_acc",
                             "best_epoch", "epochs", "train_time_s", "images_per_s", "lr_per_step", "test_acc",
                             "test_loss", "macro_avg", "weighted_avg"]
    assert metrics["macs"] == 13728256 and metrics["rf"] == 55
    done = output.splitlines()[-3:]
    # the whole command's time (test_true_lines), then the training's, and the metrics held in memory
    assert done[0].startswith("Done in ") and done[0].endswith(
        f" (training {duration(metrics['train_time_s'])}): best val acc {metrics['best_val_acc']:.2f}% at epoch "
        f"{metrics['best_epoch']},"), done
    assert done[1] == f"  test acc {metrics['test_acc']:.2f}% (loss {metrics['test_loss']:.4f})" and done[2] == f"  -> {run}"


def test_lr_recorded_per_step_shows_the_onecycle_warm_up(basic_run):
    run, _ = basic_run
    lrs = json.loads((run / "metrics.json").read_text())["lr_per_step"]
    steps = math.ceil(461 / 64)  # 461 training images in batches of 64, the last one short
    assert len(lrs) == 2 * steps
    _, rows = read_log(run)
    assert [lrs[steps - 1], lrs[-1]] == pytest.approx([r["lr"] for r in rows], rel=1e-5)  # the log's last-step lr
    # OneCycle (max_lr 0.1, div 10, final div 100, pct_start 0.15 of 16 steps): cosine from 0.01 up to
    # 0.1 over steps 0 .. 0.15 * 16 - 1 = 1.4, then cosine down to 1e-4 at step 15
    up, down = 0.15 * 16 - 1, 15 - (0.15 * 16 - 1)
    rise = [0.1 - 0.09 * (1 + math.cos(math.pi * k / up)) / 2 for k in (0, 1)]
    fall = [1e-4 + (0.1 - 1e-4) * (1 + math.cos(math.pi * (k - up) / down)) / 2 for k in (2, 3, 15)]
    assert [*lrs[:4], lrs[15]] == pytest.approx(rise + fall, rel=1e-5)
    assert lrs[0] < lrs[1] < lrs[2] > lrs[3]  # the warm-up, visible only per step


def test_curves_carry_the_run_name_best_epoch_and_test_acc(basic_run, tmp_path, monkeypatch):
    from cnnscope.render import plots
    from cnnscope.runs.train_files import write_curves

    run, _ = basic_run
    drawn = {}
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.setdefault(Path(path).name, fig.axes[0]))
    write_curves(run)
    metrics = json.loads((run / "metrics.json").read_text())
    acc, lr = drawn["acc_curves.png"], drawn["lr.png"]
    assert acc.get_title() == "basic: accuracy" and lr.get_title() == "basic: learning rate"
    labels = {line.get_label(): line for line in acc.get_lines()}
    best = labels[f"best val epoch ({metrics['best_epoch']})"]
    assert list(best.get_xdata()) == [metrics["best_epoch"]] * 2
    star = labels[f"test acc {metrics['test_acc']:.2f}%"]
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (metrics["best_epoch"], metrics["test_acc"])
    xs, ys = lr.get_lines()[0].get_data()  # one point per step, at its fraction of the epochs
    assert list(ys) == metrics["lr_per_step"] and list(xs) == pytest.approx([k / 8 for k in range(1, 17)])


def test_confusion_matrix_and_report_match_the_test_set(basic_run):
    run, _ = basic_run
    with open(run / "confusion_matrix.csv", newline="") as f:
        table = list(csv.reader(f))
    classes = table[0][1:]
    assert classes == datasets.load_dataset("fake").classes == [r[0] for r in table[1:]]
    cm = torch.tensor([[int(v) for v in r[1:]] for r in table[1:]])
    assert cm.sum() == FAKE_TEST
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_acc"] == pytest.approx(100 * cm.trace().item() / FAKE_TEST)
    with open(run / "classification_report.csv", newline="") as f:
        report = {r["class"]: r for r in csv.DictReader(f)}
    for i, name in enumerate(classes):
        support, predicted = cm[i].sum().item(), cm[:, i].sum().item()
        assert int(report[name]["support"]) == support
        recall = cm[i, i].item() / support
        precision = cm[i, i].item() / predicted if predicted else 0.0
        assert float(report[name]["recall"]) == pytest.approx(recall, abs=1e-4)
        assert float(report[name]["precision"]) == pytest.approx(precision, abs=1e-4)
    f1 = [float(report[c]["f1"]) for c in classes]
    assert float(report["macro avg"]["f1"]) == pytest.approx(sum(f1) / len(f1), abs=1e-3)
    assert metrics["macro_avg"]["f1"] == pytest.approx(float(report["macro avg"]["f1"]), abs=1e-4)
    # weighted recall is accuracy
    assert metrics["weighted_avg"]["recall"] == pytest.approx(metrics["test_acc"] / 100)
    assert "| **macro avg** |" in (run / "classification_report.md").read_text()


def test_config_and_checkpoints_rebuild_the_run(basic_run):
    run, _ = basic_run
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "basic" and config["dataset"] == "fake" and config["seed"] == 0
    assert config["epochs"] == 2 and config["ctor"] == {"num_classes": 10}
    assert config["versions"]["torch"] == str(torch.__version__)
    recipe = config["options"]["recipe"]
    assert (recipe["lr"], recipe["scheduler"], recipe["batch_size"], recipe["augment"]["cutout"]) == (0.1, "onecycle", 64, 16)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pth")  # weights_only
    assert ckpt["epoch"] == 2 and ckpt["dataset"] == "fake" and ckpt["input_shape"] == [3, 32, 32]
    assert ckpt["classes"] == datasets.load_dataset("fake").classes and len(ckpt["mean"]) == len(ckpt["std"]) == 3
    best = load_checkpoint(run / "checkpoints" / "best.pth")
    metrics = json.loads((run / "metrics.json").read_text())
    assert best["epoch"] == metrics["best_epoch"] and best["best_metric"] == metrics["best_val_acc"]
    epoch1 = load_checkpoint(run / "checkpoints" / "epoch_001.pth")
    assert epoch1["epoch"] == 1


def test_val_split_zero_selects_on_test(runner, tmp_path, tiny_spec):
    result = invoke(runner, train_args(tiny_spec, tmp_path, "--val-split", 0, epochs=1))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "Tiny" / "metrics.json").read_text())
    assert metrics["selected_on"] == "test"
    _, rows = read_log(tmp_path / "Tiny")
    # the "val" columns hold the test set's numbers: the same model scores the same in evaluate
    assert rows[0]["val_acc"] == pytest.approx(metrics["test_acc"], abs=1e-4) == metrics["best_val_acc"]
    assert rows[0]["val_loss"] == pytest.approx(metrics["test_loss"], abs=1e-4)
    assert ["train", "test"] in [line.split() for line in result.output.splitlines()]  # over the epoch columns


# ---- resume -----------------------------------------------------------------------------------

class InterruptingLoader(LoaderAt):
    """Wraps the training loader; sends this process a real SIGINT before batch `batch` of `epoch`."""

    def __init__(self, loader, epoch, batch):
        super().__init__(loader, epoch, batch, sigint)


def interrupt_training_at(monkeypatch, epoch, batch):
    wrap_training_loaders(monkeypatch, lambda loader: InterruptingLoader(loader, epoch, batch))


RESUME_ARGS = ["--seed", 3, "--recipe", "warmup_epochs=0"]


@pytest.fixture(scope="module")
def tiny_run(tiny_spec, tmp_path_factory):
    """An uninterrupted 2-epoch run of the tiny model (OneCycle, the full basic augmentation, dropout)."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("whole")
    result = invoke(CliRunner(), train_args(tiny_spec, out, *RESUME_ARGS))
    assert result.exit_code == 0, result.output
    return out / "Tiny"


@pytest.mark.parametrize("epoch, batch, stops_at", [
    (1, 3, "epoch 2, batch 10/15"),  # mid-epoch: stops at the next report point (every 10 batches)
    (0, 14, "the end of epoch 1"),  # during the last batch: epoch 1 completes, then it stops
])
def test_resume_ends_with_exactly_the_uninterrupted_weights(runner, tmp_path, monkeypatch, tiny_spec, tiny_run,
                                                            epoch, batch, stops_at):
    with monkeypatch.context() as m:
        interrupt_training_at(m, epoch, batch)
        stopped = invoke(runner, train_args(tiny_spec, tmp_path, *RESUME_ARGS))
    assert stopped.exit_code == 130, stopped.output
    run = tmp_path / "Tiny"
    text = " ".join(stopped.output.split())
    assert f"Stopped at {stops_at}" in text and f"cnnscope train --resume {run} --device cpu --trust-spec" in text
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 1

    resumed = invoke(runner, ["train", "--resume", run, "--device", "cpu", "--trust-spec"])
    assert resumed.exit_code == 0, resumed.output

    for name in ("last.pth", "best.pth"):
        a, b = (load_checkpoint(r / "checkpoints" / name) for r in (tiny_run, run))
        assert a["model"].keys() == b["model"].keys()
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)
        for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
            assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
        assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert load_checkpoint(run / "checkpoints" / "last.pth")["scheduler"]["last_epoch"] == 2 * 15
    (_, log_a), (_, log_b) = read_log(tiny_run), read_log(run)
    timing = ("epoch_time_s", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in log_a] == \
           [{k: v for k, v in r.items() if k not in timing} for r in log_b]
    metrics_a, metrics_b = (json.loads((r / "metrics.json").read_text()) for r in (tiny_run, run))
    assert metrics_a["test_acc"] == metrics_b["test_acc"] and metrics_a["test_loss"] == metrics_b["test_loss"]
    assert (metrics_b["macs"], metrics_b["rf"]) == (metrics_a["macs"], metrics_a["rf"])  # written once, kept
    assert len(metrics_b["lr_per_step"]) == 2 * 15 and metrics_a["lr_per_step"] == metrics_b["lr_per_step"]


def test_resume_refuses_another_model_and_changed_settings(runner, error_of, tiny_spec, tiny_run):
    other = error_of(invoke(runner, ["train", "basic", "--resume", tiny_run]))
    assert isinstance(other, RunError) and other.arguments == ("resume",)
    changed = invoke(runner, ["train", "--resume", tiny_run, "--trust-spec", "--lr", "0.5", "--seed", "7",
                              "--ctor", "width=4"])
    assert isinstance(error_of(changed), RunError)  # and it names what would change:
    assert "recipe.lr" in changed.output and "seed" in changed.output and "ctor.width" in changed.output
    again = error_of(invoke(runner, train_args(tiny_spec, tiny_run.parent, *RESUME_ARGS)))
    assert isinstance(again, RunError) and again.arguments == ("resume", "name", "overwrite")


def test_missing_and_corrupt_checkpoints_are_clear_errors(runner, tmp_path):
    missing = invoke(runner, ["train", "--resume", tmp_path / "nothing"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    corrupt = tmp_path / "run" / "checkpoints" / "last.pth"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    result = invoke(runner, ["train", "--resume", tmp_path / "run"])
    assert result.exit_code == 2 and "could not be read" in result.output
    weights_only = tmp_path / "weights.pth"
    torch.save({"model_spec": "basic", "ctor": {}, "model": {}}, weights_only)
    result = invoke(runner, ["train", "--resume", weights_only])
    assert result.exit_code == 2 and "cannot be resumed" in result.output


def test_unreachable_download_is_exit_2_without_a_run_folder(runner, error_of, tmp_path, monkeypatch):
    import urllib.request

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    result = invoke(runner, ["train", "basic", "--dataset", "cifar10", "--data-dir", tmp_path / "data",
                             "--out", tmp_path / "reports", "--device", "cpu", "--procs", "1"])
    assert isinstance(error_of(result), DataError) and "cifar-10-python.tar.gz" in result.output  # the file to place
    assert not (tmp_path / "reports" / "basic").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(runner, tmp_path, monkeypatch, tiny_spec):
    """Poisoned batches in epoch 2: the run stops with a clear message; last.pth still holds epoch 1."""
    make_loader = loaders.make_loader

    class Poisoned(InterruptingLoader):
        def __iter__(self):
            for x, y in self.loader:
                yield (x * math.nan if self.epoch == 1 else x), y

    monkeypatch.setattr(loaders, "make_loader", lambda split, ds, **kw: Poisoned(make_loader(split, ds, **kw), 0, 0)
                        if kw["train"] else make_loader(split, ds, **kw))
    result = invoke(runner, train_args(tiny_spec, tmp_path, epochs=3))
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "the loss became nan in epoch 2" in text and "last.pth still holds epoch 1" in text
    assert load_checkpoint(tmp_path / "Tiny" / "checkpoints" / "last.pth")["epoch"] == 1
    _, rows = read_log(tmp_path / "Tiny")
    assert len(rows) == 1 and all(math.isfinite(v) for v in rows[0].values())


# ---- distributed ------------------------------------------------------------------------------

LAUNCHERS = {
    "procs": ["-m", "cnnscope", "train", "--procs", "2"],
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cnnscope", "train"],
}


# the launcher, the selection split and the images each of the 2 ranks trains on per epoch (the epoch is cut
# to a multiple of 2: 461 of fake's 512 train images with a validation split, all 512 without)
TWO_PROCESS_RUNS = [("procs", "0", 256), ("torchrun", "0.1", 230)]


@pytest.mark.slow
@pytest.mark.parametrize("launcher, val_split, per_rank", TWO_PROCESS_RUNS, ids=[r[0] for r in TWO_PROCESS_RUNS])
def test_two_cpu_processes_split_the_batch_and_write_one_report(tmp_path, tiny_spec, launcher, val_split, per_rank):
    """One report from rank 0. Selected on the test set (val split 0), the epoch's accuracy and loss are
    best.pth's test ones: both ranks validate with rank 0's batch-norm statistics, the ones checkpointed
    (each rank's own last-batch update gave another loss)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, *LAUNCHERS[launcher], tiny_spec, "--dataset", "fake", "--epochs", "1", "--batch-size", "32",
           "--val-split", val_split, "--device", "cpu", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["Tiny"]
    run = tmp_path / "Tiny"
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["options"]["recipe"]["batch_size"] == 32
    assert config["command"] == shlex.join(["cnnscope", *cmd[cmd.index("train"):]])  # not a rank's job file
    assert "batches of 32 (2 x 16)" in " ".join(proc.stdout.split())  # the batch is the global one
    assert proc.stdout.count("Done in") == 1  # only rank 0 prints
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    _, rows = read_log(run)
    assert len(rows) == 1
    ckpt = load_checkpoint(run / "checkpoints" / "last.pth")
    assert ckpt["loop"]["train_images"] == 2 * per_rank and len(ckpt["rng"]) == 2
    assert ckpt["scheduler"]["last_epoch"] == -(-per_rank // 16)  # batches of 16 on each rank, the last one short
    cm = [[int(v) for v in r[1:]] for r in list(csv.reader(open(run / "confusion_matrix.csv")))[1:]]
    assert sum(map(sum, cm)) == FAKE_TEST
    if val_split == "0":
        metrics = json.loads((run / "metrics.json").read_text())
        assert rows[0]["val_acc"] == pytest.approx(metrics["test_acc"], abs=1e-9)
        assert rows[0]["val_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_process_and_resumes_exactly(tmp_path, tiny_spec):
    """SIGTERM to the parent alone reaches both ranks: they stop after the same batch, rank 0 saves
    last.pth and prints the resume command (`cnnscope train --resume`, which keeps 2 processes), and
    the resumed run ends with the weights of an uninterrupted one. Its TensorBoard events (rank 0
    writes them) hold each step once, up to the stop and then from the next step on."""
    from test_tensorboard import check_events_mirror_the_run, events, steps

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "cnnscope", "train"]
    args = [tiny_spec, "--dataset", "fake", "--epochs", "12", "--batch-size", "32", "--procs", "2", "--device", "cpu"]
    full = subprocess.run(base + args + ["--out", str(tmp_path / "full")], env=env, capture_output=True, text=True,
                          timeout=400)
    assert full.returncode == 0, full.stdout + full.stderr
    proc = subprocess.Popen(base + args + ["--out", str(tmp_path / "cut"), "--tensorboard"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.split()[:1] == ["2/12"]:  # well into training: both ranks are in the loop
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, out + err
    run = tmp_path / "cut" / "Tiny"
    assert "cnnscope train --resume" in out and "torchrun" not in out and "Traceback" not in err
    loop = load_checkpoint(run / "checkpoints" / "last.pth")["loop"]
    stopped_at = loop["epoch"] * 15 + loop["batch"]  # 15 steps an epoch: 461 images, 2 ranks x 16
    assert 2 * 15 <= stopped_at < 12 * 15
    assert steps(events(run / "tensorboard"), "train/loss") == list(range(1, stopped_at + 1))
    resumed = subprocess.run(base + ["--resume", str(run), "--trust-spec"], env=env, capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    a = load_checkpoint(run / "checkpoints" / "last.pth")["model"]
    b = load_checkpoint(tmp_path / "full" / "Tiny" / "checkpoints" / "last.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    check_events_mirror_the_run(run, epochs=12, per_epoch=15)


@pytest.mark.slow
def test_an_error_in_every_process_is_said_once(tmp_path):
    (tmp_path / "broken.py").write_text("import torch.nn as nn\n\nclass Broken(nn.Module):\n"
                                        "    def __init__(self, num_classes=10):\n"
                                        "        raise ValueError('width must be even')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "cnnscope", "train", f"{tmp_path / 'broken.py'}:Broken", "--dataset", "fake",
           "--batch-size", "32", "--procs", "2", "--device", "cpu", "--out", str(tmp_path / "reports")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("ValueError: width must be even") == 1 and "Traceback" not in proc.stderr
    assert "(On the command line: ctor is --ctor K=V.)" in proc.stderr  # a rank's error, worded by the CLI
    assert not (tmp_path / "reports" / "Broken").exists()


def test_resolve_procs():
    assert launch.resolve_procs("auto", 128, "cuda") == 1
    assert launch.resolve_procs("auto", 128, "cpu", saved_world_size=3) == 3  # a resumed run keeps its count
    assert launch.resolve_procs("4", 128, "cpu") == 4
    for procs, device, arguments in (("3", "cpu", ("procs", "batch_size")), ("0", "cpu", ("procs",)),
                                     ("two", "cpu", ("procs",)), ("2", "cuda", ("procs",))):
        with pytest.raises(CnnscopeError) as refused:
            launch.resolve_procs(procs, 128, device)
        assert refused.value.arguments == arguments


def test_bad_procs_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    result = invoke(CliRunner(), train_args("basic", tmp_path, "--procs", "3", batch_size=32))
    assert result.exit_code == 2 and "does not split evenly over 3 processes" in " ".join(result.output.split())
    assert not tmp_path.joinpath("basic").exists()


RANKS = textwrap.dedent('''
    import os, sys, time
    from cnnscope.errors import RunError

    def run(codes, seconds, user_error=False):
        """Rank r sleeps seconds[r], then fails with a user error or exits with codes[r]."""
        rank = int(os.environ["RANK"])
        time.sleep(seconds[rank])
        if user_error:
            raise RunError(f"bad input seen by rank {rank}", arguments=("resume",))
        print(f"rank {rank} ends with {codes[rank]}")
        return codes[rank]
''')


@pytest.fixture
def ranks_module(tmp_path, monkeypatch):
    """A job target the launcher's ranks can import: `ranks:run`."""
    (tmp_path / "ranks.py").write_text(RANKS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])]))
    return lambda **args: {"target": "ranks:run", "args": args}


@pytest.mark.slow
def test_a_crashed_rank_ends_the_others_at_once(ranks_module, capsys):
    code = launch.run_processes(ranks_module(codes=[0, 1], seconds=[60, 0]), 2, after_loss=lambda: "Resume with: X")
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("Process 1 of 2 failed (exit code 1); its output:") and "rank 1 ends with 1" in err
    assert err.endswith("Resume with: X\n")


@pytest.mark.slow
def test_a_user_error_on_rank_1_waits_for_rank_0_to_say_it(ranks_module, capfd):
    # rank 0's error (not rank 1's, which came first) is raised in the launcher's process, for the caller
    # to say (the CLI: in terms of its flags); the ranks say nothing on the terminal
    with pytest.raises(RunError) as raised:  # its kind and arguments too
        launch.run_processes(ranks_module(codes=[0, 0], seconds=[2, 0], user_error=True), 2)
    assert str(raised.value) == "bad input seen by rank 0" and raised.value.arguments == ("resume",)
    assert capfd.readouterr().err.strip() == ""


@pytest.mark.slow
def test_a_stop_is_not_a_failure(ranks_module, capsys):
    assert launch.run_processes(ranks_module(codes=[130, 130], seconds=[0.5, 0]), 2) == launch.STOPPED_EXIT
    assert capsys.readouterr().err == ""


# ---- recipes, schedules, optimizer groups -----------------------------------------------------

def test_recipes_follow_the_models_table():
    basic = recipes.get_recipe("basic")
    assert (basic.optimizer, basic.lr, basic.momentum, basic.nesterov, basic.weight_decay, basic.batch_size,
            basic.epochs, basic.scheduler, basic.pct_start, basic.div_factor, basic.final_div_factor) == \
           ("sgd", 0.1, 0.9, True, 5e-4, 128, 25, "onecycle", 0.15, 10.0, 100.0)
    assert basic.augment == AugmentSpec(hflip=0.5, affine_p=0.5, translate=0.0625, scale=(0.9, 1.1),
                                             rotate=15, cutout=16, cutout_p=0.5, cutout_fill="mean")
    tiny = recipes.get_recipe("tiny")
    assert (tiny.lr, tiny.scheduler, tiny.plateau_factor, tiny.plateau_patience, tiny.early_stop_patience,
            tiny.epochs, tiny.augment.affine_p, tiny.augment.rotate) == (0.045, "plateau", 0.1, 2, 6, 50, 0.7, 10)
    egrr = recipes.get_recipe("egrr")
    assert (egrr.dataset, egrr.epochs, egrr.scheduler, egrr.warmup_epochs, egrr.grad_clip, egrr.label_smoothing,
            egrr.depth_warmup_epochs, egrr.tau_start, egrr.tau_end) == ("cifar100", 200, "cosine", 5, 5.0, 0.1, 20, 1.0, 0.1)
    assert egrr.augment.autoaugment and egrr.augment.cutout == 8 and egrr.augment.crop_pad == 4
    ectied, swrn = recipes.get_recipe("ectied"), recipes.get_recipe("swrn")
    assert (ectied.scheduler, ectied.nesterov, ectied.augment) == ("cosine", False, AugmentSpec(hflip=0.5, crop_pad=4))
    assert (swrn.scheduler, swrn.step_milestones, swrn.step_gamma) == ("step", (0.3, 0.6, 0.8), 0.2)
    assert recipes.get_recipe("some/file.py:Net") == recipes.get_recipe("basic")


def test_the_speed_recipe_is_opt_in_and_basic_only(runner, error_of):
    speed = recipes.get_recipe("basic", speed=True)
    assert (speed.epochs, speed.image_size, speed.lr, speed.label_smoothing, speed.tta_hflip, speed.augment) == \
           (2, (28, 28), 0.2, 0.1, True, AugmentSpec(hflip=0.5))
    assert dataclasses.replace(speed, epochs=25, image_size=(32, 32), lr=0.1, label_smoothing=0.0, tta_hflip=False,
                               augment=recipes.get_recipe("basic").augment) == recipes.get_recipe("basic")
    assert not recipes.get_recipe("basic").tta_hflip  # the seeds' recipes stay the defaults
    with pytest.raises(CnnscopeError) as refused:
        recipes.get_recipe("tiny", speed=True)
    assert refused.value.arguments == ("speed",)
    assert error_of(runner.invoke(cli, ["train", "--resume", "reports/basic", "--speed"])).arguments == ("speed", "resume")


def test_short_runs_shrink_epoch_schedules_unless_given():
    egrr = recipes.get_recipe("egrr")
    short = recipes.resolve(egrr, {"epochs": 20})
    assert (short.epochs, short.warmup_epochs, short.depth_warmup_epochs) == (20, 0.5, 2.0)
    given = recipes.resolve(egrr, {"epochs": 20, "warmup_epochs": 3}, {"cutout": 16})
    assert (given.warmup_epochs, given.augment.cutout, given.augment.autoaugment) == (3.0, 16, True)
    for overrides in ({"warmup": 3}, {"epochs": "many"}):  # no such field; not a whole number
        with pytest.raises(CnnscopeError):
            recipes.resolve(egrr, overrides)
    assert recipes.recipe_from_json(given.to_json()) == given


def lrs(recipe, steps_per_epoch=10):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=recipe.lr, momentum=0.9)
    scheduler, per_batch = training.build_scheduler(optimizer, recipe, steps_per_epoch)
    out = []
    for epoch in range(recipe.epochs):
        for _ in range(steps_per_epoch if per_batch else 1):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if per_batch:
                scheduler.step()
        if not per_batch:
            scheduler.step()
    return out, per_batch


def test_schedules():
    onecycle, per_batch = lrs(recipes.resolve(recipes.get_recipe("basic"), {"epochs": 20}))
    assert per_batch and len(onecycle) == 200
    assert onecycle[0] == pytest.approx(0.01) and max(onecycle) == pytest.approx(0.1)
    assert onecycle.index(max(onecycle)) == 29 and onecycle[-1] == pytest.approx(1e-4, rel=1e-3)
    cosine, per_batch = lrs(recipes.resolve(recipes.get_recipe("egrr"), {"epochs": 40}))  # warm-up 1 epoch
    assert per_batch and cosine[:10] == pytest.approx([0.01 * (i + 1) for i in range(10)])
    assert cosine[10] == pytest.approx(0.1) and cosine[-1] < 1e-4
    step, per_batch = lrs(recipes.resolve(recipes.get_recipe("swrn"), {"epochs": 10}))
    assert per_batch and step == pytest.approx([0.1] * 30 + [0.02] * 30 + [0.004] * 20 + [0.0008] * 20)
    # milestones at batches: one epoch decays at 30/60/80% of it (per epoch it had stayed at 0.1), and
    # three no longer merge the milestones of epochs 1.8 and 2.4 into one decay
    one, _ = lrs(recipes.resolve(recipes.get_recipe("swrn"), {"epochs": 1}))
    assert one == pytest.approx([0.1] * 3 + [0.02] * 3 + [0.004] * 2 + [0.0008] * 2)
    three, _ = lrs(recipes.resolve(recipes.get_recipe("swrn"), {"epochs": 3}))
    assert three == pytest.approx([0.1] * 9 + [0.02] * 9 + [0.004] * 6 + [0.0008] * 6)


def test_a_checkpoint_whose_step_milestones_counted_epochs_is_replayed():
    """A swrn run saved by an older cnnscope (MultiStepLR stepped per epoch) resumes on the plan of
    this one, at the batch it reached, instead of reading its epoch milestones as batches."""
    from types import SimpleNamespace

    from cnnscope.runs.train_state import restore_schedule

    recipe = recipes.resolve(recipes.get_recipe("swrn"), {"epochs": 10})
    old = torch.optim.lr_scheduler.MultiStepLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), [3, 6, 8])
    for _ in range(4):
        old.optimizer.step()
        old.step()
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    scheduler, per_batch = training.build_scheduler(optimizer, recipe, 10)
    loop = SimpleNamespace(scheduler=scheduler, per_batch=per_batch, recipe=recipe, state=training.LoopState(epoch=4),
                           train_loader=range(10))
    restore_schedule(loop, old.state_dict(), planned_epochs=10)
    assert dict(scheduler.milestones) == {30: 1, 60: 1, 80: 1} and scheduler.last_epoch == 40
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)


def test_egrr_depth_warmup_and_tau_annealing():
    """egrr declares its schedule (hooks.on_progress); a model without the hook has none."""
    from cnnscope.zoo.egrr import EGRRNet

    recipe, model = recipes.get_recipe("egrr"), EGRRNet()  # six recursion steps in its deepest stage
    settings = [hooks.on_progress(model, e, recipe) for e in range(recipe.epochs)]
    assert [s["depth"] for s in settings[:21]] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4 + [None]
    assert settings[0]["tau"] == 1.0 and settings[-1]["tau"] == pytest.approx(0.1)
    assert settings[100]["tau"] == pytest.approx(1.0 * 0.1 ** (100 / 199))
    assert hooks.on_progress(nn.Linear(1, 1), 3, recipe) == {} and not hooks.skips_weights(nn.Linear(1, 1))


def test_a_warmup_shorter_than_an_epoch_ramps_within_it():
    """`--epochs 1` shrinks egrr's 20-epoch depth warm-up to a tenth of an epoch. Set once per epoch,
    the settings had trained and saved the whole epoch at depth 1 and tau 1."""
    from cnnscope.zoo.egrr import EGRRNet

    recipe = recipes.resolve(recipes.get_recipe("egrr"), {"epochs": 1})
    model = EGRRNet(num_classes=2, stem_channels=4, stages=((4, 6, 1),))
    at = [hooks.on_progress(model, e, recipe) for e in (0, 0.03, 0.05, 0.09, 0.11, 0.5)]
    assert [s["depth"] for s in at] == [1, 2, 3, 5, None, None]
    assert at[0]["tau"] == 1.0 and at[-1]["tau"] == pytest.approx(0.1 ** 0.5)
    seen = []  # (depth, tau, whether DDP must look for unused weights) of every training forward
    model.register_forward_pre_hook(lambda m, args: seen.append((m.depth, m.stages[0].gate.tau, m.skips_weights()))
                                    if m.training else None)
    images, labels = torch.randn(40, 3, 4, 4), torch.randint(0, 2, (40,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=1)
    training.fit(model, loader, recipe=recipe)
    assert [depth for depth, _, _ in seen] == [1, 2, 3, 4] + [None] * 36  # batch i at epoch i / 40
    assert [skips for _, _, skips in seen] == [True] * 4 + [False] * 36
    assert seen[-1][1] == pytest.approx(0.1 ** (39 / 40))


def test_soft_sharing_coefficients_get_no_weight_decay():
    """SConv2d declares its coefficients (no_weight_decay), in swrn and in any model of the user's."""
    from cnnscope.zoo.soft_sharing import SWRN, SConv2d, TemplateBank

    class Own(nn.Module):  # the soft_sharing module's plug-in example
        def __init__(self):
            super().__init__()
            self.bank = TemplateBank(num_templates=3, in_planes=4, out_planes=4, kernel_size=3)
            self.conv1, self.conv2 = SConv2d(self.bank), SConv2d(self.bank)

    for model in (SWRN(depth=16, width=1, num_templates=2), Own()):  # swrn: 2 blocks a stage, the second shares
        optimizer = training.build_optimizer(model, recipes.get_recipe("swrn"))
        coefficients = [m.coefficients for m in model.modules() if isinstance(m, SConv2d)]
        decayed, free = optimizer.param_groups
        assert free["weight_decay"] == 0.0 and [id(p) for p in free["params"]] == [id(p) for p in coefficients]
        assert decayed["weight_decay"] == 5e-4 and not {id(p) for p in decayed["params"]} & set(map(id, coefficients))
        assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))
    assert len(training.build_optimizer(nn.Linear(2, 2), recipes.get_recipe("swrn")).param_groups) == 1


def test_fit_trains_a_module_on_plain_loaders():
    """core.training.fit: a model and DataLoaders of one's own, no run folder, no CLI."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    images, labels = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    before = model[0].weight.detach().clone()
    result = training.fit(model, loader, loader, recipe=recipes.get_recipe("basic"), epochs=2, lr=0.05)
    assert [row["epoch"] for row in result.history] == [1, 2] and result.model is model
    assert all(math.isfinite(row["train_loss"]) and 0 <= row["val_acc"] <= 100 for row in result.history)
    assert 1 <= result.best_epoch <= 2 and not torch.equal(before, model[0].weight)


class Recorder(Callback):
    """Every point of the loop it is called at, with where the loop stands."""

    def __init__(self, stop_at=None, stop=None):
        self.events, self.stop_at, self.stop = [], stop_at, stop

    def on_train_start(self, loop):
        self.events.append(("start", loop.state.epoch, loop.state.batch))

    def on_step(self, loop, step, loss, lr):
        self.events.append(("step", step, lr))
        if step == self.stop_at:
            self.stop.requested = True  # what Ctrl-C does

    def on_checkpoint(self, loop, improved):
        self.events.append(("checkpoint", loop.state.epoch, loop.state.batch))

    def on_epoch_end(self, loop, row, improved):
        self.events.append(("epoch", row["epoch"]))

    def on_train_end(self, loop):
        self.events.append(("end", loop.stopped))


def test_callbacks_see_each_step_once_across_a_stop_and_a_resume():
    """The loop's points in order; stopped mid-epoch and resumed from its state, the loop goes on at
    the next step: no step is repeated or missed (what an event log needs across --resume)."""
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.randn(60, 3, 4, 4), torch.randint(0, 2, (60,))), batch_size=4)
    recipe, cpu = dataclasses.replace(recipes.get_recipe("basic"), epochs=2), torch.device("cpu")
    model, stop = nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), training.StopRequest()
    first = Recorder(stop_at=18, stop=stop)  # epoch 2, batch 3: it stops at the next report point
    stopped = training.run_loop(training.make_loop(model, loader, None, recipe, cpu, callbacks=[first]), stop)
    assert stopped.stopped == "request" and (stopped.state.epoch, stopped.state.batch) == (1, 10)
    second = Recorder()
    resumed = training.make_loop(model, loader, None, recipe, cpu, callbacks=[second])
    resumed.state = stopped.state
    training.run_loop(resumed)
    steps = [e for e in first.events + second.events if e[0] == "step"]
    assert [step for _, step, _ in steps] == list(range(1, 31))
    assert [lr for _, _, lr in steps] == resumed.state.lr_steps
    assert [e for e in first.events if e[0] != "step"] == [
        ("start", 0, 0), ("checkpoint", 1, 0), ("epoch", 1), ("checkpoint", 1, 10), ("end", "request")]
    assert [e for e in second.events if e[0] != "step"] == [("start", 1, 10), ("checkpoint", 2, 0), ("epoch", 2),
                                                             ("end", "")]


def test_fit_stops_early_when_the_validation_loss_stays():
    from torch.utils.data import DataLoader, TensorDataset

    class Frozen(nn.Module):  # its logits never change: the validation loss of epoch 1 stays
        def __init__(self):
            super().__init__()
            self.fc, self.bias = nn.Linear(3 * 32 * 32, 2).requires_grad_(False), nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.fc(x.flatten(1)) + 0 * self.bias

    loader = DataLoader(TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 2, (32,))), batch_size=8)
    recorder = Recorder()
    result = training.fit(Frozen(), loader, loader, recipe=recipes.get_recipe("basic"), epochs=5,
                          early_stop_patience=1, callbacks=[recorder])
    assert [row["epoch"] for row in result.history] == [1, 2] and recorder.events[-1] == ("end", "early")


def test_piped_output_is_one_whole_line_per_event(tmp_path):
    """Off a terminal no progress bar is drawn (rich would leave blank lines) and no line is wrapped."""
    cmd = [sys.executable, "-m", "cnnscope", *map(str, train_args("basic", tmp_path, "--train-subset", 64,
                                                                     "--procs", 1, epochs=2, batch_size=64))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "60"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # the run (3 lines), the epochs' header (2), one line per epoch, the closing lines (3)
    assert len(lines) == 10 and all(lines), lines
    assert lines[0] == "basic: basic, 84,322 params, on fake, cpu"
    assert lines[1] == "  64 train / 51 val / 128 test images; 2 epochs x 1 batch of 64" and lines[2] == f"  -> {tmp_path}/basic"
    assert lines[3].split() == ["train", "val"] and lines[4].split() == [
        "epoch", "loss", "acc", "loss", "acc", "lr", "time", "img/s", "ETA"]
    for epoch, line in zip((1, 2), lines[5:7]):
        assert line.split()[0] == f"{epoch}/2" and len(line) == len(lines[4]) + (len("  best") if "best" in line else 0)
    assert lines[7].startswith("Done in ") and lines[8].startswith("  test acc ") and lines[9] == f"  -> {tmp_path}/basic"
    assert all(len(line) <= 80 for line in lines[:2] + lines[3:9])  # at 60 columns too: lines are never wrapped
