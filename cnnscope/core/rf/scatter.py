"""Maps whose H and W the layout does not follow: cut into windows or patches by a view (Swin's window
partition, a patch embedding by reshape, a space-to-depth stem), attended within each window, and
put back together.

Such a tensor carries, per element, the units of the grid it was cut from that the element sees:
rows [row_lo, row_hi] and columns [col_lo, col_hi], four integer tensors of its shape (Scattered).
Operations that only move data (views, permutes, slices, rolls, pads, concatenations) are applied to
them as they are to the tensor; elementwise ops take the union of their operands' ranges, and a
contraction (a linear layer, a matmul, attention) or a reduction the union over what it sums.

After every operation the ranges are tested for a grid again: two dimensions (or one of tokens)
such that the rows an element sees depend on its index along one only, the columns on the other.
Then the tensor is a map once more, each of its units seeing the union of the windows of the units
of the old grid in its ranges (axis.resampled): the windows are followed exactly, and the tracer
goes on with a Layout.
"""
from typing import NamedTuple

import torch

from cnnscope.core.rf.axis import GLOBAL, resampled
from cnnscope.core.rf.layout import Layout
from cnnscope.core.rf.ops import DIM_DEFAULT, DIM_OPS, DIM_POSITION, ELEMENTWISE, arg, tensors
from cnnscope.core.rf.rearrange import ATTENTION, _equation
from cnnscope.core.rf.result import UnknownOp

NOTHING = (2 ** 30, -1)  # (lo, hi) of an element that sees no unit (padding, a class token)
# Operations that only move data: applied to the ranges as to the tensor
MOVING = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "permute",
          "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "contiguous", "clone", "getitem", "select",
          "narrow", "chunk", "split", "unbind", "tensor_split", "split_with_sizes", "expand", "expand_as",
          "broadcast_to", "repeat", "tile", "roll", "flip", "index_select", "detach", "pad", "unfold"}
# ... and those that change only the dtype or the device: the ranges stay
CASTS = {"to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu", "cuda", "requires_grad"}


class Scattered(NamedTuple):
    """Per element of a tensor, the units of `axes`' grid it sees: (row_lo, row_hi, col_lo, col_hi)."""

    axes: tuple  # (Axis H, Axis W) of the grid the ranges index
    grid: tuple  # (H, W) of that grid
    ranges: tuple  # four integer tensors of the tensor's shape
    origin: object  # result.UnknownOp: the cut, for a result that never becomes a map again


def scattered(layout: Layout, meta, t, origin=None) -> Scattered:
    """The ranges of a map with `layout`: each element sees its own unit (prefix tokens none)."""
    H, W = layout.grid
    ndim = t.dim()

    def along(values, position):  # values along dimension `position`, broadcast over the others
        shape = [1] * ndim
        shape[position] = -1
        return values.view(shape).expand(t.shape).contiguous()

    if layout.merged:
        token = torch.arange(t.shape[layout.h]) - layout.prefix
        row, col = token.div(W, rounding_mode="floor"), token % W
        row, col = (torch.where(token >= 0, v, -1) for v in (row, col))
        rows, cols = along(row, layout.h), along(col, layout.h)
    else:
        rows, cols = along(torch.arange(H), layout.h), along(torch.arange(W), layout.w)
    lo = lambda v: torch.where(v >= 0, v, NOTHING[0])  # noqa: E731
    return Scattered(meta, (H, W), (lo(rows), rows, lo(cols), cols), origin)


def _union(ranges_list, shape):
    """Elementwise union of several range tuples, broadcast to `shape`."""
    out = []
    for i in range(4):
        parts = [torch.broadcast_to(r[i], shape) for r in ranges_list]
        reduce = torch.minimum if i % 2 == 0 else torch.maximum
        value = parts[0]
        for p in parts[1:]:
            value = reduce(value, p)
        out.append(value.contiguous())
    return tuple(out)


def reduced(ranges, dims, keepdim):
    """The union over `dims` (amin of the lows, amax of the highs)."""
    if not dims:
        return ranges
    return tuple((r.amin if i % 2 == 0 else r.amax)(dim=tuple(dims), keepdim=keepdim) for i, r in enumerate(ranges))


def moved(func, args, kwargs, ranges, out):
    """`func` applied to each range tensor in place of args[0] (a constant pad fills with NOTHING)."""
    results = []
    for i, r in enumerate(ranges):
        if getattr(func, "__name__", "") == "pad":
            mode = arg(args, kwargs, 2, "mode", "constant")
            value = NOTHING[i % 2] if mode == "constant" else None
            results.append(torch.nn.functional.pad(r, arg(args, kwargs, 1, "pad"), mode, value))
        else:
            results.append(func(r, *args[1:], **kwargs))
    if isinstance(out, torch.Tensor):
        return [tuple(results)]
    return [tuple(parts) for parts in zip(*results)]  # chunk, split, unbind: one per output


