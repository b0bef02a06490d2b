"""Inspection of a model's inner workings: entropy gates, soft-sharing coefficients, attributions.

Every inspection works on a TARGET:
  - a RUN: a reports/<run> folder or a checkpoint file; the trained weights, and test images from
    the run's dataset normalised with the run's mean and std. Figures go to <run>/plots/. Its model
    is built only if it is a zoo model or trusted (spec.check_file_spec).
  - a SPEC (registry name, file.py:Class or package.module:attr, with ctor keywords), labelled
    "untrained": freshly initialised weights, test images from `dataset` (default `fake`).
    Figures go to reports/<name>-untrained/plots/.
`out` puts the figures in that folder instead.

inspect_gates, inspect_sharing and inspect_attributions run the analysis of cnnscope.core on a
target, draw its figures and return the core's report with the target, the images and the figure
paths filled in.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from cnnscope.core import attribution, gates, metrics, sanity, sharing
from cnnscope.core.attribution_methods import DEFAULT_METHODS, IG_TOLERANCE
from cnnscope.core.runtime import resolve_device, seed_all
from cnnscope.errors import CnnscopeError, DataError
from cnnscope.files import writing_into
from cnnscope.render.progress import SILENT
from cnnscope.runs import run_folder
from cnnscope.runs.user_images import UNKNOWN_LABEL, load_images


@dataclass
class Target:
    model: nn.Module  # eval mode
    label: str  # the run folder, or "<name> (untrained)"
    plots_dir: Path  # where figures go
    checkpoint: Optional[dict] = None  # None for an untrained SPEC
    device: torch.device = torch.device("cpu")  # where the model is
    out_dir: Optional[Path] = None  # the run or output folder that holds plots_dir (None: plots_dir)

    def writing(self):
        """The context of an inspection's drawing: writes below out_dir never follow a link
        (cnnscope.files.writing_into)."""
        return writing_into(self.out_dir or self.plots_dir)

    @property
    def weights(self) -> str:
        return "untrained" if self.checkpoint is None else "trained"


@dataclass
class ProbeImages:
    x: torch.Tensor  # float32 (N, 3, H, W), normalised as the model expects
    pixels: np.ndarray  # float (N, H, W, 3) in [0, 1], for plotting
    labels: list  # int class index per image
    indices: list  # position of each image in the test split
    classes: list  # class names of the dataset
    dataset: str  # the dataset's name, or "image files"
    files: list = field(default_factory=list)  # the image files, when the images are the user's

    def class_name(self, index: int) -> str:
        return "?" if index == UNKNOWN_LABEL else metrics.class_name(self.classes, index)

    def descriptions(self) -> list:
        """{"index", "label", "class"} per image, and its "file" for the user's images."""
        rows = [{"index": i, "label": y, "class": self.class_name(y)} for i, y in zip(self.indices, self.labels)]
        for row, path in zip(rows, self.files):
            row["file"] = str(path)
        return rows


def is_run(target: str) -> bool:
    """A run folder or a checkpoint file (anything that exists and is not a .py model file)."""
    path = Path(target)
    return path.is_dir() or (path.is_file() and path.suffix != ".py")


def load_target(target: str, ctor=(), out=None, trust_spec=False, *, device="cpu", seed=0,
                reporter=SILENT) -> Target:
    """TARGET (RUN or SPEC) -> the model in eval mode on `device`, its label and its figure folder.
    `trust_spec`: build a RUN's SPEC even when it is no zoo model (spec.check_file_spec); `seed`
    draws an untrained SPEC's weights."""
    from cnnscope.runs import checkpoint, spec

    device = resolve_device(device)
    if is_run(target):
        if ctor:
            raise CnnscopeError(
                f"ctor keywords apply to a SPEC, but {target} is a run: its constructor keywords come "
                "from its checkpoint. Drop the ctor keywords, or give a SPEC to inspect an untrained model.",
                arguments=("ctor",),
            )
        out_dir = Path(out) if out else run_folder.output_folder(*checkpoint.resolve_run(target))
        if not out:  # a run folder: refused before any work when it holds links
            run_folder.refuse_links(out_dir)
        reporter.detail(f"loading the run {target} onto {device}")
        model, ckpt, run_dir = checkpoint.load_run_model(target, trust_spec=trust_spec)
        return Target(model.to(device), str(run_dir), out_dir if out else out_dir / "plots", ckpt, device, out_dir)
    reporter.detail(f"building {target} with untrained weights (seed {seed}) on {device}")
    seed_all(seed)
    model = spec.build_model(target, spec.parse_key_values(ctor))
    model.eval()
    _, name = spec.resolve_target(target)
    out_dir = Path(out) if out else Path("reports") / f"{name}-untrained"
    return Target(model.to(device), f"{name} (untrained)", out_dir if out else out_dir / "plots", device=device,
                  out_dir=out_dir)


