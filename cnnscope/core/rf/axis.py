"""What a tensor's unit 0 sees of the input along one axis, how a sliding window changes it, and how
per-axis figures are shown (a number when H and W agree, "HxW" otherwise, "global")."""
import math
from typing import NamedTuple

INF = math.inf


class Axis(NamedTuple):
    """Unit u of a map sees input pixels [lo + u*jump, hi + u*jump] along this axis (its local
    window) and, when `glob`, the whole input as well, through a global path such as a
    squeeze-excitation gate or a softmax over H. When `sampled`, the units read the map at positions
    computed from the data (a deformable convolution, grid_sample): they can see any pixel, and the
    window is the one of the fixed (zero) offsets.

    After a transposed conv the units of a map no longer all see the same window: unit u sees
    [lo_r + u*jump, hi_r + u*jump] where r = u mod P, `phases` = ((lo_0, hi_0), ..., (lo_{P-1},
    hi_{P-1})) (None for a phase that sees no input pixel). [lo, hi] is then the hull of the phases
    and `window` the largest of them: the RF is the maximum over the units of the map. A window
    beyond the map (a padded position) is the pattern's continuation. After a roll or a flip no
    pattern repeats: `phases` is then the table of the map's `units` units, and a position beyond
    them sees nothing."""

    lo: float
    hi: float
    jump: float
    glob: bool = False
    phases: tuple = ()
    units: int = 0  # > 0: phases is the table of exactly this many units (no continuation beyond)
    sampled: bool = False

    @property
    def spans(self):
        """(lo_r, hi_r) or None per phase: one phase for a map whose units all see alike."""
        return self.phases or ((self.lo, self.hi),)

    def span(self, u):
        """(lo, hi) that unit u sees, relative to u*jump (None: nothing)."""
        if self.units and not 0 <= u < self.units:
            return None
        return self.spans[u % len(self.spans)]

    @property
    def window(self):
        """Size of the local window (the largest over the units of the map)."""
        if self.phases:
            return round(max((hi - lo + 1 for lo, hi in filter(None, self.phases)), default=0), 6)
        return self.hi - self.lo + 1

    def unit_window(self, u):
        """Input pixels (lo, hi) that unit u sees (None: none)."""
        span = self.span(u)  # whole pixels, but fractional jumps leave float noise
        return None if span is None else (round(span[0] + u * self.jump, 6), round(span[1] + u * self.jump, 6))

    def windows(self, n):
        """The window sizes of units 0 .. n-1 (those that see a pixel)."""
        return [hi - lo + 1 for lo, hi in filter(None, (self.unit_window(u) for u in range(n)))]

    def empty_units(self, n) -> int:
        """How many of units 0 .. n-1 see no input pixel."""
        return sum(self.span(u) is None for u in range(n))

    def centre_unit(self, n) -> int:
        """The unit nearest the centre (n-1)//2 of n units that sees the input (the centre itself
        unless it sees nothing: a transposed conv with stride and dilation leaves such units)."""
        centre = (n - 1) // 2
        return min((u for u in range(n) if self.span(u) is not None), key=lambda u: (abs(u - centre), u),
                   default=centre)

    @property
    def rf(self):
        return INF if self.glob or self.sampled else self.window

    @property
    def centre(self):
        return (self.lo + self.hi) / 2

    def hull(self) -> "Axis":
        """The same bound with one window for every unit (for ops that do not follow phases)."""
        return self._replace(phases=(), units=0)


def _hull(spans):
    """The union of (lo, hi) spans, None for none."""
    return (min(sp[0] for sp in spans), max(sp[1] for sp in spans)) if spans else None


def _period(spans) -> int:
    n = len(spans)
    return next((q for q in range(1, n + 1) if n % q == 0 and all(spans[r] == spans[r % q] for r in range(n))), n)


def periodic(spans, jump, like: Axis, units=0) -> Axis:
    """An Axis from per-phase windows (unit u sees spans[u mod len(spans)]), with the shortest period
    and the flags (glob, sampled) of `like`; `units` > 0: spans is the table of that many units."""
    if not units:
        spans = spans[:_period(spans)]
    spans = tuple(spans)
    lo, hi = _hull([sp for sp in spans if sp is not None]) or (0, -1)
    return Axis(lo, hi, jump, like.glob, spans if len(spans) > 1 or units else (), units, like.sampled)


def fitted(axis: Axis, n) -> Axis:
    """A unit table cut or extended (by units that see nothing) to the n units of its map."""
    if not axis.units or axis.units == n:
        return axis
    return periodic([axis.span(u) for u in range(n)], axis.jump, axis, n)


PIXEL = Axis(0, 0, 1)
# (H, W) metadata of a pooled tensor: global pooling, flattened maps and everything computed from them
GLOBAL = (Axis(-INF, INF, INF, True), Axis(-INF, INF, INF, True))


