"""The effective receptive field (Luo et al., 2016): how much each input pixel actually moves the
final map's centre unit, averaged over images, beside the theoretical RF box."""
import numpy as np
import torch
import torch.nn as nn

from cnnscope.core.rf.result import EffectiveRF, RFResult
from cnnscope.core.rf.trace import centre_gradient, final_map


def effective_receptive_field(model: nn.Module, images: torch.Tensor, result: RFResult, *, batch_size=16,
                              on_batch=None) -> EffectiveRF:
    """Mean |d centre / d input| over `images` (N, C, H, W), summed over channels, normalised to sum
    1; and the radius around the centre unit's RF centre that holds 95% of that mass.

    `result` must be the analysis of `model` at the images' size. `on_batch(n)` is called after
    each batch of n images (a progress bar's advance)."""
    model.eval()
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    centre = None
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].detach().clone().requires_grad_()
        grad, centre = centre_gradient(final_map(model, batch, result), batch, result)
        total += grad.abs().sum(1).sum(0).cpu().double()  # float64 on the CPU: mps has none
        if on_batch is not None:
            on_batch(len(batch))
    heat = (total / total.sum()).numpy() if total.sum() > 0 else total.numpy()
    cy, cx = ((lo + hi) / 2 for lo, hi in (a.unit_window(c) for a, c in zip(result.final, centre)))
    return EffectiveRF(heatmap=heat, centre=(cy, cx), radius95=_radius95(heat, (cy, cx)), images=len(images))


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