def load_test_images(target: Target, n: int, dataset=None, data_dir="data", image_paths=(),
                     reporter=SILENT, indices=()) -> ProbeImages:
    """The first `n` images of the test split (or those at `indices` in it), normalised as the model
    was trained; or, when `image_paths` are given, those image files (runs.user_images), all of them.
    On the target's device.

    A run uses its own dataset and mean/std unless `dataset` overrides the images; a SPEC uses
    `dataset` (default `fake`) and that dataset's mean/std.
    """
    from cnnscope.core.probe import rgb_pixels
    from cnnscope.runs.datasets import load_dataset, loading_line, run_dataset
    from cnnscope.runs.loaders import normalize

    ckpt = target.checkpoint or {}
    if image_paths:
        return _image_files(target, image_paths)
    name = dataset or ckpt.get("dataset") or "fake"
    reporter.detail(f"{loading_line(name, data_dir)}: " + (f"test images {list(indices)}" if indices else
                                                           f"the first {n} test images"))
    data = run_dataset(ckpt, data_dir) if name == ckpt.get("dataset") else load_dataset(name, data_dir)
    # The model expects inputs normalised with the statistics it was trained with.
    mean = ckpt.get("mean") or data.mean
    std = ckpt.get("std") or data.std
    index = _test_indices(indices, len(data.test), name) if indices else torch.arange(min(n, len(data.test)))
    images = data.test.take(index).float() / 255.0
    x = normalize(images, mean, std)
    return ProbeImages(
        x=x.contiguous().to(target.device),
        pixels=rgb_pixels(images),
        labels=data.test.labels[index].tolist(),
        indices=index.tolist(),
        classes=list((ckpt.get("classes") if name == ckpt.get("dataset") else None) or data.classes),
        dataset=name,
    )


def _test_indices(indices, size: int, dataset: str) -> torch.Tensor:
    outside = [i for i in indices if not 0 <= i < size]
    if outside:
        raise DataError(f"Test image index {outside[0]} is out of range: the {dataset} test split has {size:,} "
                        f"images, indices 0 to {size - 1:,}.", arguments=("indices",))
    return torch.tensor(list(indices), dtype=torch.long)


def _image_files(target: Target, paths) -> ProbeImages:
    """The user's image files for the target's model: a run's input shape, mean and std; for an
    untrained SPEC, 3x32x32 and mean = std = 0.5 (pixels mapped to [-1, 1])."""
    ckpt = target.checkpoint or {}
    shape = ckpt.get("input_shape", (3, 32, 32))
    x, pixels, files = load_images(paths, shape, ckpt.get("mean") or (0.5,) * shape[0], ckpt.get("std") or (0.5,) * shape[0])
    return ProbeImages(x=x.to(target.device), pixels=pixels, labels=[UNKNOWN_LABEL] * len(files),
                       indices=list(range(len(files))), classes=list(ckpt.get("classes") or ()), dataset="image files",
                       files=files)


def _task(progress, description, total=None):
    """A task of `total` steps on a rich Progress (or None) and the on_progress(done, total) that moves it."""
    if progress is None:
        return None, lambda done, total: None
    task = progress.add_task(description, total=total)
    return task, lambda done, total: progress.update(task, completed=done, total=total)


def inspect_gates(target: Target, images: ProbeImages, *, progress=None) -> gates.GateReport:
    """Gate probabilities of the target's model on `images`; figures gate_maps.png and gate_shares.png."""
    from cnnscope.render import figures

    task, on_progress = _task(progress, "gates: forward", len(images.x))
    report = gates.gate_maps(target.model, images.x, on_progress=on_progress)
    report = replace(report, target=target.label, dataset=images.dataset, images=images.descriptions(),
                     pixels=images.pixels, weights=target.weights)
    if progress:
        progress.update(task, description="gates: drawing")
    for kind in ("maps", "shares"):
        report.figures[f"gate_{kind}"] = str(figures.write(report, target.plots_dir / f"gate_{kind}.png", kind))
    return report


def inspect_sharing(target: Target, threshold=0.95) -> sharing.SharingReport:
    """The soft-sharing report of the target's model, with one similarity heatmap per bank."""
    from cnnscope.render import figures

    report = replace(sharing.soft_sharing(target.model, threshold), target=target.label, weights=target.weights)
    for bank in report.banks:
        report.figures[bank.name] = str(figures.write(report, target.plots_dir / f"sharing_{bank.name}.png", bank.name))
    return report


