"""Where H and W sit in a tensor the tracer follows, and how rearrangements move them.

A map need not be N x C x H x W: channels-last blocks permute H and W to the middle (N x H x W x C)
and back, attention flattens them into one token axis (N x C x H*W) and unflattens it again. A
Layout names the positions of H and W counted from the right (-2, -1 for N x C x H x W) and the
grid size; h == w means they are merged into one dimension of H*W units, row-major (tokens),
after `prefix` tokens that are no unit of the grid (a vision transformer's class and register
tokens). The functions below say where a permute, reshape or index puts them (None: they do not survive).
"""
import math
from typing import NamedTuple, Optional

import torch


class Layout(NamedTuple):
    h: int  # position of H, counted from the right (-1 is the last dimension)
    w: int
    grid: tuple  # (H, W) units
    prefix: int = 0  # merged: tokens before the grid's H*W (class and register tokens)

    @property
    def merged(self):
        return self.h == self.w

    @property
    def tokens(self):
        """The length of a merged token dimension."""
        return math.prod(self.grid) + self.prefix

    def fits(self, t) -> bool:
        """Does tensor `t` hold this grid at these positions?"""
        if t.dim() < -min(self.h, self.w):
            return False
        if self.merged:
            return t.shape[self.h] == self.tokens
        return (t.shape[self.h], t.shape[self.w]) == tuple(self.grid)


def default_layout(t) -> Optional[Layout]:
    return Layout(-2, -1, tuple(t.shape[-2:])) if t.dim() >= 2 else None


def is_default(layout: Layout) -> bool:
    return (layout.h, layout.w) == (-2, -1)


def permuted(layout: Layout, ndim, dims) -> Layout:
    """out.permute(dims): output dimension i is input dimension dims[i]."""
    dims = [d % ndim for d in dims]
    h, w = (dims.index(p % ndim) - ndim for p in (layout.h, layout.w))
    return layout._replace(h=h, w=w)


def moved(ndim, source, destination) -> list:
    """The permutation that torch.movedim(x, source, destination) applies."""
    source = [s % ndim for s in (source if isinstance(source, (list, tuple)) else (source,))]
    destination = [d % ndim for d in (destination if isinstance(destination, (list, tuple)) else (destination,))]
    order = [None] * ndim
    for s, d in zip(source, destination):
        order[d] = s
    rest = iter(i for i in range(ndim) if i not in source)
    return [o if o is not None else next(rest) for o in order]


def _prefixes(shape):
    return [math.prod(shape[:i]) for i in range(len(shape))]


def reshaped(layout: Layout, before, after):
    """Where a view/reshape from shape `before` to `after` puts H and W: a Layout, "collapse" when H and W
    are flattened together with other dimensions (x.flatten(1)), or None (split apart)."""
    before, after = tuple(before), tuple(after)
    if before == after:
        return layout
    p_in, p_out, n_in, n_out = _prefixes(before), _prefixes(after), len(before), len(after)

    def find(position, sizes):  # the output dimensions, from `position` on, that start where input dim `position` does
        start = p_in[n_in + position]
        found = [j - n_out for j in range(n_out - len(sizes) + 1)
                 if p_out[j] == start and after[j:j + len(sizes)] == tuple(sizes)]
        # dimensions of size 1 make several places fit: the one as far from the right as before
        return position if position in found else (found[0] if found else None)

    H, W = layout.grid
    if layout.merged:
        split = find(layout.h, (H, W)) if not layout.prefix else None
        if split is not None and n_out > n_in:  # an unflatten (where H*W == 1 either would fit)
            return layout._replace(h=split, w=split + 1)
        j = find(layout.h, (layout.tokens,))
        if j is not None:
            return layout._replace(h=j, w=j)
        return None if split is None else layout._replace(h=split, w=split + 1)
    h, w = find(layout.h, (H,)), find(layout.w, (W,))
    if h is not None and w is not None and (w > h or W == 1 or H == 1):
        return layout._replace(h=h, w=w)
    if layout.w == layout.h + 1:
        j = find(layout.h, (H * W,))
        if j is not None:
            return layout._replace(h=j, w=j)
        start, end = p_in[n_in + layout.h], p_in[n_in + layout.h] * H * W  # H and W inside one output dim
        if any(p_out[j] <= start and end <= p_out[j] * after[j] for j in range(n_out)):
            return "collapse"
    return None


def _expanded(index, ndim) -> list:
    """An index tuple with its Ellipsis written out and missing trailing slices added."""
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        expanded += [slice(None)] * (ndim - used) if i is Ellipsis else [i]
    return expanded + [slice(None)] * (ndim - sum(1 for i in expanded if i is not None))


def indexed(layout: Layout, shape, index):
    """x[index] -> (Layout, ((start, step) along H, (start, step) along W)); "prefix" when it keeps only
    prefix tokens (a class token: what it sees is a pooling of the map); None when the index does
    not keep H and W as (strided) windows (integers or tensors on them, part of a merged grid)."""
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list)) or i is True or i is False for i in index):
        return None
    ndim = len(shape)
    if layout.merged:
        return _tokens_indexed(layout, shape, _expanded(index, ndim))
    expanded = _expanded(index, ndim)
    positions, cuts, grid = {}, {}, {}
    dim = out = 0
    for i in expanded:
        if i is None:
            out += 1
            continue
        spatial = dim - ndim in (layout.h, layout.w)
        if isinstance(i, slice):
            if spatial:
                start, stop, step = i.indices(shape[dim])
                positions[dim - ndim], cuts[dim - ndim] = out, (start, step)
                grid[dim - ndim] = len(range(start, stop, step))
            out += 1
        elif spatial:
            return None  # an integer on H or W
        dim += 1
    h, w = positions[layout.h] - out, positions[layout.w] - out
    return Layout(h, w, (grid[layout.h], grid[layout.w])), (cuts[layout.h], cuts[layout.w])


def _tokens_indexed(layout: Layout, shape, expanded):
    """indexed() of a merged token dimension: all its tokens, the grid's (past the prefix), or only
    prefix tokens."""
    ndim, out, dim = len(shape), 0, 0
    for i in expanded:
        if i is None:
            out += 1
            continue
        if dim - ndim == layout.h:
            if not isinstance(i, slice):
                return "prefix" if i % shape[dim] < layout.prefix else None
            start, stop, step = i.indices(shape[dim])
            if stop <= layout.prefix:
                return "prefix"
            if step != 1 or stop != shape[dim] or start not in (0, layout.prefix):
                return None
            position, prefix = out, layout.prefix - start
        out += 1 if isinstance(i, slice) else 0
        dim += 1
    j = position - out
    return layout._replace(h=j, w=j, prefix=prefix), ((0, 1), (0, 1))
