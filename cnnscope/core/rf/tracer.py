"""The tracer: one forward pass of a probe input, every torch call seen as it executes.

A TorchFunctionMode sees each torch function and Tensor method (functional calls included, with the
stride, padding and dilation of THAT call), and module hooks say which module, and which call of it,
runs it. Every tensor computed from the input carries its (Axis H, Axis W) metadata (axis.py); the
op tables (ops.py) say what each operation does to it.
"""
import math
import weakref
from collections import Counter
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

import cnnscope.core.rf.ops as ops
from cnnscope.core.rf.axis import GLOBAL, PIXEL, fitted, merge_windows, show_number, sliding_window, transposed_window
from cnnscope.core.rf.layout import Layout, default_layout, is_default
from cnnscope.core.rf.ops import arg, tensors
from cnnscope.core.rf.rearrange import Rearranging, special_name
from cnnscope.core.rf.result import Layer, UnknownOp
from cnnscope.core.rf.sampling import SAMPLING, Sampling
from cnnscope.core.rf.scatter import Scattered, Scattering
from cnnscope.core.runtime import pair


class FinalMap(Exception):
    """Raised to stop a forward pass once the final spatial map exists."""

    def __init__(self, tensor):
        super().__init__()
        self.tensor = tensor


class OtherPath(Exception):
    """The forward pass took another path than the analysed one (it depends on the input's values)."""


class ValuesNeeded(Exception):
    """The forward read a tensor's value (into Python, or into a shape) where the values are not the
    model's own (its weights were left uninitialised to save the time of initialising them)."""


# Calls that read values: into Python, or into the shape of their result
VALUE_READS = {"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "__complex__", "numpy",
               "__array__", "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount",
               "is_nonzero", "equal", "allclose", "repeat_interleave"}


