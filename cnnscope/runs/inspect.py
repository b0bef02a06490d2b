"""Inspection of a model's inner workings: entropy gates, soft-sharing coefficients, attributions.

Every inspection command works on a TARGET:
  - a RUN: a reports/<run> folder or a checkpoint file; the trained weights, and test images from
    the run's dataset normalised with the run's mean and std. Figures go to <run>/plots/. Its model
    is built only if it is a zoo model or trusted (spec.check_file_spec).
  - a SPEC (registry name, file.py:Class or package.module:attr, with --ctor keywords), labelled
    "untrained": freshly initialised weights, test images from --dataset (default `fake`).
    Figures go to reports/<name>-untrained/plots/.
`--out DIR` puts the figures in DIR instead.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from cnnscope.errors import CnnscopeError


@dataclass
class Target:
    model: nn.Module  # eval mode
    label: str  # the run folder, or "<name> (untrained)"
    plots_dir: Path  # where figures go
    checkpoint: Optional[dict] = None  # None for an untrained SPEC


@dataclass
class ProbeImages:
    x: torch.Tensor  # float32 (N, 3, H, W), normalised as the model expects
    pixels: np.ndarray  # float (N, H, W, 3) in [0, 1], for plotting
    labels: list  # int class index per image
    indices: list  # position of each image in the test split
    classes: list  # class names of the dataset
    dataset: str

    def class_name(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)


def is_run(target: str) -> bool:
    """A run folder or a checkpoint file (anything that exists and is not a .py model file)."""
    path = Path(target)
    return path.is_dir() or (path.is_file() and path.suffix != ".py")


def load_target(target: str, ctor=(), out=None, trust_spec=False) -> Target:
    """TARGET (RUN or SPEC) -> the model in eval mode, its label and its figure folder.
    `trust_spec`: build a RUN's SPEC even when it is no zoo model (spec.check_file_spec)."""
    from cnnscope.runs import checkpoint, spec

    if is_run(target):
        if ctor:
            raise CnnscopeError(
                f"--ctor applies to a SPEC, but {target} is a run: its constructor keywords come "
                "from its checkpoint. Drop --ctor, or pass a SPEC to inspect an untrained model."
            )
        model, ckpt, run_dir = checkpoint.load_run_model(target, trust_spec=trust_spec)
        plots_dir = Path(out) if out else run_dir / "plots"
        return Target(model, str(run_dir), plots_dir, ckpt)
    model = spec.build_model(target, spec.parse_ctor(ctor))
    model.eval()
    _, name = spec.resolve_target(target)
    plots_dir = Path(out) if out else Path("reports") / f"{name}-untrained" / "plots"
    return Target(model, f"{name} (untrained)", plots_dir)


def load_test_images(target: Target, n: int, dataset=None, data_dir="data") -> ProbeImages:
    """The first `n` images of the test split, normalised as the model was trained.

    A run uses its own dataset and mean/std unless `dataset` overrides the images; a SPEC uses
    `dataset` (default `fake`) and that dataset's mean/std.
    """
    from cnnscope.runs.datasets import load_dataset

    ckpt = target.checkpoint or {}
    name = dataset or ckpt.get("dataset") or "fake"
    data = load_dataset(name, data_dir)
    # The model expects inputs normalised with the statistics it was trained with.
    mean = ckpt.get("mean") or data.mean
    std = ckpt.get("std") or data.std
    n = min(n, len(data.test))
    images = data.test.images[:n].float() / 255.0
    x = (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return ProbeImages(
        x=x.contiguous(),
        pixels=images.permute(0, 2, 3, 1).numpy(),
        labels=data.test.labels[:n].tolist(),
        indices=list(range(n)),
        classes=list((ckpt.get("classes") if name == ckpt.get("dataset") else None) or data.classes),
        dataset=name,
    )


def progress():
    """A rich progress bar on stderr (stdout stays clean for --format json); gone when done."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


# ---- tables: each report is a list of Sections, rendered as rich tables or markdown -------------

@dataclass
class Section:
    title: str
    columns: list  # header strings
    rows: list  # lists of strings
    notes: list = field(default_factory=list)  # lines printed under the table

    def align_right(self) -> list:
        """Numeric columns (no letters in the first row's cell) are right-aligned."""
        return [not any(c.isalpha() for c in cell) for cell in (self.rows[0] if self.rows else [])]


def render_table(sections):
    from rich.console import Group
    from rich.table import Table

    parts = []
    for section in sections:
        if not section.rows:  # nothing to tabulate: the title and the notes say it
            parts += [f"[bold]{section.title}[/bold]", *section.notes]
            continue
        table = Table(title=section.title, caption="\n".join(section.notes) or None)
        right = section.align_right()
        for i, col in enumerate(section.columns):
            table.add_column(col, justify="right" if i < len(right) and right[i] else "left")
        for row in section.rows:
            table.add_row(*row)
        parts.append(table)
    return Group(*parts)


def render_markdown(sections) -> str:
    lines = []
    for section in sections:
        right = section.align_right()
        lines += [f"### {section.title}", ""]
        if section.rows:
            lines += ["| " + " | ".join(section.columns) + " |",
                      "|" + "|".join("---:" if i < len(right) and right[i] else ":---"
                                     for i in range(len(section.columns))) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in section.rows] + [""]
        if section.notes:
            lines += [f"{note}  " for note in section.notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


def fmt_float(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
