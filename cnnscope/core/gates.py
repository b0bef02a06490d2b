"""Entropy-gate dilation maps: where a gated network looks wide and where it looks close.

An entropy gate (egrr's EntropyGate) turns the local variance of its input into per-pixel
probabilities over the dilations (1, 2, 4) of one shared depthwise kernel. A model exposes its
gates through `model.record_gates = True`: each forward then fills `model.gate_maps` with one dict
per stage and recursion step, in execution order: {"stage": int, "step": int, "probs": (B, D, H, W)
summing to 1 over D, "variance": (B, H, W) the channel-mean local variance that fed the gate}.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from cnnscope.core.probe import display_pixels
from cnnscope.errors import CnnscopeError

DEFAULT_DILATIONS = (1, 2, 4)


@dataclass
class GateStep:
    stage: int
    step: int
    probs: np.ndarray  # (N, D, H, W), sums to 1 over D
    variance: np.ndarray  # (N, H, W)

    @property
    def shares(self) -> np.ndarray:
        """Mean probability of each dilation over images and pixels (sums to 1)."""
        return self.probs.mean(axis=(0, 2, 3))

    @property
    def label(self) -> str:
        return f"s{self.stage}.t{self.step}"


@dataclass
class GateReport:
    """The gates of a model on a batch of images. The data is `steps`; the rest says what was
    looked at, and `figures` names the figures a caller drew from it (name -> path)."""
    dilations: tuple
    steps: list  # GateStep in execution order
    target: str = "model"  # what was inspected: a model's class name, a run folder, "<name> (untrained)"
    dataset: Optional[str] = None  # where the images come from, when known
    images: list = field(default_factory=list)  # {"index"} per image, with "label" and "class" when known
    figures: dict = field(default_factory=dict)
    pixels: Optional[np.ndarray] = None  # (N, H, W, 3) in [0, 1]: the images as a figure shows them
    model: str = ""  # the model's class name
    weights: str = ""  # "trained" or "untrained" where the caller knows; "" where not

    def stages(self) -> list[int]:
        return sorted({s.stage for s in self.steps})

    def stage_steps(self, stage) -> list:
        return [s for s in self.steps if s.stage == stage]

    def variance_corr(self, steps) -> float | None:
        """Pearson r over all pixels of `steps` between local variance and P(largest dilation)."""
        largest = int(np.argmax(self.dilations))
        return pearson(np.concatenate([s.variance.ravel() for s in steps]),
                       np.concatenate([s.probs[:, largest].ravel() for s in steps]))

    def _shares(self, shares) -> dict:
        return {str(d): float(p) for d, p in zip(self.dilations, shares)}

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "dataset": self.dataset,
            "images": self.images,
            "dilations": list(self.dilations),
            "steps": [{"stage": s.stage, "step": s.step, "size": list(s.probs.shape[2:]),
                       "shares": self._shares(s.shares), "variance_corr": self.variance_corr([s])}
                      for s in self.steps],
            "stages": [{"stage": stage, "steps": len(self.stage_steps(stage)),
                        "shares": self._shares(np.mean([s.shares for s in self.stage_steps(stage)], 0)),
                        "variance_corr": self.variance_corr(self.stage_steps(stage))}
                       for stage in self.stages()],
            "figures": self.figures,
        }


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None when either side is constant (r is undefined)."""
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return None if denom < 1e-12 else float((a * b).sum() / denom)


def gate_dilations(model) -> tuple:
    """The dilations the gates choose between, from the gate class's DILATIONS constant."""
    for module in model.modules():
        if hasattr(module, "DILATIONS") and hasattr(module, "head"):
            return tuple(module.DILATIONS)
    return DEFAULT_DILATIONS


def require_gates(model) -> None:
    if not hasattr(model, "record_gates"):
        raise CnnscopeError(
            f"{type(model).__name__} has no entropy gates: gate maps need a model that records "
            "per-pixel gate probabilities when `model.record_gates = True` (egrr's EGRRNet does). "
            "Inspect an egrr model."
        )


def record_gate_steps(model, x, on_progress=lambda done, total: None) -> list[GateStep]:
    """Run `x` (N, C, H, W) image by image with gate recording on; gates per stage and step.
    `on_progress(images done, images in all)` follows the work."""
    require_gates(model)
    per_image = []
    previous = model.record_gates
    model.record_gates = True
    try:
        with torch.no_grad():
            for i in range(len(x)):
                model.gate_maps = []
                model(x[i:i + 1])
                per_image.append(list(model.gate_maps))
                on_progress(i + 1, len(x))
    finally:
        model.record_gates = previous
    if not per_image or not per_image[0]:
        raise CnnscopeError(
            f"{type(model).__name__} has `record_gates` but recorded no gate maps in a forward pass "
            "(is its depth set to 0?). Check the model's set_depth, or inspect an egrr model."
        )
    steps = []
    for position, gate in enumerate(per_image[0]):
        steps.append(GateStep(
            stage=int(gate["stage"]), step=int(gate["step"]),
            probs=torch.cat([maps[position]["probs"] for maps in per_image]).float().cpu().numpy(),
            variance=torch.cat([maps[position]["variance"] for maps in per_image]).float().cpu().numpy(),
        ))
    return steps


def gate_maps(model, images: torch.Tensor, *, on_progress=lambda done, total: None) -> GateReport:
    """Gate probabilities of `model` on `images` (N, C, H, W), image by image, per stage and step
    (see record_gate_steps)."""
    steps = record_gate_steps(model, images, on_progress)
    dilations = gate_dilations(model)
    if steps[0].probs.shape[1] != len(dilations):
        raise CnnscopeError(
            f"The gates of {type(model).__name__} give {steps[0].probs.shape[1]} probabilities per pixel "
            f"but its DILATIONS are {dilations}; the model's gate_maps do not follow the gate contract."
        )
    return GateReport(dilations, steps, target=type(model).__name__, images=[{"index": i} for i in range(len(images))],
                      pixels=display_pixels(images), model=type(model).__name__)
