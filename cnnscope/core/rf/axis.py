"""What a tensor's unit 0 sees of the input along one axis, how a sliding window changes it, and how
per-axis figures are shown (a number when H and W agree, "HxW" otherwise, "global")."""
import math
from typing import NamedTuple

INF = math.inf


class Axis(NamedTuple):
    """Unit u of a map sees input pixels [lo + u*jump, hi + u*jump] along this axis (its local
    window) and, when `glob`, the whole input as well, through a global path such as a
    squeeze-excitation gate or a softmax over H."""

    lo: float
    hi: float
    jump: float
    glob: bool = False

    @property
    def window(self):
        """Size of the local window."""
        return self.hi - self.lo + 1

    @property
    def rf(self):
        return INF if self.glob else self.window

    @property
    def centre(self):
        return (self.lo + self.hi) / 2


PIXEL = Axis(0, 0, 1)
# (H, W) metadata of a pooled tensor: global pooling, flattened maps and everything computed from them
GLOBAL = (Axis(-INF, INF, INF, True), Axis(-INF, INF, INF, True))


def sliding_window(axis: Axis, k, s, p, d) -> Axis:
    """A sliding window (conv or pool): kernel k, stride s, p padding before the first pixel, dilation d."""
    span = d * (k - 1)
    return Axis(axis.lo - p * axis.jump, axis.hi + (span - p) * axis.jump, axis.jump * s, axis.glob)


def transposed_window(axis: Axis, k, s, p, d) -> Axis:
    """A transposed conv: output unit o gathers input units in [(o + p - d(k-1))/s, (o + p)/s]."""
    j = axis.jump
    return Axis(axis.lo + (p - d * (k - 1)) * j / s, axis.hi + p * j / s, j / s, axis.glob)


# ---- number formatting ----------------------------------------------------------------------------

def show_number(v):
    """An int where the value is whole, "global" for infinity, else 3 decimals."""
    if v == INF:
        return "global"
    if float(v).is_integer():
        return int(v)
    return round(float(v), 3)


def show_pair(hw):
    """55, "55x57" (H x W) or "global"."""
    h, w = (show_number(v) for v in hw)
    return h if h == w else f"{h}x{w}"


def json_pair(hw):
    return [show_number(v) for v in hw]
