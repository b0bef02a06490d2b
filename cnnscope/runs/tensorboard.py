"""TensorBoard events of a run (`cnnscope train --tensorboard [DIR]`; the extra cnnscope[tensorboard]).

Rank 0 writes, with torch's SummaryWriter, into the run's events folder (RUN/tensorboard, or DIR):
  train/loss, train/lr    every optimizer step (the loss of rank 0's share of the batch)
  epoch/<column>          every train_log.csv column, per epoch, at the epoch's last step
  final/<metric>          best_val_acc, best_epoch, test_acc, test_loss, train_time_s of the finished run,
                          and every recipe field (with model, seed, ctor) for the HParams view
  figures/<name>          the run's figures (RUN/plots/*.png: curves, confusion matrix, sample grids, ERF)
  texts/<name>            rf.md, model_summary.txt, classification_report.md
Every step is the optimizer step, counted over the whole run. A resumed run's writer purges what
was written after the checkpoint it resumes (purge_step), so a run killed between checkpoints has
no step twice; events are flushed at every checkpoint, so none before it is missing.
`cnnscope attribute|gates|sharing RUN --tensorboard` and `cnnscope rf --erf RUN --tensorboard` add
their figures and tables under <command>/, at the run's last step.
"""
import os
from pathlib import Path

import numpy as np
import torch

from cnnscope.core.callbacks import Callback
from cnnscope.core.training import REPORT_EVERY, Loop
from cnnscope.errors import CnnscopeError, RunError
from cnnscope.files import make_dirs

DEFAULT_FOLDER = "tensorboard"  # the events folder inside the run folder
LOG_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")
FINAL_METRICS = ("best_val_acc", "best_epoch", "test_acc", "test_loss", "train_time_s")
TEXTS = ("rf.md", "model_summary.txt", "classification_report.md")


