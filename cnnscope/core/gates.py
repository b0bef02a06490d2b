"""Entropy-gate dilation maps: where a gated network looks wide and where it looks close.

An entropy gate (egrr's EntropyGate) turns the local variance of its input into per-pixel
probabilities over the dilations (1, 2, 4) of one shared depthwise kernel. A model exposes its
gates through `model.record_gates = True`: each forward then fills `model.gate_maps` with one dict
per stage and recursion step, in execution order: {"stage": int, "step": int, "probs": (B, D, H, W)
summing to 1 over D, "variance": (B, H, W) the channel-mean local variance that fed the gate}.
"""
from dataclasses import dataclass, field

import numpy as np
import torch

from cnnscope.errors import CnnscopeError
from cnnscope.runs.inspect import Section, fmt_float

DEFAULT_DILATIONS = (1, 2, 4)
# One fixed colour per dilation (d=1 blue, d=2 green, d=4 red); a pixel shows the
# probability-weighted mix, so a pure colour means a confident gate and grey-brown a hesitant one.
DILATION_COLOURS = ((0.12, 0.40, 0.90), (0.10, 0.70, 0.20), (0.90, 0.15, 0.15))


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
    target: str
    dataset: str
    images: list  # {"index", "label", "class"} per image
    dilations: tuple
    steps: list  # GateStep in execution order
    figures: dict = field(default_factory=dict)

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

    def sections(self) -> list[Section]:
        data = self.to_json()
        p_cols = [f"P(d={d})" for d in self.dilations]
        r_col = f"r(var, P(d={max(self.dilations)}))"
        steps = Section(
            f"Gate shares per step: {self.target}, {len(self.images)} test images of {self.dataset}",
            ["Stage", "Step", "Size", *p_cols, r_col],
            [[str(s["stage"]), str(s["step"]), "x".join(map(str, s["size"])),
              *(fmt_float(p) for p in s["shares"].values()), fmt_float(s["variance_corr"])]
             for s in data["steps"]],
        )
        stages = Section(
            "Per stage: mean shares, and how the gate follows local variance (Pearson r over pixels)",
            ["Stage", "Steps", *p_cols, r_col],
            [[str(s["stage"]), str(s["steps"]), *(fmt_float(p) for p in s["shares"].values()),
              fmt_float(s["variance_corr"])] for s in data["stages"]],
            notes=[f"{name}: {path}" for name, path in self.figures.items()],
        )
        return [steps, stages]


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None when either side is constant (r is undefined)."""
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return None if denom < 1e-12 else float((a * b).sum() / denom)


def mix_colours(probs: np.ndarray, colours=DILATION_COLOURS) -> np.ndarray:
    """(D, H, W) probabilities -> (H, W, 3) RGB: the probability-weighted mix of the colours."""
    return np.einsum("dhw,dc->hwc", probs, np.asarray(colours[:len(probs)], dtype=np.float64))


def gate_dilations(model) -> tuple:
    """The dilations the gates choose between, from the gate class's DILATIONS constant."""
    for module in model.modules():
        if hasattr(module, "DILATIONS") and hasattr(module, "head"):
            return tuple(module.DILATIONS)
    return DEFAULT_DILATIONS


def require_gates(model) -> None:
    if not hasattr(model, "record_gates"):
        raise CnnscopeError(
            f"{type(model).__name__} has no entropy gates: `cnnscope gates` needs a model that records "
            "per-pixel gate probabilities when `model.record_gates = True` (egrr's EGRRNet does). "
            "Pass an egrr run or SPEC."
        )


def record_gate_steps(model, x, on_image=lambda: None) -> list[GateStep]:
    """Run `x` (N, C, H, W) image by image with gate recording on; gates per stage and step."""
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
                on_image()
    finally:
        model.record_gates = previous
    if not per_image or not per_image[0]:
        raise CnnscopeError(
            f"{type(model).__name__} has `record_gates` but recorded no gate maps in a forward pass "
            "(is its depth set to 0?). Check the model's set_depth, or pass an egrr run."
        )
    steps = []
    for position, gate in enumerate(per_image[0]):
        steps.append(GateStep(
            stage=int(gate["stage"]), step=int(gate["step"]),
            probs=torch.cat([maps[position]["probs"] for maps in per_image]).float().numpy(),
            variance=torch.cat([maps[position]["variance"] for maps in per_image]).float().numpy(),
        ))
    return steps


def inspect_gates(target, images, *, progress=None) -> GateReport:
    """Gate probabilities of `target.model` on `images`, with the two figures under plots_dir."""
    from cnnscope.render import plots

    model = target.model
    task = progress.add_task("gates: forward", total=len(images.x)) if progress else None
    steps = record_gate_steps(model, images.x,
                              on_image=(lambda: progress.advance(task)) if progress else (lambda: None))
    dilations = gate_dilations(model)
    if steps[0].probs.shape[1] != len(dilations):
        raise CnnscopeError(
            f"The gates of {type(model).__name__} give {steps[0].probs.shape[1]} probabilities per pixel "
            f"but its DILATIONS are {dilations}; the model's gate_maps do not follow the gate contract."
        )
    report = GateReport(
        target=target.label, dataset=images.dataset,
        images=[{"index": i, "label": y, "class": images.class_name(y)}
                for i, y in zip(images.indices, images.labels)],
        dilations=dilations, steps=steps,
    )
    colours = DILATION_COLOURS[:len(dilations)]
    legend = [(f"d={d}", c) for d, c in zip(dilations, colours)]
    if progress:
        progress.update(task, description="gates: drawing")
    report.figures["gate_maps"] = str(plots.gate_maps(
        images.pixels,
        [[mix_colours(s.probs[i], colours) for s in steps] for i in range(len(images.x))],
        column_titles=[s.label for s in steps],
        row_titles=[images.class_name(y) for y in images.labels],
        legend=legend,
        path=target.plots_dir / "gate_maps.png",
    ))
    report.figures["gate_shares"] = str(plots.gate_shares(
        [s.label for s in steps], np.stack([s.shares for s in steps]), legend,
        groups=[s.stage for s in steps], path=target.plots_dir / "gate_shares.png",
        title=f"Mean dilation share per stage/step: {target.label}",
    ))
    return report