def sliding_window(axis: Axis, k, s, p, d) -> Axis:
    """A sliding window (conv or pool): kernel k, stride s, p padding before the first pixel, dilation d.
    Output unit v gathers input units v*s - p + t*d, t in [0, k)."""
    span = d * (k - 1)
    if not axis.phases:
        return axis._replace(lo=axis.lo - p * axis.jump, hi=axis.hi + (span - p) * axis.jump, jump=axis.jump * s)
    if not float(s).is_integer() or not float(p).is_integer():
        return sliding_window(axis.hull(), k, s, p, d)  # phases would not line up: the bounding window
    s, p, j, n = int(s), int(p), axis.jump, len(axis.phases)
    # output phases: v*s mod n repeats with this period; a table: every unit that reads one of it
    outputs = range(max(0, (axis.units - 1 + p) // s + 1)) if axis.units else range(n // math.gcd(n, s))
    spans = [_hull([(sp[0] + (u - v * s) * j, sp[1] + (u - v * s) * j)
                    for u in (v * s - p + t * d for t in range(k)) if (sp := axis.span(u)) is not None])
             for v in outputs]
    return periodic(spans, j * s, axis, len(spans) if axis.units else 0)


def transposed_window(axis: Axis, k, s, p, d) -> Axis:
    """A transposed conv (stride s, padding p, dilation d; output_padding only adds units at the end).

    Input unit i feeds output units o = i*s - p + t*d, t in [0, k): output unit o gathers the input
    units (o + p - t*d)/s that are whole numbers. Which taps those are depends on o mod s, so the
    units of the output do not all see the same window: per axis, the windows of the phases o mod
    (s * the input's period) are followed exactly (Axis.phases), and the RF is their largest. For a
    plain input of window w and jump j, the phase with the most taps sees ceil(k/s') input units,
    s' = s/gcd(s, d), consecutive ones d/gcd(s, d) apart, so RF = w + (ceil(k/s') - 1)*(d/gcd(s, d))*j:
    k=2 s=2 adds nothing, k=4 s=2 p=1 adds j (not d*(k-1)*j/s, the hull of the phases). Where s and d
    share a factor, some phases get no tap at all: units that see no input."""
    j, out_jump = axis.jump, axis.jump / s
    outputs = range(max(0, (axis.units - 1) * s - p + (k - 1) * d + 1)) if axis.units else range(len(axis.spans) * s)
    spans = []
    for o in outputs:  # o mod s picks the taps, the input unit's phase repeats every n*s outputs
        got = []
        for t in range(k):
            q, r = divmod(o + p - t * d, s)
            if r == 0 and (sp := axis.span(q)) is not None:
                got.append((sp[0] + q * j - o * out_jump, sp[1] + q * j - o * out_jump))
        spans.append(_hull(got))
    return periodic(spans, out_jump, axis, len(spans) if axis.units else 0)


def resampled(axis: Axis, taps, jump, table=False) -> Axis:
    """Output unit o (jump `jump`) reads input units taps[o] (interpolation, roll, flip): each unit's
    own window, a pattern that repeats where one does (nearest x2: every 2 units, continued beyond
    the map), else a table of the map's units (the border units of bilinear, a roll, a flip: nothing
    continues beyond them, so that a padded conv after them adds nothing made up)."""
    j = axis.jump
    spans = []
    for o, units in enumerate(taps):
        got = [(sp[0] + t * j - o * jump, sp[1] + t * j - o * jump) for t in units if (sp := axis.span(t)) is not None]
        # rounded: a fractional jump (8 -> 12 units: 4/3) leaves float noise that would hide the period
        spans.append(tuple(round(v, 9) for v in _hull(got)) if got else None)
    table = table or axis.units or _period(spans) == len(spans) > 1
    return periodic(spans, jump, axis, len(spans) if table else 0)


def merge_windows(windows, glob) -> Axis:
    """The union of aligned windows (same jump), phase by phase (unit by unit for tables)."""
    sampled = any(a.sampled for a in windows)
    if not any(a.phases for a in windows):
        return Axis(min(a.lo for a in windows), max(a.hi for a in windows), windows[0].jump, glob, sampled=sampled)
    units = max(a.units for a in windows)
    period = units or math.lcm(*(len(a.spans) for a in windows))
    spans = [_hull([sp for a in windows if (sp := a.span(r)) is not None]) for r in range(period)]
    return periodic(spans, windows[0].jump, Axis(0, 0, 0, glob, sampled=sampled), units)


def shifted(axis: Axis, shift) -> Axis:
    """`shift` units added before the first (F.pad; a negative shift crops): unit u' of the output is
    unit u' - shift."""
    if not axis.phases:
        return axis._replace(lo=axis.lo - shift * axis.jump, hi=axis.hi - shift * axis.jump)
    n = axis.units + shift if axis.units else len(axis.phases)
    spans = [None if (sp := axis.span(r - shift)) is None
             else (sp[0] - shift * axis.jump, sp[1] - shift * axis.jump) for r in range(max(n, 0))]
    return periodic(spans, axis.jump, axis, max(n, 0) if axis.units else 0)


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
