"""The files of a training run's folder: config.json, train_log.csv and the values of metrics.json
(after every epoch: the RunFiles callback; the run's runfiles.RunMetrics writes the file), the model
texts (model_summary.txt, rf.md) and the curves. Rank 0 writes them; every write is atomic.
"""
import json
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cnnscope.core.callbacks import Callback
from cnnscope.core.distributed import Dist
from cnnscope.core.training import Loop
from cnnscope.files import atomic_write_csv, atomic_write_text
from cnnscope.runs import launch
from cnnscope.runs.training_run import TrainingRun

LOG_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def git_commit() -> str | None:
    """The commit of the cnnscope source tree (+ '-dirty' with local changes), None outside git."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def run_config(opts, ddp: Dist, device, amp, contiguous_because, selected_on, data: dict) -> dict:
    """config.json: the resolved options, the data (datasets.describe), where the run ran (channels_last
    or contiguous weights and batches, and why: `contiguous_because`), and the versions that ran it."""
    import platform

    import torchvision

    import cnnscope

    return {
        "model": opts.spec, "ctor": opts.ctor, "dataset": opts.recipe.dataset, "seed": opts.seed,
        "epochs": opts.recipe.epochs, "selected_on": selected_on,
        "options": opts.to_json(), "data": data,
        "device": str(device), "world_size": ddp.world_size, "amp": amp, "channels_last": not contiguous_because,
        **({"contiguous_because": contiguous_because} if contiguous_because else {}),
        "versions": {"cnnscope": cnnscope.__version__, "torch": str(torch.__version__),
                     "torchvision": str(torchvision.__version__), "numpy": np.__version__,
                     "python": platform.python_version()},
        "git_commit": git_commit(),
        "command": launch.command_line(),
    }


def write_model_texts(run_dir: Path, net: nn.Module, input_shape) -> dict:
    """model_summary.txt and rf.md, from a copy of the model so the run's RNG and weights stay put.
    -> its MACs and final receptive field, for metrics.json (`compare`'s table shows them)."""
    import copy

    from cnnscope import render
    from cnnscope.core.rf import receptive_field
    from cnnscope.core.summary import summarize
    from cnnscope.render.summary import model_summary_text

    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(net).cpu()
        summary, rf = summarize(probe, input_shape), receptive_field(probe, input_shape)
    atomic_write_text(run_dir / "model_summary.txt", model_summary_text(summary))
    atomic_write_text(run_dir / "rf.md", render.to_markdown(rf))
    return {"macs": summary.macs, "rf": rf.final_rf}


class RunFiles(Callback):
    """train_log.csv and the training's values of metrics.json after every epoch, by rank 0."""

    def __init__(self, run: TrainingRun):
        self.run = run

    def on_epoch_end(self, loop: Loop, row: dict, improved: bool) -> None:
        if loop.ddp.is_main:
            write_log(self.run.run_dir, loop.state.history)
            self.run.metrics.update(epoch_metrics(self.run, loop))


def write_log(run_dir: Path, history: list) -> None:
    """train_log.csv: one row per epoch, from the checkpointed history."""
    # the whole log again each epoch (a few hundred rows at most), so a kill never leaves half a row
    atomic_write_csv(run_dir / "train_log.csv", [LOG_COLUMNS] + [
        [round(v, 6) if isinstance(v, float) else v for v in (row[k] for k in LOG_COLUMNS)] for row in history])


def epoch_metrics(run: TrainingRun, loop: Loop) -> dict:
    """What metrics.json says of the training so far."""
    state = loop.state
    return {
        "run": run.run_dir.name, "model": run.opts.spec, "params": sum(p.numel() for p in loop.net.parameters()),
        "dataset": run.ds.name, "selected_on": run.selected_on, "best_val_acc": state.best_acc,
        "best_epoch": state.best_epoch, "epochs": state.epoch,
        "train_time_s": sum(r["epoch_time_s"] for r in state.history),
        "images_per_s": state.train_images / state.train_seconds,
        "lr_per_step": [float(f"{lr:.6g}") for lr in state.lr_steps],
    }


def lr_series(history: list, lr_steps) -> tuple[list, list, str]:
    """(xs, lrs, xlabel) of the lr plot: one point per optimizer step, at its fraction of the epochs
    (step k of n per epoch at k / n); a run logged before per-step lrs has one point per epoch."""
    epochs = len(history)
    if lr_steps and epochs and len(lr_steps) % epochs == 0:
        per_epoch = len(lr_steps) // epochs
        return [(k + 1) / per_epoch for k in range(len(lr_steps))], list(lr_steps), "epoch (a point per step)"
    return [r["epoch"] for r in history], [r["lr"] for r in history], "epoch (last step of each)"


def write_curves(run_dir: Path) -> None:
    """plots/acc_curves.png, loss_curves.png, lr.png from the run's train_log.csv and metrics.json:
    titled with the run's name, the best epoch (by the selection split) and, once the run is
    evaluated, the test accuracy of its weights marked."""
    from cnnscope.render import plots
    from cnnscope.runs import runfiles

    history = runfiles.read_csv(run_dir / "train_log.csv", numeric=LOG_COLUMNS[:6])
    metrics = runfiles.read_metrics(run_dir / "metrics.json")
    name, selected_on = metrics.get("run") or run_dir.name, metrics.get("selected_on", "val")
    epochs, best_epoch = [r["epoch"] for r in history], metrics.get("best_epoch")
    best = (best_epoch, f"best {selected_on} epoch ({best_epoch})") if best_epoch else None

    def series(key):  # the val_ columns hold test numbers when the run selected on test
        return {"": {"train": (epochs, [r[f"train_{key}"] for r in history]),
                     selected_on: (epochs, [r[f"val_{key}"] for r in history])}}

    plots.curves(series("acc"), run_dir / "plots" / "acc_curves.png", title=f"{name}: accuracy",
                 ylabel="accuracy (%)", best=best, test_acc=metrics.get("test_acc"))
    plots.curves(series("loss"), run_dir / "plots" / "loss_curves.png", title=f"{name}: loss",
                 ylabel="cross-entropy", best=best)
    xs, lrs, xlabel = lr_series(history, metrics.get("lr_per_step"))
    plots.curves({"": {"lr": (xs, lrs)}}, run_dir / "plots" / "lr.png", title=f"{name}: learning rate",
                 ylabel="lr", xlabel=xlabel, best=best)