def summary_writer():
    """torch's SummaryWriter class; a clear error when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        raise CnnscopeError(
            "TensorBoard events need the tensorboard package, which is not installed. Install it with "
            "cnnscope's extra: pip install 'cnnscope[tensorboard]' (or pip install tensorboard), or leave "
            "out tensorboard.", arguments=("tensorboard",),
        ) from None
    return SummaryWriter


def events_folder(run_dir, setting: str) -> Path:
    """The events folder of a run: `setting` (a run's options.tensorboard) inside the run folder
    when relative, else itself."""
    path = Path(setting)
    return path if path.is_absolute() else Path(run_dir) / path


def open_writer(folder: Path, run_dir=None, purge_step: int | None = None):
    """A SummaryWriter appending a new event file to `folder` (made as needed). TensorBoard's writer
    opens its files itself, so the folder is checked first: neither it nor a folder between the run
    folder `run_dir` and it may be a symbolic link, as the run's other entries may not
    (run_folder.refuse_links). `purge_step`: TensorBoard drops the events of earlier files from this
    step on."""
    folder = Path(os.path.abspath(folder))
    root = Path(os.path.abspath(run_dir)) if run_dir is not None else None
    inside = root is not None and folder.is_relative_to(root)
    below = folder.relative_to(root).parts if inside else ()
    for path in [root.joinpath(*below[:i + 1]) for i in range(len(below))] or [folder]:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            what = "a symbolic link" if path.is_symlink() else "not a folder"
            raise (RunError if inside else CnnscopeError)(
                f"The TensorBoard folder {path} is {what}; cnnscope writes events only into a real folder, never "
                f"through a link. Remove it, or give another folder.", arguments=("tensorboard",))
    make_dirs(folder)
    return summary_writer()(str(folder), purge_step=purge_step)


class TensorBoardEvents(Callback):
    """Loss and lr per optimizer step, the log row per epoch, into the events folder of the
    runs.training_run.TrainingRun `run` (rank 0). The step values are read from the device every
    REPORT_EVERY steps, as the loop itself does, not at every step."""

    def __init__(self, run):
        self.run_dir, self.folder = run.run_dir, events_folder(run.run_dir, run.opts.tensorboard)
        self.writer, self.pending = None, []

    def on_train_start(self, loop: Loop) -> None:
        if loop.ddp.is_main:
            done = loop.state.epoch * len(loop.train_loader) + loop.state.batch
            self.writer = open_writer(self.folder, self.run_dir, purge_step=done + 1)

    def on_step(self, loop: Loop, step: int, loss, lr: float) -> None:
        if self.writer is not None:
            self.pending.append((step, loss, lr))
            if len(self.pending) >= REPORT_EVERY:
                self.write_steps()

    def write_steps(self) -> None:
        if self.pending:
            losses = torch.stack([loss.float() for _, loss, _ in self.pending]).tolist()
            for (step, _, lr), loss in zip(self.pending, losses):
                self.writer.add_scalar("train/loss", loss, step)
                self.writer.add_scalar("train/lr", lr, step)
            self.pending = []
        self.writer.flush()

    def on_checkpoint(self, loop: Loop, improved: bool) -> None:
        if self.writer is not None:
            self.write_steps()

    def on_epoch_end(self, loop: Loop, row: dict, improved: bool) -> None:
        if self.writer is not None:
            step = row["epoch"] * len(loop.train_loader)
            for column in LOG_COLUMNS:
                self.writer.add_scalar(f"epoch/{column}", row[column], step)
            self.writer.flush()

    def on_train_end(self, loop: Loop) -> None:
        if self.writer is not None:
            self.write_steps()
            self.writer.close()
            self.writer = None


# ---- after the run: hyperparameters, final metrics, figures, texts ---------------------------

def hyperparameters(options: dict) -> dict:
    """The HParams view's columns from a run's options (TrainOptions.to_json()): model, seed,
    val_split, train_subset, every recipe field (augment.<field>), ctor.<keyword>; values that are
    not numbers, strings or booleans as text."""
    recipe = dict(options["recipe"])
    augment = recipe.pop("augment")
    values = {"model": options["spec"], "seed": options["seed"], "val_split": options["val_split"],
              "train_subset": options["train_subset"], **recipe,
              **{f"augment.{k}": v for k, v in augment.items()},
              **{f"ctor.{k}": v for k, v in options["ctor"].items()}}
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}


def write_results(run, metrics: dict) -> Path:
    """A finished runs.training_run.TrainingRun's hyperparameters with its final `metrics` (the run's
    metrics.json values, in memory), its figures and texts, at its last optimizer step, into its
    events folder. -> the folder."""
    from torch.utils.tensorboard.summary import hparams

    run_dir, options, step = Path(run.run_dir), run.opts.to_json(), len(run.loop.state.lr_steps)
    folder = events_folder(run_dir, options["tensorboard"])
    final = {f"final/{k}": float(metrics[k]) for k in FINAL_METRICS if metrics.get(k) is not None}
    writer = open_writer(folder, run_dir)
    try:
        for summary in hparams(hyperparameters(options), final):
            writer.file_writer.add_summary(summary, step)
        for tag, value in final.items():
            writer.add_scalar(tag, value, step)
        add_figures(writer, "figures", sorted(Path(run_dir, "plots").glob("*.png")), step)
        for name in TEXTS:
            path = Path(run_dir) / name
            if path.is_file():
                add_text(writer, f"texts/{path.stem}", path.read_text(encoding="utf-8"), path.suffix == ".md", step)
    finally:
        writer.close()
    return folder


def add_figures(writer, group: str, paths, step: int) -> None:
    """Each PNG of `paths` as the image <group>/<file stem>."""
    from PIL import Image

    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        writer.add_image(f"{group}/{Path(path).stem}", pixels, step, dataformats="HWC")


def add_text(writer, tag: str, text: str, markdown: bool, step: int) -> None:
    """Markdown as it is; plain text indented as a code block (TensorBoard renders markdown), so
    its columns stay aligned."""
    writer.add_text(tag, text if markdown else "\n".join("    " + line for line in text.splitlines()), step)


# ---- inspections of a run ---------------------------------------------------------------------

def inspection_folder(run_dir, setting: str | None) -> Path | None:
    """Where `cnnscope <inspection> TARGET --tensorboard [DIR]` adds its events (`setting`): DIR
    (absolute), else the events folder of the run `run_dir` (its training's, or RUN/tensorboard);
    None without the option. Said before the inspection runs: a SPEC (run_dir None) has no folder."""
    if setting is None:
        return None
    summary_writer()  # a missing package is said before the inspection runs
    if Path(setting).is_absolute():
        return Path(setting)
    if run_dir is None:
        raise CnnscopeError("An untrained SPEC has no run, so no events folder of its own: give a folder for its "
                            "TensorBoard events, or inspect a run.", arguments=("tensorboard",))
    return events_folder(run_dir, run_option(run_dir, "tensorboard") or DEFAULT_FOLDER)


def run_option(run_dir, name: str):
    """One of the options in the run's config.json (None when it has no such file or option)."""
    from cnnscope.runs import runfiles

    path = Path(run_dir) / "config.json"
    return ((runfiles.read_json(path, "cnnscope train").get("options") or {}).get(name)) if path.is_file() else None


def log_inspection(folder: Path, command: str, report, figures, run_dir=None) -> None:
    """`command`'s `figures` (PNG paths) and its report's table (markdown) under <command>/ in the
    events `folder`, at the run's last step (0 for a SPEC)."""
    from cnnscope import render

    step = last_step(run_dir) if run_dir is not None else 0
    writer = open_writer(folder, run_dir)
    try:
        add_figures(writer, command, [p for p in figures if str(p).endswith(".png")], step)
        add_text(writer, f"{command}/report", render.to_markdown(report), True, step)
    finally:
        writer.close()


def last_step(run_dir) -> int:
    """The run's last optimizer step (its metrics.json lr_per_step: one lr per step), 0 if unknown."""
    from cnnscope.runs import runfiles

    path = Path(run_dir) / "metrics.json"
    return len(runfiles.read_metrics(path).get("lr_per_step") or ()) if path.is_file() else 0
