"""What a tensor's unit 0 sees of the input along one axis, how a sliding window changes it, and how
per-axis figures are shown (a number when H and W agree, "HxW" otherwise, "global")."""
import math
from typing import NamedTuple

INF = math.inf


class Axis(NamedTuple):
    """Unit u of a map sees input pixels [lo + u*jump, hi + u*jump] along this axis (its local
    window) and, when `glob`, the whole input as well, through a global path such as a
    squeeze-excitation gate or a softmax over H.

    After a transposed conv the units of a map no longer all see the same window: unit u sees
    [lo_r + u*jump, hi_r + u*jump] where r = u mod P, `phases` = ((lo_0, hi_0), ..., (lo_{P-1},
    hi_{P-1})) (None for a phase that sees no input pixel). [lo, hi] is then the hull of the phases
    and `window` the largest of them: the RF is the maximum over the units of the map."""

    lo: float
    hi: float
    jump: float
    glob: bool = False
    phases: tuple = ()

    @property
    def spans(self):
        """(lo_r, hi_r) or None per phase: one phase for a map whose units all see alike."""
        return self.phases or ((self.lo, self.hi),)

    @property
    def window(self):
        """Size of the local window (the largest over the units of the map)."""
        if self.phases:
            return round(max(hi - lo + 1 for lo, hi in filter(None, self.phases)), 6)
        return self.hi - self.lo + 1

    def unit_window(self, u):
        """Input pixels (lo, hi) that unit u sees (None: none)."""
        span = self.spans[u % len(self.spans)]  # whole pixels, but fractional jumps leave float noise
        return None if span is None else (round(span[0] + u * self.jump, 6), round(span[1] + u * self.jump, 6))

    def windows(self, n):
        """The window sizes of units 0 .. n-1 (those that see a pixel)."""
        return [hi - lo + 1 for lo, hi in filter(None, (self.unit_window(u) for u in range(n)))]

    @property
    def rf(self):
        return INF if self.glob else self.window

    @property
    def centre(self):
        return (self.lo + self.hi) / 2

    def hull(self) -> "Axis":
        """The same bound with one window for every unit (for ops that do not follow phases)."""
        return self._replace(phases=())


def periodic(spans, jump, glob=False) -> Axis:
    """An Axis from per-phase windows (unit u sees spans[u mod len(spans)]), with the shortest period."""
    n = len(spans)
    period = next(q for q in range(1, n + 1) if n % q == 0 and all(spans[r] == spans[r % q] for r in range(n)))
    spans = tuple(spans[:period])
    seen = [sp for sp in spans if sp is not None]
    lo, hi = min(sp[0] for sp in seen), max(sp[1] for sp in seen)
    return Axis(lo, hi, jump, glob, spans if period > 1 else ())


PIXEL = Axis(0, 0, 1)
# (H, W) metadata of a pooled tensor: global pooling, flattened maps and everything computed from them
GLOBAL = (Axis(-INF, INF, INF, True), Axis(-INF, INF, INF, True))


def sliding_window(axis: Axis, k, s, p, d) -> Axis:
    """A sliding window (conv or pool): kernel k, stride s, p padding before the first pixel, dilation d.
    Output unit v gathers input units v*s - p + t*d, t in [0, k)."""
    span = d * (k - 1)
    if not axis.phases:
        return Axis(axis.lo - p * axis.jump, axis.hi + (span - p) * axis.jump, axis.jump * s, axis.glob)
    if not float(s).is_integer() or not float(p).is_integer():
        return sliding_window(axis.hull(), k, s, p, d)  # phases would not line up: the bounding window
    s, p, j, n = int(s), int(p), axis.jump, len(axis.phases)
    spans = []
    for v in range(n // math.gcd(n, s)):  # output phases: v*s mod n repeats with this period
        got = [(sp[0] + (u - v * s) * j, sp[1] + (u - v * s) * j)
               for u in (v * s - p + t * d for t in range(k)) if (sp := axis.phases[u % n]) is not None]
        spans.append((min(g[0] for g in got), max(g[1] for g in got)) if got else None)
    return periodic(spans, j * s, axis.glob)


def transposed_window(axis: Axis, k, s, p, d) -> Axis:
    """A transposed conv (stride s, padding p, dilation d; output_padding only adds units at the end).

    Input unit i feeds output units o = i*s - p + t*d, t in [0, k): output unit o gathers the input
    units (o + p - t*d)/s that are whole numbers. Which taps those are depends on o mod s, so the
    units of the output do not all see the same window: per axis, the windows of the phases o mod
    (s * the input's period) are followed exactly (Axis.phases), and the RF is their largest. For a
    plain input of window w and jump j, the phase with the most taps sees ceil(k/s') input units,
    s' = s/gcd(s, d), consecutive ones d/gcd(s, d) apart, so RF = w + (ceil(k/s') - 1)*(d/gcd(s, d))*j:
    k=2 s=2 adds nothing, k=4 s=2 p=1 adds j (not d*(k-1)*j/s, the hull of the phases)."""
    spans_in, j = axis.spans, axis.jump
    n, out_jump = len(spans_in), axis.jump / s
    spans = []
    for o in range(n * s):  # o mod s picks the taps, the input unit's phase repeats every n*s outputs
        got = []
        for t in range(k):
            q, r = divmod(o + p - t * d, s)
            if r == 0 and (sp := spans_in[q % n]) is not None:
                got.append((sp[0] + q * j - o * out_jump, sp[1] + q * j - o * out_jump))
        spans.append((min(g[0] for g in got), max(g[1] for g in got)) if got else None)
    return periodic(spans, out_jump, axis.glob)


def resampled(axis: Axis, taps, jump) -> Axis:
    """Output unit o (jump `jump`) reads input units taps[o] (interpolation): each unit's own window,
    the whole map as one period where the pattern does not repeat."""
    spans_in, j, n = axis.spans, axis.jump, len(axis.spans)
    spans = []
    for o, units in enumerate(taps):
        got = [(sp[0] + t * j - o * jump, sp[1] + t * j - o * jump) for t in units if (sp := spans_in[t % n]) is not None]
        # rounded: a fractional jump (8 -> 12 units: 4/3) leaves float noise that would hide the period
        spans.append((round(min(g[0] for g in got), 9), round(max(g[1] for g in got), 9)) if got else None)
    return periodic(spans, jump, axis.glob)


def merge_windows(windows, glob) -> Axis:
    """The union of aligned windows (same jump), phase by phase."""
    if not any(a.phases for a in windows):
        return Axis(min(a.lo for a in windows), max(a.hi for a in windows), windows[0].jump, glob)
    period = math.lcm(*(len(a.spans) for a in windows))
    spans = []
    for r in range(period):
        got = [sp for a in windows if (sp := a.spans[r % len(a.spans)]) is not None]
        spans.append((min(g[0] for g in got), max(g[1] for g in got)) if got else None)
    return periodic(spans, windows[0].jump, glob)


def shifted(axis: Axis, shift) -> Axis:
    """`shift` units added before the first (F.pad): unit u' of the output is unit u' - shift."""
    if not axis.phases:
        return axis._replace(lo=axis.lo - shift * axis.jump, hi=axis.hi - shift * axis.jump)
    n = len(axis.phases)
    spans = [None if (sp := axis.phases[(r - shift) % n]) is None
             else (sp[0] - shift * axis.jump, sp[1] - shift * axis.jump) for r in range(n)]
    return periodic(spans, axis.jump, axis.glob)


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