class Tracer(Rearranging, Sampling, Scattering, TorchFunctionMode):
    """Follows the RF metadata of every tensor computed from the input during one forward pass.

    probe=True runs the verify model: saturating activations, normalisation and dropout become
    identities and max pooling becomes average pooling, so that gradients reach every input pixel
    the final map depends on. stop_at=(k, name) raises FinalMap with the input of call k (the final
    map), OtherPath where call k is not `name`.
    shapes_only=True skips the arithmetic of convolutions (zeros of the right shape): the
    analysis needs only their arguments. values=False: the weights are not the model's own, so a
    forward that reads a value raises ValuesNeeded (sampling.py reads index values the same way).
    """

    def __init__(self, model: nn.Module, input_tensor, probe=False, stop_at=None, shapes_only=False, values=True):
        super().__init__()
        self.shapes_only, self.values = shapes_only, values
        self.names = {m: name for name, m in model.named_modules()}
        self.meta = {}  # id(tensor) -> (Axis H, Axis W), for the live tensors computed from the input
        self.layouts = {}  # id(tensor) -> Layout: where its H and W are
        self.set([input_tensor], (PIXEL, PIXEL))
        self.probe = probe
        self.stop_at = stop_at
        self.stack = []  # (module, call number) of the modules running now, innermost last
        self.calls = Counter()  # module -> calls so far
        self.count = 0  # torch calls made inside the model's forward
        self.raw_layers = []  # (module, call, op, k, s, d, p, Axis pairs in, Axis pairs out)
        self.final = None  # (metadata, size, (call index, op name), layout)
        self.op = None  # the name of the call being handled
        self.size_dependent = False  # do the windows depend on the input's size (interpolation to a size ...)?
        self.warnings = {}  # message -> times

    # -- module stack --------------------------------------------------------------------------
    @contextmanager
    def hooked(self):
        def enter(module, args):
            self.calls[module] += 1
            self.stack.append((module, self.calls[module]))

        def leave(module, args, output):
            self.stack.pop()

        handles = []
        try:
            for module in self.names:
                handles.append(module.register_forward_pre_hook(enter))
                handles.append(module.register_forward_hook(leave))
            with self:
                yield
        finally:
            for h in handles:
                h.remove()

    def where(self) -> str:
        module, call = self.stack[-1]
        name = self.names[module] or type(module).__name__
        return f"{name}#{call}" if self.calls[module] > 1 else name

    def read_values(self, t) -> list:
        """The values of `t` (say an index), which must be the model's own."""
        if not self.values:
            raise ValuesNeeded(f"{self.where()} indexes by a tensor's values")
        return t.tolist()

    def warn(self, message):
        self.warnings[message] = self.warnings.get(message, 0) + 1

    # -- dispatch ------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.stack:  # outside the model's forward
            return func(*args, **kwargs)
        name = special_name(func, ops.op_name(func))
        if not self.values and getattr(func, "__name__", name) in VALUE_READS:
            raise ValuesNeeded(f"{self.where()} reads a value ({getattr(func, '__name__', name)})")
        if self.probe:
            out = ops.probe_call(name, func, args, kwargs)
        elif self.shapes_only:
            out = ops.shape_call(name, func, args, kwargs, zeros=self.values)
        else:
            out = func(*args, **kwargs)
        index = self.count
        self.count += 1
        outs = tensors(out)
        inputs = [(t, self.meta[id(t)]) for a in (*args, *kwargs.values()) for t in tensors(a)
                  if id(t) in self.meta]
        if self.stop_at is not None and index == self.stop_at[0]:
            if name != self.stop_at[1] or not inputs:
                raise OtherPath(f"call {index} is {name!r}, not {self.stop_at[1]!r} as in the analysis")
            raise FinalMap(inputs[0][0])
        if not outs or name in ops.FRESH or not inputs:
            return out
        self.op = name
        unknown = next((m for _, m in inputs if isinstance(m, UnknownOp)), None)
        if unknown is not None:  # computed from a map the analysis lost: unknown too
            self.set(outs, unknown)
        elif any(isinstance(m, Scattered) for _, m in inputs):  # cut into windows or patches
            self.scatter(name, func, args, kwargs, inputs, outs, index)
        elif all(m is GLOBAL for _, m in inputs):
            self.set(outs, GLOBAL)  # nothing spatial left: heads, flatten, linear after global pooling
        else:
            self.handle(name, func, args, kwargs, inputs, outs, index)
        return out

    def set(self, tensors, meta, layout=None):
        """Record `meta` for each tensor, its H and W at `layout` (default: the last two dimensions);
        a unit table (axis.Axis.units) is fitted to the tensor's grid."""
        for t in tensors:
            if id(t) not in self.meta:  # forget the entry when t dies, before its id can be reused
                weakref.finalize(t, self.forget, id(t))
            lay = layout or default_layout(t)
            if type(meta) is tuple and meta is not GLOBAL and lay is not None and any(a.units for a in meta):
                meta = tuple(fitted(a, n) for a, n in zip(meta, lay.grid))
            self.meta[id(t)] = meta
            self.layouts[id(t)] = lay

    def forget(self, key):
        self.meta.pop(key, None)
        self.layouts.pop(key, None)

    def layout(self, t) -> Layout:
        return self.layouts.get(id(t)) or default_layout(t)

    def grid(self, t):
        """(H, W) of a tracked tensor, wherever its layout puts them."""
        return tuple(self.layout(t).grid) if self.layout(t) else None

    def handle(self, name, func, args, kwargs, inputs, outs, index):
        x, meta = inputs[0]
        if self.layout(x) is None:  # a map indexed down to fewer than two dimensions
            self.unknown(name, inputs, outs)
        elif self.rearrange(name, func, args, kwargs, inputs, outs, index):
            return
        elif name in SAMPLING:
            self.sample(name, args, kwargs, inputs, outs, index)
        elif name in ops.GRID_OPS or name == "conv1d":
            self.grid_op(name, args, kwargs, inputs, outs)
        elif name in ("max", "min") and isinstance(arg(args, kwargs, 1, "other"), torch.Tensor):
            self.merge(name, inputs, outs)  # torch.max(a, b): elementwise
        elif name in ops.DIM_OPS:
            self.dim_op(name, args, kwargs, x, meta, outs, index)
        elif name in ("cat", "concat", "concatenate") and self.prefixed(args, kwargs, outs):
            return
        elif name in ops.ELEMENTWISE:
            self.merge(name, inputs, outs)
        elif name in ops.RESHAPES:
            self.keep_grid(name, x, meta, outs)
        else:
            self.unknown(name, inputs, outs)

    # -- spatial ops ---------------------------------------------------------------------------
    def grid_op(self, name, args, kwargs, inputs, outs):
        """Convolutions, pooling, pixel (un)shuffle: N x C x H x W in. A weight computed from pooled
        features (a dynamic convolution) makes every unit see the whole input as well."""
        x, meta = inputs[0]
        others = [m for _, m in inputs[1:]]
        if meta is GLOBAL or x is not arg(args, kwargs, 0, "input") or any(m is not GLOBAL for m in others):
            self.unknown(name, inputs, outs)  # spatial weights: not followed
            return
        if name == "conv1d" or not is_default(self.layout(x)):
            self.channel_mix(name, args, kwargs, inputs, outs)
            return
        if name in ("conv2d", "conv_transpose2d"):
            weight = arg(args, kwargs, 1, "weight")
            transposed = name == "conv_transpose2d"
            self.window(name, x, meta, outs, weight.shape[-2:], arg(args, kwargs, 3, "stride", 1),
                        arg(args, kwargs, 4, "padding", 0), arg(args, kwargs, 7 if transposed else 5, "dilation", 1),
                        transposed=transposed)
        elif name in ops.POOLS:
            self.pool(name, args, kwargs, x, meta, outs)
        elif name == "pixel_shuffle":  # output unit o is input unit o // r: a transposed window k = s = r
            r = arg(args, kwargs, 1, "upscale_factor")
            self.window(name, x, meta, outs, (r, r), r, 0, 1, transposed=True)
        else:  # pixel_unshuffle
            r = arg(args, kwargs, 1, "downscale_factor")
            self.window(name, x, meta, outs, (r, r), r, 0, 1)
        if others:
            self.set(outs, tuple(a._replace(glob=True) for a in self.meta[id(outs[0])]), self.layout(outs[0]))

    def channel_mix(self, name, args, kwargs, inputs, outs):
        """A 1x1 conv (conv1d with kernel 1) over a tensor whose H and W are not its last two (say the
        attention weights of heads x tokens x tokens): it mixes dimension -3 (-2) only, so it is
        pointwise where H and W are elsewhere; any other such call is unknown."""
        x, meta = inputs[0]
        lay, weight = self.layout(x), arg(args, kwargs, 1, "weight")
        mixed = -2 if name == "conv1d" else -3
        ones = {1}
        plain = (name in ("conv1d", "conv2d") and set(weight.shape[2:]) <= ones
                 and set(pair(arg(args, kwargs, 3, "stride", 1))) <= ones
                 and arg(args, kwargs, 4, "padding", 0) in (0, (0,), (0, 0), [0, 0], "valid", "same"))
        if not plain or mixed in (lay.h, lay.w) or not lay.fits(outs[0]):
            self.unknown(name, inputs, outs)
            return
        glob = len(inputs) > 1  # a weight computed from pooled features
        self.set(outs, tuple(a._replace(glob=a.glob or glob) for a in meta), lay)

    def window(self, op, x, meta, outs, k, s, p, d, transposed=False):
        k, s, d = pair(tuple(k)), pair(s), pair(d)
        if isinstance(p, str):  # 'valid' or 'same' (the odd pixel of 'same' goes after)
            p = (0, 0) if p == "valid" else tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        p = pair(p)
        step = transposed_window if transposed else sliding_window
        new = tuple(step(a, *args) for a, args in zip(meta, zip(k, s, p, d)))
        self.record(op, x, meta, new, outs, k=k, s=s, d=d, p=p)

    def pool(self, op, args, kwargs, x, meta, outs):
        base = 2 if op == "lp_pool2d" else 1  # lp_pool2d(input, norm_type, kernel_size, stride)
        k = pair(arg(args, kwargs, base, "kernel_size"))
        s = arg(args, kwargs, base + 1, "stride") or k  # None or [] mean "= kernel"
        p = 0 if op == "lp_pool2d" else arg(args, kwargs, 3, "padding", 0)
        d = arg(args, kwargs, 4, "dilation", 1) if op.startswith("max") else 1
        # A fixed window, even one that spans the whole map here (F.avg_pool2d(x, 4) on 4x4): the
        # RF of its units does not depend on the input size, unlike adaptive (global) pooling.
        self.window(op, x, meta, outs, k, s, p, d)

    def record(self, op, x, meta, new, outs, *, k, s, d, p, layout=None):
        if meta is not GLOBAL:
            module, call = self.stack[-1]
            self.raw_layers.append((module, call, op, k, s, d, p, meta, new))
        self.set(outs, new, layout)

    def collapse(self, x, meta, outs, index):
        """Global pooling (or a flatten / mean over H and W): `x` is a candidate final map."""
        self.final = (meta, self.grid(x), (index, self.op), self.layout(x))
        self.set(outs, GLOBAL)

    # -- the rest ------------------------------------------------------------------------------
    def merge(self, op, inputs, outs):
        """Elementwise ops and concatenations: the union of the windows of the inputs that have the
        output's H and W (at the same positions); a pooled input (a squeeze-excitation gate) makes
        the output global."""
        spatial = [(m, self.layout(t)) for t, m in inputs if m is not GLOBAL and self.layout(t)]
        for out in outs:
            ref = next((lay for m, lay in spatial if lay.fits(out)), None)
            same = [m for m, lay in spatial if lay == ref]
            if not same:
                self.unknown(op, inputs, [out])
                continue
            others = [m for m, lay in spatial if lay != ref]
            if others:
                self.warn(f"{self.where()}: {op} broadcasts a spatial map over a larger one; "
                          "the output is taken to see the whole input")
            glob = bool(others) or len(same) < len(inputs)  # a pooled input: a gate
            self.set([out], tuple(self.merge_axis(op, i, [m[i] for m in same], glob) for i in (0, 1)), ref)

    def prefixed(self, args, kwargs, outs) -> bool:
        """torch.cat([class tokens, tokens], dim=the tokens'): the grid's tokens after more prefix
        tokens; class tokens from pooled features make them global. False for any other cat."""
        pieces = list(arg(args, kwargs, 0, "tensors"))
        last = pieces[-1]
        meta = self.meta.get(id(last))
        if not isinstance(meta, tuple) or meta is GLOBAL or not self.layout(last).merged:
            return False
        lay, ndim = self.layout(last), last.dim()
        before = [self.meta.get(id(t)) for t in pieces[:-1]]
        if arg(args, kwargs, 1, "dim", 0) % ndim != lay.h % ndim or any(m not in (None, GLOBAL) for m in before):
            return False
        prefix = outs[0].shape[lay.h] - math.prod(lay.grid)
        self.set(outs, tuple(a._replace(glob=a.glob or GLOBAL in before) for a in meta), lay._replace(prefix=prefix))
        return True

    def merge_axis(self, op, i, windows, glob):
        jumps = {a.jump for a in windows}
        centres = {a.centre for a in windows if not a.phases}  # phases: each unit's own window, merged exactly
        if len(jumps) > 1 or len(centres) > 1:
            what = (f"jumps {sorted(show_number(j) for j in jumps)}" if len(jumps) > 1
                    else f"centre offsets {sorted(show_number(c) for c in centres)}")
            self.warn(f"{self.where()}: {op} merges misaligned paths along {'HW'[i]} "
                      f"({what}); RF is the union of their windows")
        if len(jumps) > 1:
            windows = [a.hull() for a in windows]  # phases of different maps do not line up
        return merge_windows(windows, glob or any(a.glob for a in windows))

    def dim_op(self, op, args, kwargs, x, meta, outs, index):
        ndim, lay = x.dim(), self.layout(x)
        dim = arg(args, kwargs, ops.DIM_POSITION.get(op, 1), "dim", ops.DIM_DEFAULT.get(op))
        if dim is None:
            dim = kwargs.get("axis")
        if dim is None or dim == ():
            dims = set(range(ndim))
        else:
            dims = {d % ndim for d in (dim if isinstance(dim, (list, tuple)) else (dim,))}
        where = (lay.h % ndim, lay.w % ndim)
        spatial = [axis for axis in (0, 1) if where[axis] in dims]
        same_shape = all(tuple(t.shape) == tuple(x.shape) for t in outs)
        if spatial and same_shape:  # softmax over H, over the tokens ...: the whole axis
            self.set(outs, tuple(a._replace(glob=a.glob or i in spatial) for i, a in enumerate(meta)), lay)
        elif len(spatial) == 2 or spatial and lay.merged:
            self.collapse(x, meta, outs, index)
        elif not spatial:  # over channels: pointwise; H and W move right past removed dimensions
            shift = [0 if outs[0].dim() == ndim else sum(d > p for d in dims) for p in where]
            new = lay._replace(h=lay.h + shift[0], w=lay.w + shift[1])
            if all(new.fits(t) for t in outs):
                self.set(outs, meta, new)
            else:
                self.unknown(op, [(x, meta)], outs)
        else:
            self.unknown(op, [(x, meta)], outs)

    def keep_grid(self, op, x, meta, outs):
        """Chunks, channel selections, repeats: H and W stay where they are, or the op is unknown."""
        lay = self.layout(x)
        if all(lay.fits(t) for t in outs):
            self.set(outs, meta, lay)
        else:
            self.unknown(op, [(x, meta)], outs)

    def unknown(self, op, inputs, outs):
        """An operation the analysis does not know: what is computed from its outputs has an unknown
        RF (result.UnknownOp), never a number."""
        spatial = [(t, m) for t, m in inputs if type(m) is tuple and m is not GLOBAL and self.layout(t)]
        t = (spatial or inputs)[0][0]
        keeps = len(outs) == 1 and self.layout(t) is not None and self.layout(t).fits(outs[0])
        detail = ("keeps H and W but is not one the analysis knows" if keeps else
                  f"changes the spatial layout {tuple(t.shape)} -> {[tuple(o.shape) for o in outs]} in a way "
                  "the analysis does not follow")
        self.set(outs, UnknownOp(op, self.where(), len(self.raw_layers) + 1, detail))

    # -- results -------------------------------------------------------------------------------
    def layers(self) -> list:
        """Rows named 'module' ('module#call' when it runs several times). An op that runs in the
        forward of a module whose submodules have rows of their own, or that shares its module's
        call with other spatial ops, gets ':op' (and '.n' when that op repeats in the call)."""
        containers = set()  # modules with a descendant that has rows
        for name in {self.names[module] for module, *_ in self.raw_layers}:
            parts = name.split(".") if name else []
            containers.update(".".join(parts[:i]) for i in range(len(parts)))
        per_call = Counter((module, call) for module, call, *_ in self.raw_layers)
        per_op = Counter((module, call, op) for module, call, op, *_ in self.raw_layers)
        seen = Counter()
        rows = []
        for i, (module, call, op, k, s, d, p, before, after) in enumerate(self.raw_layers, 1):
            qualified = self.names[module]
            name = qualified or type(module).__name__
            if self.calls[module] > 1:
                name += f"#{call}"
            if qualified in containers or per_call[(module, call)] > 1:
                seen[(module, call, op)] += 1
                name += f":{op}" + (f".{seen[(module, call, op)]}" if per_op[(module, call, op)] > 1 else "")
            rows.append(Layer(
                index=i, name=name, op=op, k=tuple(k), s=tuple(s), d=tuple(d), p=tuple(p),
                rf_in=tuple(a.window for a in before), jump_in=tuple(a.jump for a in before),
                rf_out=tuple(a.window for a in after), jump_out=tuple(a.jump for a in after),
                global_in=tuple(a.glob for a in before), global_out=tuple(a.glob for a in after),
            ))
        return rows

    def warning_list(self) -> list:
        return [m + (f" ({n} calls)" if n > 1 else "") for m, n in self.warnings.items()]
