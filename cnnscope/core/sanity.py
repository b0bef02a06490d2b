"""The model-parameter randomisation test of Adebayo et al. (2018, "Sanity Checks for Saliency Maps").

An explanation that explains the MODEL must change when the model's weights are destroyed. On a
copy of the model, the parameterised modules (those that own parameters: convs, norms, linears,
template banks) are re-initialised one after the other from the output down (the reverse order of
their first call in a forward), cascading: stage k has the top k layers random (with `max_stages`,
consecutive layers are randomised together so that there are at most that many stages). After each
stage every method's maps are computed again, for the same images and the same target classes, and
compared with the trained model's maps by Spearman's rank correlation of the absolute maps (the
paper's measure; the rank correlation of the signed maps is reported too), per image.

A method whose mean rank correlation is still above `threshold` once every layer is random does
not depend on the weights enough to explain them: it is FLAGGED. (A map that is constant carries no
ranking: its correlation is 0.)

Re-initialisation: a module's own `reset_parameters()` (the PyTorch default init, which for a norm
layer also resets its running statistics), else each of its parameters drawn from N(0, s) with s
the parameter's own standard deviation (0.02 for a constant one). Draws are seeded (`seed`).
"""
import copy
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from cnnscope.errors import CnnscopeError
from cnnscope.core.attribution import AttributionReport, attribute, compute_maps
from cnnscope.core.attribution_methods import DEFAULT_METHODS, IG_TOLERANCE, METHODS
from cnnscope.core.relu_calls import forward_calls

FLAG_THRESHOLD = 0.5
SNAPSHOTS = 4  # randomisation stages whose maps are kept for a figure: the first, the last, between


@dataclass
class SanityReport:
    """Rank correlations of each method's maps with the trained model's, per randomisation stage."""
    attribution: AttributionReport  # the trained model's maps (stage 0)
    stages: list  # per stage 1..S: the names of the modules randomised at that stage (top first)
    rank_abs: np.ndarray  # (methods, S + 1, images): Spearman of |maps| vs stage 0; stage 0 is 1
    rank_signed: np.ndarray  # (methods, S + 1, images): Spearman of the signed maps
    snapshots: dict  # stage -> (images, methods, H, W) maps, for SNAPSHOTS stages
    threshold: float = FLAG_THRESHOLD
    seed: int = 0
    figures: dict = field(default_factory=dict)

    @property
    def methods(self) -> list:
        return self.attribution.methods

    def layers_random(self, stage: int) -> int:
        """How many layers are random at `stage` (0: none)."""
        return sum(map(len, self.stages[:stage]))

    def mean_rank(self, signed=False) -> np.ndarray:
        """(methods, S + 1): the rank correlation averaged over the images."""
        return (self.rank_signed if signed else self.rank_abs).mean(axis=2)

    def flagged(self) -> list:
        """Methods whose maps stay rank-correlated above the threshold with every layer random."""
        final = self.mean_rank()[:, -1]
        return [m for m, r in zip(self.methods, final) if r > self.threshold]

    def first_below(self) -> list:
        """Per method, the first stage whose mean rank correlation is at or below the threshold (None: never)."""
        return [next((s for s in range(1, len(row)) if row[s] <= self.threshold), None) for row in self.mean_rank()]

    def _stage_json(self, stage):
        """{stage, layers_random, layer (the lowest random one)} of a stage >= 1; None for None."""
        if stage is None:
            return None
        return {"stage": stage, "layers_random": self.layers_random(stage), "layer": self.stages[stage - 1][-1]}

    def to_json(self) -> dict:
        abs_mean, signed_mean, flagged = self.mean_rank(), self.mean_rank(signed=True), self.flagged()
        return {
            "target": self.attribution.target,
            "dataset": self.attribution.dataset,
            "measure": "Spearman rank correlation of |map| with the original model's maps, per image, averaged",
            "threshold": self.threshold,
            "seed": self.seed,
            "stages": [{"stage": s + 1, "randomised": names, "layers_random": self.layers_random(s + 1)}
                       for s, names in enumerate(self.stages)],
            "methods": [{"name": m, "title": METHODS[m].title, "rank_abs": abs_mean[j].tolist(),
                         "rank_signed": signed_mean[j].tolist(), "final_rank_abs": float(abs_mean[j, -1]),
                         "first_below_threshold": self._stage_json(below), "flagged": m in flagged,
                         "control": METHODS[m].model_free}
                        for j, (m, below) in enumerate(zip(self.methods, self.first_below()))],
            "flagged": flagged,
            "attribution": self.attribution.to_json(),
            "figures": self.figures,
        }


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two arrays (ties get their average rank); 0 if either is constant."""
    ra, rb = average_ranks(a.ravel()), average_ranks(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / norm) if norm > 0 else 0.0


def average_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks of `values`, ties sharing the average of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse]


def parameter_layers(model: nn.Module, x: torch.Tensor) -> list:
    """(name, module) of every module that owns parameters, from the output down: the reverse order
    of first calls in a forward of `x`. A module that owns parameters but is never called (a
    template bank its convs read) goes with the next module after it (in definition order) that is."""
    owners = [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    first = {}
    for order, (_, module, _) in enumerate(forward_calls(model, x, lambda m: True)):
        first.setdefault(module, order)
    defined = list(model.modules())
    later_call = {}
    following = float("inf")
    for module in reversed(defined):
        following = first.get(module, following)
        later_call[module] = following
    keyed = [(first.get(m, later_call[m]), i, name, m) for i, (name, m) in enumerate(owners)]
    return [(name, m) for _, _, name, m in sorted(keyed, key=lambda k: (k[0], k[1]), reverse=True)]


def randomise(module: nn.Module, seed: int) -> None:
    """Re-initialise `module`'s own parameters (see the module doc), with draws seeded by `seed`."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            return
        for p in module.parameters(recurse=False):
            std = float(p.std()) if p.numel() > 1 else 0.0
            p.normal_(0.0, std if std > 0 else 0.02)


