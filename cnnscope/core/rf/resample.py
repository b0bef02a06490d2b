"""Which input units each output unit of F.interpolate reads, by PyTorch's own index rules: the units of
an upsampled map do not all see the same window (a bilinear unit that lands on an input unit reads one,
its neighbour two; the border units are clamped)."""
import math


def scale_of(mode, align, n_in, n_out, scale_factor):
    """Input units per output unit, as PyTorch computes it (area_pixel_compute_scale)."""
    if align and mode not in ("nearest", "nearest-exact", "area"):
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return 1.0 / scale_factor if scale_factor else n_in / n_out


def source_taps(mode, align, n_in, n_out, scale) -> list:
    """[input units with a non-zero weight in output unit o] for o in range(n_out)."""
    return [_taps(mode, align, n_in, n_out, scale, o) for o in range(n_out)]


def _taps(mode, align, n_in, n_out, scale, o):
    if mode == "nearest":
        return (o if n_out == n_in else o >> 1 if n_out == 2 * n_in else min(math.floor(o * scale), n_in - 1),)
    if mode == "nearest-exact":
        return (min(math.floor((o + 0.5) * scale), n_in - 1),)
    if mode == "area":  # adaptive average pooling
        return tuple(range(math.floor(o * n_in / n_out), math.ceil((o + 1) * n_in / n_out)))
    cubic = mode == "bicubic"
    src = o * scale if align else (o + 0.5) * scale - 0.5
    if not cubic:
        src = max(src, 0.0)
    first = math.floor(src)
    if not cubic:
        first = min(first, n_in - 1)
    if src - first <= 0:  # on an input unit: its neighbours get weight 0 (and no gradient)
        return (min(max(first, 0), n_in - 1),)
    if cubic:
        return tuple(sorted({min(max(i, 0), n_in - 1) for i in range(first - 1, first + 3)}))
    return (first, first + 1) if first < n_in - 1 else (first,)


def _aa_linear(x):
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _aa_cubic(x, a=-0.5):
    x = abs(x)
    if x < 1.0:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2.0:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def antialiased_taps(mode, n_in, n_out, scale) -> list:
    """[input units with a non-zero weight in output unit o] of interpolate(..., antialias=True), by
    PyTorch's rule (UpSampleKernel.cpp, _compute_weights_aa): when downsampling (scale > 1) the
    filter (triangle for bilinear, Keys cubic for bicubic) is stretched by the scale, so the output
    unit reads scale x as many input units; the support is interp_size/2 * scale around the centre
    scale * (o + 0.5). The same float arithmetic, so that the zero weights are the kernel's."""
    interp_size, filter_fn = (2, _aa_linear) if mode == "bilinear" else (4, _aa_cubic)
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = []
    for o in range(n_out):
        centre = scale * (o + 0.5)
        first = max(int(centre - support + 0.5), 0)
        size = min(int(centre + support + 0.5), n_in) - first
        taps.append(tuple(first + j for j in range(size) if filter_fn((j + first - centre + 0.5) * invscale) != 0.0))
    return taps
