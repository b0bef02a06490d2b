"""The final map's RF measured again, independently of the analysis, by gradient probing."""
import copy
import math

import torch
import torch.nn as nn

from cnnscope.core.rf.axis import Axis
from cnnscope.core.rf.result import Probe, RFResult, UnitCheck
from cnnscope.core.rf.trace import final_map, map_grid, receptive_field, unit_gradient
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
    return max(n, j * math.ceil((axis.window + 2 * j) / j))


def _thin_side(axis: Axis, n: int) -> int:
    """The side of the axis not probed: one final unit wide (a path through any of its columns
    reaches every pixel of the probed axis), the analysed side for a global axis."""
    return n if axis.glob else min(n, max(8, math.ceil(axis.jump)))


def verify_receptive_field(model: nn.Module, result: RFResult, attempts=4) -> Probe:
    """The final map's RF measured by gradient probing, independently of the analysis `result`.

    A copy of the model gets positive weights (biases 0), identity activations, normalisation and
    dropout, average pooling for max pooling, and bounded functions (gates, softmax) fed inputs
    scaled into their unsaturated range; then the support of d(unit) / d(input) on a random positive
    input is the unit's RF: the centre unit's, and where the windows vary over the map (after
    upsampling) those of the units nearest the centre that have each window size, unit by unit. The
    input grows until the centre unit's support is clear of the border. Sampling at data-dependent
    positions (grid_sample, deformable convs) runs at the fixed ones (the identity grid, zero
    offsets), their gradient kept: the probe measures the window the analysis reports beside
    "global". Runs in float64 (deep nets would underflow float32 at the RF's edge), float32 if that
    fails. A probe that cannot run is a CnnscopeError naming why.
    """
    failure = None
    for dtype in (torch.float64, torch.float32):
        try:
            net = copy.deepcopy(model).to(dtype).eval()
            with torch.no_grad():
                for name, p in net.named_parameters():
                    _positive_(name, p)
            return _probe(net, model, result, dtype, attempts)
        except CnnscopeError:
            raise
        except Exception as e:  # e.g. a model that builds float32 constants in its forward
            failure = e
    message = str(failure).strip().splitlines()
    raise CnnscopeError(
        f"The gradient probe of {result.model} could not run: {type(failure).__name__}"
        f"{': ' + message[0][:300] if message else ''}. The analysis does not depend on it: analyse without "
        "verifying."
    )


def _units(axis: Axis, n: int) -> list:
    """The centre unit (the nearest to the centre that sees the input), and for each window size over
    the map the unit nearest the centre that has it (one that sees nothing too, where there is one)."""
    centre = axis.centre_unit(n)
    nearest = {}
    for u in sorted(range(n), key=lambda u: (abs(u - centre), u)):
        window = axis.unit_window(u)
        nearest.setdefault(None if window is None else round(window[1] - window[0]), u)
    return sorted({centre, *list(nearest.values())[:8]})


def _check_units(net, analysis: RFResult, axis, x):
    """UnitCheck of the sampled units along `axis`, in the centre row (or column) of the other."""
    fmap = final_map(net, x, analysis, probe=True)
    grid = map_grid(fmap, analysis.final_layout)
    a, side = analysis.final[axis], x.shape[2 + axis]
    centres = [b.centre_unit(g) for b, g in zip(analysis.final, grid)]
    checks = []
    for u in _units(a, grid[axis]):
        unit = list(centres)
        unit[axis] = u
        grad = unit_gradient(fmap, x, analysis.final_layout, unit, retain_graph=True)
        if not torch.isfinite(grad).all():  # overflow in the probe's forward: its support means nothing
            raise FloatingPointError(f"the probe's gradient of unit {unit} is not finite")
        hits = (grad[0].abs().sum(0) > 0).any(dim=1 - axis).nonzero().flatten().tolist()
        window = (0, side - 1) if a.glob else a.unit_window(u)
        expected = (0, -1) if window is None else (max(0, round(window[0])), min(side - 1, round(window[1])))
        checks.append(UnitCheck(axis, u, expected, (hits[0], hits[-1]) if hits else (0, -1)))
    return checks, centres[axis]


class _OtherNetwork(Exception):
    """The model at the probe's input size is not the network analysed: its layers depend on the size."""


def _analysed_at(model, result: RFResult, shape) -> RFResult:
    """The analysis at the probe's input `shape` (the windows may depend on the size), which must be
    the same network: the same layers in the same order."""
    if shape == result.input_shape:
        return result
    analysis = receptive_field(model, shape)
    if analysis.unknown or [(l.name, l.op) for l in analysis.layers] != [(l.name, l.op) for l in result.layers]:
        raise _OtherNetwork(f"at a {'x'.join(map(str, shape))} input the model runs other layers than at the analysed "
                            f"{'x'.join(map(str, result.input_shape))}")
    return analysis


def _grown(net, model, result: RFResult, axis, sides, generator, dtype, attempts):
    """(checks, centre extent, input side, clipped) along `axis`, the input `sides` (probed, other) at
    first, the probed side grown until the centre unit's support is clear of the border (while the
    model stays the network analysed)."""
    a, (side, other) = result.final[axis], sides
    done = None
    for attempt in range(attempts):
        size = [0, 0]
        size[axis], size[1 - axis] = side, other
        shape = (result.input_shape[0], *size)
        x = (torch.rand(1, *shape, generator=generator, dtype=dtype) + 0.5).requires_grad_()
        try:
            analysis = _analysed_at(model, result, shape)
            checks, centre = _check_units(net, analysis, axis, x)
        except Exception:  # another network at this size, or none (a model for one input size only)
            if done is None:
                raise
            return done  # the input grown so far, clipped
        lo, hi = next(c.probe for c in checks if c.unit == centre)
        touches = not a.glob and hi >= lo and (lo == 0 or hi == side - 1)  # may be clipped: grow and retry
        done = checks, hi - lo + 1, side, touches
        window = analysis.final[axis].unit_window(centre)
        if not touches or (analysis.size_dependent and window and (window[0] <= 0 or window[1] >= side - 1)):
            break  # clear of the border, or windows that grow with the input (adaptive pooling) reach it anyway
        side = _probe_side(Axis(0, 2 * side, a.jump), side)
    return done


def _probe_axis(net, model, result: RFResult, axis, generator, dtype, attempts):
    """(checks, centre extent, input side, clipped) along `axis` (0: H, 1: W). The other axis is one
    final unit wide; where the model cannot run that thin, or runs other layers at that size, it is
    the analysed side, and where growing the probed axis changes the layers too, the analysed input."""
    n, other = result.input_shape[1 + axis], result.input_shape[2 - axis]
    side = _probe_side(result.final[axis], n)
    plans = dict.fromkeys([(side, _thin_side(result.final[1 - axis], other)), (side, other), (n, other)])
    for i, sides in enumerate(plans):
        try:
            return _grown(net, model, result, axis, sides, generator, dtype, attempts)
        except Exception:
            if i == len(plans) - 1:
                raise


def _probe(net, model, result: RFResult, dtype, attempts) -> Probe:
    """One axis at a time: the probed axis grows, the other is thin (cost ~ RF x a few jumps rather than RF^2)."""
    generator = torch.Generator().manual_seed(0)
    checks, extent, sides, clipped = zip(*(_probe_axis(net, model, result, axis, generator, dtype, attempts)
                                           for axis in range(2)))
    return Probe(tuple(extent), tuple(sides), any(clipped), str(dtype).replace("torch.", ""),
                 units=tuple(c for axis_checks in checks for c in axis_checks))
