"""The final map's RF measured again, independently of the analysis, by gradient probing."""
import copy
import math

import torch
import torch.nn as nn

from cnnscope.core.rf.axis import Axis
from cnnscope.core.rf.result import Probe, RFResult
from cnnscope.core.rf.trace import centre_gradient, final_map
from cnnscope.errors import CnnscopeError


def _positive_(name, p):
    """Probe weights: positive and normalised so that activations neither vanish nor explode."""
    if name.rsplit(".", 1)[-1].endswith("bias"):
        value = 0.0
    elif p.dim() >= 3:  # conv kernels (out, in, kh, kw), template banks (T, out, in, kh, kw)
        value = 1.0 / math.prod(p.shape[-3:])
    elif p.dim() == 2:  # linear (out, in)
        value = 1.0 / p.shape[-1]
    else:  # mixing coefficients, gains, packed triangles
        value = 1.0 / max(p.numel(), 1)
    p.fill_(value)


def _probe_side(axis: Axis, n: int) -> int:
    """A probe input side large enough for the centre unit's RF, in whole jumps (the model's
    stride structure stays intact)."""
    if axis.glob:
        return n
    j = max(1, math.ceil(axis.jump))
    return max(n, j * math.ceil((axis.rf + 2 * j) / j))


def verify_receptive_field(model: nn.Module, result: RFResult, attempts=4) -> Probe:
    """The final map's RF measured by gradient probing, independently of the analysis `result`.

    A copy of the model gets positive weights (biases 0), identity activations, normalisation and
    dropout, and average pooling for max pooling; then the support of d(centre unit) / d(input) on
    a random positive input is the RF. The input grows until that support is clear of the border.
    Runs in float64 (deep nets would underflow float32 at the RF's edge), float32 if that fails.
    """
    failure = None
    for dtype in (torch.float64, torch.float32):
        net = copy.deepcopy(model).to(dtype).eval()
        with torch.no_grad():
            for name, p in net.named_parameters():
                _positive_(name, p)
        try:
            return _probe(net, result, dtype, attempts)
        except RuntimeError as e:  # e.g. a model that builds float32 constants in its forward
            failure = e
    raise CnnscopeError(
        f"The gradient probe of {result.model} failed: {type(failure).__name__}: "
        f"{str(failure).splitlines()[0][:300]}. The analysis does not depend on it: analyse without verifying."
    )


def _probe_axis(net, result: RFResult, axis, generator, dtype, attempts):
    """(extent, input side, clipped) of the centre unit's gradient support along `axis` (0: H, 1: W)."""
    a = result.final[axis]
    side = _probe_side(a, result.input_shape[1 + axis])
    for attempt in range(attempts):
        size = list(result.input_shape[1:])
        size[axis] = side
        x = torch.rand(1, result.input_shape[0], *size, generator=generator, dtype=dtype) + 0.5
        x.requires_grad_()
        grad, _ = centre_gradient(final_map(net, x, result, probe=True), x)
        hits = (grad[0].abs().sum(0) > 0).any(dim=1 - axis).nonzero().flatten().tolist()
        lo, hi = (hits[0], hits[-1]) if hits else (0, -1)
        touches = not a.glob and (lo == 0 or hi == side - 1)  # may be clipped: grow and retry
        if not touches or attempt == attempts - 1:
            break
        side = _probe_side(Axis(0, 2 * side, a.jump), side)
    return hi - lo + 1, side, touches


def _probe(net, result: RFResult, dtype, attempts) -> Probe:
    """One axis at a time: the probed axis grows, the other keeps the analysed input's size (with
    positive weights a path at the centre of the other axis reaches every pixel of the probed one,
    so a thin input suffices: cost ~ RF x W rather than RF^2)."""
    generator = torch.Generator().manual_seed(0)
    extent, sides, clipped = zip(*(_probe_axis(net, result, axis, generator, dtype, attempts)
                                   for axis in range(len(result.final))))
    return Probe(tuple(extent), tuple(sides), any(clipped), str(dtype).replace("torch.", ""))
