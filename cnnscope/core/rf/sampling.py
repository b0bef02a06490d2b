"""The tracer's handling of operations whose output units read other positions of the map than their
own: padding (a circular one wraps around), shifts and mirrors (roll, flip), rows or columns picked
by an index (index_select), running sums along H or W (cumsum), interpolation (its
antialiased form included) and adaptive pooling, and sampling at positions computed from the data
(grid_sample, deformable convolutions).

Each gives every output unit the input units it reads (resample.py), so that the units' windows are
followed one by one where they differ (axis.resampled). A roll or a flip leaves a table of the map's
own units: a position beyond them (padding) sees nothing.
"""
from cnnscope.core.rf.axis import GLOBAL, resampled, shifted, sliding_window
from cnnscope.core.rf.layout import is_default
from cnnscope.core.rf.ops import CUMULATIVE, arg
from cnnscope.core.rf.resample import antialiased_taps, scale_of, source_taps
from cnnscope.core.runtime import pair

MOVES = {"roll", "flip", "fliplr", "flipud", "index_select", *CUMULATIVE}
SAMPLING = {*MOVES, "pad", "interpolate", "upsample", "grid_sample", "deform_conv2d",
            "adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}


def _dims(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


class Sampling:
    """Mixed into the Tracer (it supplies layout, set, record, collapse, unknown, window, merge_axis)."""

    def sample(self, name, args, kwargs, inputs, outs, index):
        x, meta = inputs[0]
        if meta is GLOBAL or x is not arg(args, kwargs, 0, "input"):
            self.unknown(name, inputs, outs)  # the map is not the one sampled, or it is pooled already
        elif name in MOVES:
            self.move(name, args, kwargs, x, meta, outs)
        elif name == "pad":
            self.pad(args, kwargs, inputs, outs)
        elif not is_default(self.layout(x)):
            self.unknown(name, inputs, outs)  # the others read N x C x H x W only
        elif name.startswith("adaptive"):
            self.adaptive_pool(name, x, meta, outs, index)
        elif name in ("interpolate", "upsample"):
            self.interpolate(name, args, kwargs, x, meta, outs)
        elif name == "grid_sample":
            self.grid_sample(args, kwargs, inputs, outs)
        else:
            self.deform_conv(args, inputs, outs)

    def move(self, name, args, kwargs, x, meta, outs):
        """Units that read other units of the same axis: roll (unit o reads (o - shift) mod n), flip
        (n-1-o), index_select (index[o]), cumsum and the other running reductions (units 0 .. o)."""
        ndim, lay = x.dim(), self.layout(x)
        if name == "roll":
            dims = arg(args, kwargs, 2, "dims")
            if dims is None or dims == []:
                self.unknown(name, [(x, meta)], outs)  # a roll of the flattened tensor
                return
            shifts = _dims(arg(args, kwargs, 1, "shifts"))
            taps = {d % ndim: (lambda n, s=s: [((o - s) % n,) for o in range(n)]) for s, d in zip(shifts, _dims(dims))}
        elif name == "index_select":  # the index's values are read only where it picks along H or W
            index = arg(args, kwargs, 2, "index")
            taps = {arg(args, kwargs, 1, "dim") % ndim: lambda n: [(i,) for i in self.read_values(index)]}
        elif name in CUMULATIVE:
            taps = {arg(args, kwargs, 1, "dim") % ndim: lambda n: [tuple(range(o + 1)) for o in range(n)]}
        else:
            dims = {"fliplr": [1], "flipud": [0]}.get(name) or _dims(arg(args, kwargs, 1, "dims"))
            taps = {d % ndim: lambda n: [(n - 1 - o,) for o in range(n)] for d in dims}
        positions = (lay.h % ndim, lay.w % ndim)
        if lay.merged and positions[0] in taps:
            self.unknown(name, [(x, meta)], outs)  # along the tokens: H and W mixed
            return
        new, grid = list(meta), list(lay.grid)
        for axis, position in enumerate(positions):
            if position in taps:
                per_unit = taps[position](lay.grid[axis])
                new[axis] = resampled(meta[axis], per_unit, meta[axis].jump, table=True)
                grid[axis] = len(per_unit)
        out_lay = lay._replace(grid=tuple(grid))
        if not all(out_lay.fits(t) for t in outs):
            self.unknown(name, [(x, meta)], outs)
        elif new != list(meta):
            self.size_dependent |= name not in CUMULATIVE  # the seam of a roll, the mirror's axis: at the map's size
            self.record(name, x, meta, tuple(new), outs, k=(1, 1), s=(1, 1), d=(1, 1), p=(0, 0), layout=out_lay)
        else:
            self.set(outs, meta, lay)  # over channels or the batch

    def pad(self, args, kwargs, inputs, outs):
        """F.pad (H and W wherever they are): units added before the first; a circular pad wraps the
        map around (a table)."""
        x, meta = inputs[0]
        lay, pads = self.layout(x), list(arg(args, kwargs, 1, "pad")) + [0] * 2 * x.dim()
        before = [pads[2 * (-p - 1)] for p in (lay.h, lay.w)]  # the last dimension's first
        if lay.merged:  # tokens added before the grid's are prefix tokens
            if pads[2 * (-lay.h - 1) + 1] or before[0] < 0 or arg(args, kwargs, 2, "mode", "constant") != "constant":
                self.unknown("pad", inputs, outs)
            else:
                self.set(outs, meta, lay._replace(prefix=lay.prefix + before[0]))
            return
        new_lay = lay._replace(grid=(outs[0].shape[lay.h], outs[0].shape[lay.w]))
        if arg(args, kwargs, 2, "mode", "constant") != "circular":
            self.set(outs, tuple(shifted(a, shift) for a, shift in zip(meta, before)), new_lay)
            return
        self.size_dependent = True  # where the map wraps around
        new = tuple(resampled(a, [((o - b) % n,) for o in range(m)], a.jump, table=True)
                    for a, b, n, m in zip(meta, before, lay.grid, new_lay.grid))
        self.record("pad", x, meta, new, outs, k=(1, 1), s=(1, 1), d=(1, 1), p=tuple(before), layout=new_lay)

    def adaptive_pool(self, op, x, meta, outs, index):
        """Unit o pools input units floor(o*n/m) .. ceil((o+1)*n/m) - 1: a uniform window where m divides
        n, else windows of whole pixels that differ from unit to unit."""
        size, out_size = tuple(x.shape[-2:]), tuple(outs[0].shape[-2:])
        if out_size == (1, 1):
            self.collapse(x, meta, outs, index)
            return
        self.size_dependent = True
        if not any(n % m for n, m in zip(size, out_size)):
            k = tuple(n // m for n, m in zip(size, out_size))
            self.window(op, x, meta, outs, k, k, 0, 1)
            return
        taps = [source_taps("area", False, n, m, None) for n, m in zip(size, out_size)]
        new = tuple(resampled(a, t, a.jump * n / m) for a, t, n, m in zip(meta, taps, size, out_size))
        self.record(op, x, meta, new, outs, k=tuple(max(map(len, t)) for t in taps),
                    s=tuple(n / m for n, m in zip(size, out_size)), d=(1, 1), p=(0, 0))

    def interpolate(self, op, args, kwargs, x, meta, outs):
        """Each output unit gets the windows of the input units it reads (resample.py)."""
        mode = arg(args, kwargs, 3, "mode", "nearest")
        align = bool(arg(args, kwargs, 4, "align_corners"))
        antialias = bool(arg(args, kwargs, 6, "antialias")) and mode in ("bilinear", "bicubic")
        factors = arg(args, kwargs, 2, "scale_factor")
        if arg(args, kwargs, 5, "recompute_scale_factor") or factors is None:
            factors = (None, None)
        self.size_dependent = True  # by size, or align_corners: the windows depend on the map's size
        new, s, k = [], [], []
        for a, n, m, factor in zip(meta, x.shape[-2:], outs[0].shape[-2:], pair(factors)):
            scale = scale_of(mode, align, n, m, factor)
            taps = antialiased_taps(mode, n, m, scale) if antialias else source_taps(mode, align, n, m, scale)
            new.append(resampled(a, taps, a.jump * n / m))
            s.append(n / m)
            k.append(max(len(t) for t in taps))
        self.record(op, x, meta, tuple(new), outs, k=tuple(k), s=tuple(s), d=(1, 1), p=(0, 0))

    def grid_sample(self, args, kwargs, inputs, outs):
        """grid_sample(x, grid): the units read x where the grid says, positions that depend on the
        data (or on weights): any pixel. Beside that, the window of the identity grid (no
        displacement, resampled to the output's size as interpolate would), joined by what the grid
        itself sees (a grid from pooled features, as in a spatial transformer: the whole input)."""
        x, meta = inputs[0]
        mode = arg(args, kwargs, 2, "mode", "bilinear")
        align = bool(arg(args, kwargs, 4, "align_corners"))
        new = tuple(resampled(a, source_taps(mode, align, n, m, scale_of(mode, align, n, m, None)), a.jump * n / m)
                    for a, n, m in zip(meta, x.shape[-2:], outs[0].shape[-2:]))
        self.sampled("grid_sample", x, meta, new, outs, inputs[1:], k=(1, 1), s=(1, 1), d=(1, 1), p=(0, 0))

    def deform_conv(self, args, inputs, outs):
        """torchvision's deform_conv2d(input, weight, offset, mask, bias, stride_h, stride_w, pad_h,
        pad_w, dil_h, dil_w, ...): each tap reads the input at its place plus an offset computed from
        the data: any pixel. Beside that, the window of zero offsets (the plain convolution), joined
        by what the offsets and the mask see."""
        x, meta = inputs[0]
        k, s, p, d = tuple(args[1].shape[-2:]), args[5:7], args[7:9], args[9:11]
        new = tuple(sliding_window(a, *w) for a, w in zip(meta, zip(k, s, p, d)))
        self.sampled("deform_conv2d", x, meta, new, outs, inputs[1:], k=k, s=s, d=d, p=p)

    def sampled(self, op, x, meta, new, outs, others, **window):
        """Record `new` (the fixed-offset window) joined by the positions' inputs, marked `sampled`."""
        glob = any(m is GLOBAL for _, m in others)
        spatial = [(t, m) for t, m in others if m is not GLOBAL and self.layout(t)]
        axes = list(new)
        for t, m in spatial:
            if tuple(self.layout(t).grid) != tuple(outs[0].shape[-2:]):
                self.unknown(op, [(x, meta), (t, m)], outs)
                return
            axes = [self.merge_axis(op, i, [axes[i], m[i]], False) for i in (0, 1)]
        axes = tuple(a._replace(glob=a.glob or glob, sampled=True) for a in axes)
        self.record(op, x, meta, axes, outs, **window)