def _along(v, p):
    """v reduced to dimension p (amin, amax over the others): its values along p, where they are
    the same across the others; None where they are not."""
    others = tuple(d for d in range(v.dim()) if d != p)
    if not others:
        return v
    low, high = v.amin(others), v.amax(others)
    return low if torch.equal(low, high) else None


def settled(sc: Scattered, shape):
    """(Layout, (Axis H, Axis W)) where the ranges make the tensor a map again (see the module doc),
    else None. Rows and columns along two dimensions (the last two preferred, then those along which
    they vary), else along one of tokens, row-major after tokens that see nothing."""
    ndim = len(shape)
    per_dim = {p: [_along(v, p) for v in sc.ranges] for p in range(ndim)}
    rows = [p for p in range(ndim) if all(v is not None for v in per_dim[p][:2])]
    cols = [p for p in range(ndim) if all(v is not None for v in per_dim[p][2:])]
    varies = lambda p, i: bool((per_dim[p][i] != per_dim[p][i][:1]).any())  # noqa: E731
    pairs = [(p, q) for p in rows for q in cols if p != q]
    if pairs:
        p, q = max(pairs, key=lambda pq: (varies(pq[0], 0) + varies(pq[1], 2), pq == (ndim - 2, ndim - 1), -pq[0]))
        layout = Layout(p - ndim, q - ndim, (shape[p], shape[q]))
        return layout, _axes(sc, [per_dim[p][:2], per_dim[q][2:]])
    for p in (d for d in rows if d in cols):
        tokens = _tokens(per_dim[p])
        if tokens is not None:
            prefix, (H, W), ranges = tokens
            return Layout(p - ndim, p - ndim, (H, W), prefix), _axes(sc, ranges)
    return None


def _tokens(ranges):
    """(prefix, (H, W), [(row lo, hi per row), (col lo, hi per column)]) of a dimension of tokens
    whose rows depend on t // W and columns on t % W after `prefix` tokens that see nothing."""
    rlo, rhi, clo, chi = ranges
    prefix = int((rlo > rhi).long().cumprod(0).sum())
    n = len(rlo) - prefix
    for W in sorted((w for w in range(1, n + 1) if n % w == 0), key=lambda w: abs(w * w - n)):
        H = n // W
        grid = [v[prefix:].view(H, W) for v in ranges]
        if all(torch.equal(g, g[:, :1].expand(H, W)) for g in grid[:2]) and all(
                torch.equal(g, g[:1].expand(H, W)) for g in grid[2:]):
            return prefix, (H, W), [(grid[0][:, 0], grid[1][:, 0]), (grid[2][0], grid[3][0])]
    return None


def _axes(sc, ranges):
    """The axes of a settled map: unit i sees the old grid's units lo[i] .. hi[i] along each axis;
    where every unit sees all of them (attention over all the tokens), the whole input: global."""
    axes = []
    for axis, (lo, hi) in enumerate(ranges):
        taps = [tuple(range(a, b + 1)) for a, b in zip(lo.tolist(), hi.tolist())]
        old, n = sc.axes[axis], sc.grid[axis]
        new = resampled(old, taps, old.jump * n / len(taps))
        whole = n > 1 and all(t and t[0] == 0 and t[-1] == n - 1 for t in taps)
        axes.append(new._replace(glob=new.glob or whole))
    return tuple(axes)


def with_glob(sc: Scattered, glob) -> Scattered:
    return sc._replace(axes=tuple(a._replace(glob=a.glob or glob) for a in sc.axes)) if glob else sc



