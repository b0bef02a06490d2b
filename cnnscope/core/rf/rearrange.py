"""The tracer's handling of operations that move H and W around (layout.py) or contract over them:
permutes and reshapes (channels-last blocks, token sequences), indexing (strided slices are windows),
linear maps, matmul and einsum (a contraction over H or W mixes the whole axis: global), and
unfold / fold (im2col / col2im) and Tensor.unfold: a hand-written convolution is the convolution it is."""
import math
import string

import torch.nn.functional as F

from cnnscope.core.rf.axis import GLOBAL, merge_windows, sliding_window, transposed_window
from cnnscope.core.rf.layout import Layout, indexed, moved, permuted, reshaped
from cnnscope.core.rf.ops import arg
from cnnscope.core.runtime import pair

ATTENTION = {"scaled_dot_product_attention", "multi_head_attention_forward"}
RESHAPING = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}


def special_name(func, name):
    """F.unfold and F.fold share their names with Tensor.unfold (one dimension) and nothing: im2col, col2im."""
    return {F.unfold: "im2col", F.fold: "col2im"}.get(func, name)


def _equation(name, args, kwargs):
    """matmul, bmm, linear, attention as an einsum equation over their operands -> (equation, operands),
    or None."""
    if name == "einsum":
        operands = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
        return _expand_ellipsis(args[0].replace(" ", ""), operands), list(operands)
    if name in ATTENTION:  # softmax(q k^T) v: the tokens of k and v are summed over
        q, k, v = (arg(args, kwargs, i, key) for i, key in enumerate(("query", "key", "value")))
        if name == "multi_head_attention_forward":  # L x N x E, or L x E unbatched
            return ("lnd,snd,sne->lne" if q.dim() == 3 else "ld,sd,se->le"), [q, k, v]
        batch = string.ascii_letters[:q.dim() - 2]
        return f"{batch}ld,{batch}sd,{batch}se->{batch}le", [q, k, v]
    a, b = args[0], arg(args, kwargs, 1, "weight" if name == "linear" else "other")
    if name == "linear":
        batch = string.ascii_letters[:a.dim() - 1]
        return f"{batch}i,oi->{batch}o", [a, b]
    if a.dim() < 2 or b.dim() < 2:
        return None
    n = max(a.dim(), b.dim()) - 2
    batch = string.ascii_letters[:n]
    return f"{batch[n - (a.dim() - 2):]}ij,{batch[n - (b.dim() - 2):]}jk->{batch}ik", [a, b]