def _attribution_targets(target: Target, images: ProbeImages, target_class: str):
    """The class to attribute per image: None (the predicted one), the true labels ("true"), or the
    class named by `target_class` (a name of the dataset's classes, or an index), checked."""
    if target_class == "pred":
        return None
    outputs = attribution.class_count(target.model, images.x[:1], target.label)
    if target_class != "true":
        return [_class_index(target_class, images.classes, outputs)] * len(images.x)
    if images.files:
        raise CnnscopeError("target_class 'true' needs the images' labels, but image files come without them: "
                            "attribute the predicted class (target_class 'pred') or a class by name.",
                            arguments=("target_class",))
    if max(images.labels) >= outputs:
        raise CnnscopeError(
            f"target_class 'true' needs a logit per class, but the model has {outputs} outputs and the "
            f"{images.dataset} labels go up to {max(images.labels)}. Attribute the predicted class "
            f"(target_class 'pred'), or build the model with num_classes={len(images.classes)}.",
            arguments=("target_class", "ctor"),
        )
    return images.labels


def _class_index(name: str, classes: list, outputs: int) -> int:
    """The index of class `name` (case does not matter) or of the index `name` itself, below `outputs`."""
    by_name = {c.lower(): i for i, c in enumerate(classes)}
    index = int(name) if name.isdigit() else by_name.get(name.lower())
    if index is None or index >= outputs:
        known = f"one of {', '.join(classes)}, or an index" if classes else "a class index"
        raise CnnscopeError(f"target_class {name!r} is no class of this model ({outputs} outputs): give pred, true, "
                            f"{known} below {outputs}.", arguments=("target_class",))
    return index


def _draw_attributions(report: attribution.AttributionReport, plots_dir: Path, **figure_options) -> dict:
    """attributions.png (a row per image, a column and a colour bar per method; render.figures) and
    attributions.npz (each method's maps, (N, H, W), signed and unnormalised) -> {name: path}."""
    from cnnscope.files import atomic_write_bytes
    from cnnscope.render import figures

    arrays = plots_dir / "attributions.npz"
    atomic_write_bytes(arrays, lambda f: np.savez_compressed(f, **{m: report.method_map(m) for m in report.methods}))
    return {"attributions": str(figures.write(report, plots_dir / "attributions.png", "maps", **figure_options)),
            "maps": str(arrays)}


def _described(report, target: Target, images: ProbeImages, target_class: str):
    return replace(report, target_class=target_class, target=target.label, dataset=images.dataset,
                   images=images.descriptions(), classes=images.classes, pixels=images.pixels, weights=target.weights)


def inspect_attributions(target: Target, images: ProbeImages, *, methods=DEFAULT_METHODS, target_class="pred",
                         layer=None, ig_tolerance=IG_TOLERANCE, progress=None,
                         figure_options=None) -> attribution.AttributionReport:
    """Attribution maps of `images` for the predicted class (target_class "pred"), the true one
    ("true") or a class by name or index, per method (`layer`: the GradCAM layer by name); figure
    attributions.png (`figure_options`: render.figures' scale and overlay) and the maps in attributions.npz."""
    targets = _attribution_targets(target, images, target_class)
    report = attribution.attribute(target.model, images.x, targets, methods, layer=layer, ig_tolerance=ig_tolerance,
                                   on_progress=_task(progress, "attribute", len(images.x) * len(methods))[1])
    report = _described(report, target, images, target_class)
    report.figures.update(_draw_attributions(report, target.plots_dir, **(figure_options or {})))
    return report


def inspect_sanity(target: Target, images: ProbeImages, *, methods=DEFAULT_METHODS, target_class="pred",
                   layer=None, ig_tolerance=IG_TOLERANCE, threshold=sanity.FLAG_THRESHOLD, max_stages=None,
                   seed=0, progress=None, figure_options=None) -> sanity.SanityReport:
    """The model-parameter randomisation test (core.sanity) of `methods` on `images`; figures
    attributions.png (the trained maps), sanity.png (rank correlation per stage and method) and
    sanity_maps.png (the first image's maps at a few stages). `seed` draws the re-initialised weights."""
    from cnnscope.render import figures

    targets = _attribution_targets(target, images, target_class)
    report = sanity.sanity_check(target.model, images.x, targets, methods, layer=layer, ig_tolerance=ig_tolerance,
                                 threshold=threshold, max_stages=max_stages, seed=seed,
                                 on_progress=_task(progress, "sanity check: randomising layers")[1])
    original = _described(report.attribution, target, images, target_class)
    report = replace(report, attribution=original)
    original.figures.update(_draw_attributions(original, target.plots_dir, **(figure_options or {})))
    for kind, name in (("curves", "sanity"), ("maps", "sanity_maps")):
        report.figures[name] = str(figures.write(report, target.plots_dir / f"{name}.png", kind))
    return report
