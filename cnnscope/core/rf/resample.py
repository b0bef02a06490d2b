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