def _expand_ellipsis(equation, operands):
    inputs, _, output = equation.partition("->")
    terms = inputs.split(",")
    if not output and "->" not in equation:
        letters = "".join(terms).replace(".", "")
        output = ("..." if "..." in inputs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    free = [c for c in string.ascii_letters if c not in equation]
    width = max((t.dim() - len(term.replace("...", "")) for t, term in zip(operands, terms) if "..." in term), default=0)
    fill = "".join(free[:width])
    terms = [term.replace("...", fill[width - (t.dim() - len(term.replace("...", ""))):]) for term, t in
             zip(terms, operands)]
    return ",".join(terms) + "->" + output.replace("...", fill)


class Rearranging:
    """Mixed into the Tracer (it supplies meta, layout, set, record, collapse, unknown, enter)."""

    def rearrange(self, name, func, args, kwargs, inputs, outs, index):
        """Handle `name` if it is one of this module's ops; False if not."""
        x, meta = inputs[0]
        if name in RESHAPING and len(outs) == 1:
            new = reshaped(self.layout(x), x.shape, outs[0].shape)
            if new == "collapse":
                self.collapse(x, meta, outs, index)  # H and W flattened with the channels: a classifier's input
            elif new is not None:
                self.set(outs, meta, new)
            else:  # H or W cut apart (windows, patches): followed element by element (scatter.py)
                self.enter(name, func, args, kwargs, x, meta, outs)
        elif name == "getitem" and len(outs) == 1 and (cut := indexed(self.layout(x), x.shape, args[1])):
            if cut == "prefix":  # class tokens: what they see is a pooling of the map (empty: nothing)
                if outs[0].numel():
                    self.collapse(x, meta, outs, index)
                return True
            new, ((h0, hs), (w0, ws)) = cut
            if (h0, hs, w0, ws) == (0, 1, 0, 1):
                self.set(outs, meta, new)
            else:  # a strided slice is a window of one unit: unit v is input unit start + v*step
                after = tuple(sliding_window(a, 1, s, -start, 1) for a, (start, s) in zip(meta, ((h0, hs), (w0, ws))))
                self.record(name, x, meta, after, outs, k=(1, 1), s=(hs, ws), d=(1, 1), p=(-h0, -w0), layout=new)
        elif name in ("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"):
            self.set(outs, meta, permuted(self.layout(x), x.dim(), self._permutation(name, args, kwargs, x.dim())))
        elif name in ("linear", "matmul", "bmm", "einsum", *ATTENTION):
            self.contract(name, args, kwargs, inputs, outs, index)
        elif name in ("im2col", "col2im"):
            self.columns(name, args, kwargs, x, meta, outs)
        elif name == "unfold" and len(outs) == 1:
            self.tensor_unfold(args, kwargs, x, meta, outs)
        else:
            return False
        return True

    @staticmethod
    def _permutation(name, args, kwargs, ndim):
        if name == "permute":
            return args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
        if name in ("movedim", "moveaxis"):
            return moved(ndim, arg(args, kwargs, 1, "source"), arg(args, kwargs, 2, "destination"))
        order = list(range(ndim))
        d0, d1 = (arg(args, kwargs, i, key) % ndim for i, key in ((1, "dim0"), (2, "dim1")))
        order[d0], order[d1] = order[d1], order[d0]
        return order

    def contract(self, name, args, kwargs, inputs, outs, index):
        """A contraction over H or W sees the whole axis; two operands computed from the input
        (attention: queries against keys) see the whole input."""
        spec = _equation(name, args, kwargs)
        if spec is None:
            self.unknown(name, inputs, outs)
            return
        equation, operands = spec
        terms, result = equation.split("->")
        tracked = [(term, t) for term, t in zip(terms.split(","), operands) if id(t) in self.meta]
        kept, metas = None, []
        for term, t in tracked:
            lay, m = self.layout(t), self.meta[id(t)]
            if m is GLOBAL or lay is None:
                continue
            letters = term[t.dim() + lay.h], term[t.dim() + lay.w]
            glob = [c not in result for c in letters]
            metas.append(tuple(a._replace(glob=a.glob or g) for a, g in zip(m, glob)))
            # a contracted axis stays where the contraction puts the other operand's dimension (x @ M)
            h, w = (result.index(c) - len(result) if c in result else term.index(c) - len(term) for c in letters)
            if kept is None and lay._replace(h=h, w=w).fits(outs[0]):
                kept = lay._replace(h=h, w=w)
        if kept is None:  # H and W do not survive: the end of the spatial map
            if metas:
                self.collapse(inputs[0][0], inputs[0][1], outs, index)
            else:
                self.set(outs, GLOBAL)
            return
        mixed = len(tracked) > 1  # both sides depend on the input (queries against keys): the whole input
        axes = tuple(merge_windows([m[i] for m in metas], mixed or any(m[i].glob for m in metas)) for i in (0, 1))
        self.set(outs[:1], axes, kept)
        self.set(outs[1:], GLOBAL)  # attention weights beside the output

    def tensor_unfold(self, args, kwargs, x, meta, outs):
        """x.unfold(dim, size, step): windows along dim, the units of each in a new last dimension (a conv
        by hand: x.unfold(2, k, s).unfold(3, k, s)); along H or W a sliding window, elsewhere pointwise."""
        dim, size, step = (arg(args, kwargs, i, key) for i, key in ((1, "dimension"), (2, "size"), (3, "step")))
        lay, position = self.layout(x), dim % x.dim() - x.dim()
        if lay.merged and position == lay.h:
            self.unknown("unfold", [(x, meta)], outs)
            return
        new = Layout(lay.h - 1, lay.w - 1, lay.grid)  # the new last dimension moves H and W one to the left
        if position not in (lay.h, lay.w):
            self.set(outs, meta, new)
            return
        axis = 0 if position == lay.h else 1
        after, k, s = list(meta), [1, 1], [1, 1]
        after[axis], k[axis], s[axis] = sliding_window(meta[axis], size, step, 0, 1), size, step
        grid = list(lay.grid)
        grid[axis] = outs[0].shape[position - 1]
        self.record("unfold", x, meta, tuple(after), outs, k=tuple(k), s=tuple(s), d=(1, 1), p=(0, 0),
                    layout=new._replace(grid=tuple(grid)))

    def columns(self, name, args, kwargs, x, meta, outs):
        """im2col: N x C x H x W -> N x C*k*k x L (blocks as tokens, a sliding window); col2im: back,
        each pixel summing the blocks that cover it (the windows of a transposed convolution)."""
        base = 2 if name == "col2im" else 1
        k = pair(arg(args, kwargs, base, "kernel_size"))
        d, p, s = (pair(arg(args, kwargs, base + i, key, 0 if key == "padding" else 1))
                   for i, key in ((1, "dilation"), (2, "padding"), (3, "stride")))
        if name == "im2col":
            blocks = tuple((n + 2 * pi - di * (ki - 1) - 1) // si + 1 for n, ki, si, pi, di in zip(x.shape[-2:], k, s, p, d))
            after = tuple(sliding_window(a, *w) for a, w in zip(meta, zip(k, s, p, d)))
            self.record("unfold", x, meta, after, outs, k=k, s=s, d=d, p=p, layout=Layout(-1, -1, blocks))
            return
        lay = self.layout(x)
        if not lay or not lay.merged or lay.h != -1 or math.prod(lay.grid) != x.shape[-1]:
            self.unknown("fold", [(x, meta)], outs)
            return
        after = tuple(transposed_window(a, *w) for a, w in zip(meta, zip(k, s, p, d)))
        self.record("fold", x, meta, after, outs, k=k, s=s, d=d, p=p)