class Scattering:
    """Mixed into the Tracer (it supplies meta, layout, set, handle, where, raw_layers)."""

    def enter(self, name, func, args, kwargs, x, meta, outs):
        """A view or reshape that cuts H or W apart (windows, patches): follow the ranges."""
        origin = UnknownOp(name, self.where(), len(self.raw_layers) + 1,
                           f"cuts the map {tuple(x.shape)} into {[tuple(o.shape) for o in outs]}, never put back "
                           "into a grid the analysis can follow")
        sc = scattered(self.layout(x), meta, x, origin)
        for out, ranges in zip(outs, moved(func, args, kwargs, sc.ranges, outs[0] if len(outs) == 1 else outs)):
            self.set([out], sc._replace(ranges=ranges))

    def scatter(self, name, func, args, kwargs, inputs, outs, index):
        """An operation on a scattered tensor: followed on the ranges (see the module doc) where it is
        one of those and its other inputs share the grid; else its inputs are put back into maps
        (settled) and it is handled as on any map; unknown from the cut on where one cannot be."""
        base = next(m for _, m in inputs if isinstance(m, Scattered))
        ranges = {id(t): self._ranges(m, t, base) for t, m in inputs}
        results = None
        if all(r is not False for r in ranges.values()) and not _collapses(name, args, outs):
            try:
                results = self._scattered_results(name, func, args, kwargs, ranges, outs)
            except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
                results = None  # what the op does to integer ranges is not what it does to the map
        if results and len(results) == len(outs):
            glob = any(m is GLOBAL for _, m in inputs)
            for out, r in zip(outs, results):
                self.set([out], with_glob(base._replace(ranges=r), glob))
            return
        maps = []
        for t, m in inputs:
            if isinstance(m, Scattered):
                if name == "conv2d" and t is args[0]:  # it sums over the channels (of a group): so may the ranges
                    m = m._replace(ranges=_channel_union(m.ranges, arg(args, kwargs, 6, "groups", 1)))
                grid = settled(m, tuple(t.shape))
                if grid is None:
                    self.set(outs, m.origin)
                    return
                m = grid[1]
                self.set([t], m, grid[0])
            maps.append((t, m))
        self.handle(name, func, args, kwargs, maps, outs, index)

    def _scattered_results(self, name, func, args, kwargs, ranges, outs):
        """The output ranges of a scattered op, one tuple per output; None for an op it is not."""
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        mine = ranges.get(id(x)) if x is not None else None
        if name in CASTS and mine:
            return [mine]
        if name in MOVING and mine:
            return moved(func, args, kwargs, mine, outs[0] if len(outs) == 1 else outs)
        if name in ("cat", "concat", "concatenate", "stack"):
            pieces = [ranges.get(id(t)) or _nothing(t) for t in arg(args, kwargs, 0, "tensors")]
            return [tuple(func([p[i] for p in pieces], *args[1:], **kwargs) for i in range(4))]
        if name in ("linear", "matmul", "bmm", "einsum", *ATTENTION):
            return self._contracted(name, args, kwargs, ranges, outs)
        if name in DIM_OPS and mine:
            return [_dim_reduced(name, args, kwargs, mine, x, out) for out in outs]
        if name in ELEMENTWISE:
            return [_union([r for r in ranges.values() if r], out.shape) for out in outs]
        return None

    def _ranges(self, meta, t, base: Scattered):
        """The ranges of input t on `base`'s grid: None for a global one, False where they cannot be."""
        if isinstance(meta, Scattered):
            return meta.ranges if meta.grid == base.grid and meta.axes == base.axes else False
        if meta is GLOBAL:
            return None
        lay = self.layout(t)
        if lay is None or tuple(lay.grid) != tuple(base.grid) or tuple(meta) != tuple(base.axes):
            return False
        return scattered(lay, meta, t).ranges

    def _contracted(self, name, args, kwargs, ranges, outs):
        """Each output element sees the union, over the summed indices, of what its operands see."""
        spec = _equation(name, args, kwargs)
        if spec is None or len(outs) != 1:
            return None
        equation, operands = spec
        terms, result = equation.split("->")
        shape = outs[0].shape
        parts = []
        for term, t in zip(terms.split(","), operands):
            r = ranges.get(id(t)) if isinstance(t, torch.Tensor) else None
            if not r:
                continue
            if len(set(term)) != len(term):
                return None  # a diagonal
            kept = [c for c in term if c in result]
            r = reduced(r, [i for i, c in enumerate(term) if c not in result], keepdim=False)
            order = sorted(range(len(kept)), key=lambda i: result.index(kept[i]))
            view = [shape[i] if c in kept else 1 for i, c in enumerate(result)]
            parts.append(tuple(v.permute(order).reshape(view) for v in r))
        return [_union(parts, shape)] if parts else None


def _channel_union(ranges, groups):
    """The union over the channels (dimension -3) within each of `groups`: what a conv's output sees."""
    out = []
    for i, r in enumerate(ranges):
        shape = r.shape
        grouped = r.reshape(*shape[:-3], groups, shape[-3] // groups, *shape[-2:])
        union = (grouped.amin if i % 2 == 0 else grouped.amax)(dim=-3, keepdim=True)
        out.append(union.expand(grouped.shape).reshape(shape).contiguous())
    return tuple(out)


def _collapses(name, args, outs) -> bool:
    """A reduction that leaves fewer elements (a global pooling, perhaps): taken on maps, where the
    analysis knows which dimensions are H and W."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    return name in DIM_OPS and x is not None and any(o.numel() < x.numel() for o in outs)


def _nothing(t):
    """The ranges of an element that sees no unit, for a tensor of t's shape."""
    return tuple(torch.full(t.shape, NOTHING[i % 2], dtype=torch.long) for i in range(4))


def _dim_reduced(name, args, kwargs, ranges, x, out):
    """A reduction (or softmax, a normalisation) over `dim`: the union over it."""
    ndim = x.dim()
    dim = arg(args, kwargs, DIM_POSITION.get(name, 1), "dim", DIM_DEFAULT.get(name))
    dims = list(range(ndim)) if dim is None or dim == () else [d % ndim for d in (
        dim if isinstance(dim, (list, tuple)) else (dim,))]
    keep = out.dim() == ndim
    r = reduced(ranges, dims, keepdim=keep)
    return tuple(torch.broadcast_to(v, out.shape).contiguous() for v in r)
