"""The effective receptive field (Luo et al., 2016): how much each input pixel actually moves the
final map's centre unit, averaged over images, beside the theoretical RF box.

The centre unit is the one whose RF centre lies nearest the centre of the input, per axis. Where two
units lie equally near (an even map over an input whose middle falls between them), both are
probed and their |gradients| averaged, so the heatmap is centred where the input is."""
import itertools

import numpy as np
import torch
import torch.nn as nn

from cnnscope.core.rf.result import EffectiveRF, RFResult
from cnnscope.core.rf.trace import final_map, map_grid, unit_gradient


def effective_receptive_field(model: nn.Module, images: torch.Tensor, result: RFResult, *, batch_size=16,
                              on_batch=None) -> EffectiveRF:
    """Mean |d centre / d input| over `images` (N, C, H, W), summed over channels, normalised to sum
    1; and the radius around the centre unit's RF centre that holds 95% of that mass.

    `result` must be the analysis of `model` at the images' size. `on_batch(n)` is called after
    each batch of n images (a progress bar's advance)."""
    model.eval()
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    units = ()
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].detach().clone().requires_grad_()
        fmap = final_map(model, batch, result)
        units = central_units(result, map_grid(fmap, result.final_layout))
        for k, unit in enumerate(units):
            grad = unit_gradient(fmap, batch, result.final_layout, unit, retain_graph=k < len(units) - 1)
            total += grad.abs().sum(1).sum(0).cpu().double() / len(units)  # float64 on the CPU: mps has none
        if on_batch is not None:
            on_batch(len(batch))
    heat = (total / total.sum()).numpy() if total.sum() > 0 else total.numpy()
    cy, cx = (float(np.mean([sum(a.unit_window(u)) / 2 for u in {unit[k] for unit in units}]))
              for k, a in enumerate(result.final))
    centre = tuple(int(c) if float(c).is_integer() else c for c in (cy, cx))
    return EffectiveRF(heatmap=heat, centre=centre, radius95=_radius95(heat, centre), images=len(images),
                       units=tuple(units))


def central_units(result: RFResult, grid) -> list:
    """The (row, col) units of a final map of `grid` (H, W) that see the input and whose RF centres
    lie nearest the centre of the input: one, or two or four where an axis ties. (A transposed conv
    with stride and dilation leaves units that see nothing; an even map ties.)"""
    per_axis = []
    for axis, n, size in zip(result.final, grid, result.input_shape[1:]):
        seeing = [u for u in range(n) if axis.span(u) is not None] or [(n - 1) // 2]
        distance = {u: abs(sum(axis.unit_window(u)) / 2 - (size - 1) / 2) if axis.span(u) is not None else 0.0
                    for u in seeing}
        nearest = min(distance.values())
        per_axis.append([u for u in seeing if distance[u] <= nearest + 1e-9])
    return list(itertools.product(*per_axis))


def _radius95(heat, centre):
    """The radius around `centre` (y, x) that holds 95% of the mass of `heat`; None for no mass."""
    ys, xs = np.indices(heat.shape)
    distance = np.hypot(ys - centre[0], xs - centre[1]).ravel()
    order = np.argsort(distance, kind="stable")
    mass = np.cumsum(heat.ravel()[order])
    return float(distance[order][np.searchsorted(mass, 0.95 - 1e-9)]) if mass[-1] > 0 else None


def rf_box(result: RFResult, centre):
    """(top, left, bottom, right) input pixels of the theoretical RF around `centre` (y, x)."""
    (cy, cx), (h, w) = centre, result.final
    return (cy - (h.window - 1) / 2, cx - (w.window - 1) / 2, cy + (h.window - 1) / 2, cx + (w.window - 1) / 2)