def _stages(layers: list, max_stages: Optional[int]) -> list:
    """Layers (top first) cut into at most `max_stages` consecutive groups of near-equal size."""
    if not max_stages or max_stages >= len(layers):
        return [[layer] for layer in layers]
    cuts = np.linspace(0, len(layers), max_stages + 1).round().astype(int)
    return [layers[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def sanity_check(model, images: torch.Tensor, targets=None, methods=DEFAULT_METHODS, *, layer=None,
                 ig_tolerance=IG_TOLERANCE, threshold=FLAG_THRESHOLD, max_stages=None, seed=0,
                 on_progress=lambda done, total: None) -> SanityReport:
    """The cascading randomisation test (see the module doc) of `methods` on `images` (N, C, H, W).

    `targets`, `layer`, `ig_tolerance` as in attribution.attribute; the targets stay those of the
    trained model at every stage. The model itself is left untouched (a copy is randomised).
    """
    random = copy.deepcopy(model).eval()
    stages = _stages(parameter_layers(random, images[:1]), max_stages)
    if not stages:
        raise CnnscopeError(f"{type(model).__name__} has no parameters, so there are no weights to randomise "
                            "and no sanity check to run.")
    original = attribute(model, images, targets, methods, layer=layer, ig_tolerance=ig_tolerance,
                         on_progress=lambda done, total: on_progress(done, total * (len(stages) + 1)))
    layer_module = original.gradcam_layer and dict(random.named_modules())[original.gradcam_layer["name"]]
    shape = (len(original.methods), len(stages) + 1, len(images))
    rank_abs, rank_signed = np.ones(shape), np.ones(shape)
    keep = set(np.linspace(0, len(stages), SNAPSHOTS).round().astype(int).tolist())
    snapshots = {0: original.maps}
    total, done = (len(stages) + 1) * len(images) * len(original.methods), [len(images) * len(original.methods)]

    def step(n):
        done[0] += n
        on_progress(done[0], total)

    for s, group in enumerate(stages, 1):
        for k, (_, module) in enumerate(group):
            randomise(module, seed + 1000 * s + k)
        maps, _ = compute_maps(random, images, original.targets, original.methods, layer_module, ig_tolerance,
                               on_progress=step)
        for j in range(len(original.methods)):
            for i in range(len(images)):
                rank_abs[j, s, i] = spearman(np.abs(original.maps[i, j]), np.abs(maps[i, j]))
                rank_signed[j, s, i] = spearman(original.maps[i, j], maps[i, j])
        if s in keep:
            snapshots[s] = maps
    return SanityReport(original, [[name for name, _ in group] for group in stages], rank_abs, rank_signed,
                        snapshots, threshold, seed)
