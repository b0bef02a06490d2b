"""Receptive fields from the live graph.

One forward pass of a probe input records every operation as it executes: a TorchFunctionMode
sees each torch function and Tensor method (functional calls included, with the stride, padding
and dilation of THAT call), and module hooks say which module, and which call of it, runs it.
Every tensor computed from the input carries, per axis (H and W), the interval [lo, hi] of input
pixels that its unit 0 sees and its jump (the input-pixel distance between neighbouring units):
unit u sees [lo + u*jump, hi + u*jump], so RF = hi - lo + 1 and the centre offset is (lo + hi) / 2.

  conv / pool (kernel k, stride s, padding p, dilation d; k_eff = d*(k-1) + 1):
      lo' = lo - p*jump,  hi' = hi + (k_eff - 1 - p)*jump,  jump' = jump*s
      i.e. RF' = RF + (k_eff - 1)*jump and centre' = centre + ((k_eff - 1)/2 - p)*jump.
  merges (add, mul, cat, stack, where, gates ...): the union of the inputs' intervals (for aligned
      paths the max RF); inputs with different jumps or centres are flagged as misaligned. A pooled
      input (a squeeze-excitation gate) makes the output see the whole input: its `glob` flag.
  pointwise and channel-only ops (activations, normalisation, dropout, channel slicing, reshapes
      that keep H and W): unchanged. Normalisation statistics (BatchNorm in training, GroupNorm,
      LayerNorm) are left out, as in every conventional RF analysis.
  global pooling, means over H and W, flattening H and W: "global" (the whole input). The map
      that went into the last of them is the network's final spatial map.
  interpolation, transposed convs, pixel (un)shuffle, F.pad: handled (interpolation and transposed
      convs as the bounding interval, since their windows are not uniform along the map).
An operation it does not know, on a tensor it tracks, is named in a warning, never silently
passed through.

`verify` measures the same figure independently, by gradient probing, and `effective_rf`
measures the effective RF (Luo et al., 2016) of trained weights.
"""
import copy
import math
import sys
import weakref
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cnnscope.errors import CnnscopeError
from cnnscope.core.probe import check_input, forward_error

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


def _window(axis: Axis, k, s, p, d) -> Axis:
    """A sliding window (conv or pool): kernel k, stride s, p padding before the first pixel, dilation d."""
    span = d * (k - 1)
    return Axis(axis.lo - p * axis.jump, axis.hi + (span - p) * axis.jump, axis.jump * s, axis.glob)


def _transposed_window(axis: Axis, k, s, p, d) -> Axis:
    """A transposed conv: output unit o gathers input units in [(o + p - d(k-1))/s, (o + p)/s]."""
    j = axis.jump
    return Axis(axis.lo + (p - d * (k - 1)) * j / s, axis.hi + p * j / s, j / s, axis.glob)


# ---- results ------------------------------------------------------------------------------------

@dataclass
class Layer:
    """One spatial operation as it was called. Per-axis values are (H, W) pairs."""

    index: int
    name: str  # qualified module name, '#call' when the module runs more than once, ':op' for functional calls
    op: str
    k: tuple
    s: tuple
    d: tuple
    p: tuple
    rf_in: tuple
    jump_in: tuple
    rf_out: tuple
    jump_out: tuple
    global_in: tuple = (False, False)  # the input already sees the whole input (a global path)
    global_out: tuple = (False, False)


@dataclass
class Probe:
    """The gradient probe of `verify`: nonzero input-gradient extent of the final map's centre unit."""

    rf: tuple  # (H, W), in pixels
    input_size: tuple  # probe length along H (on an input of the analysed W) and along W
    clipped: bool  # the support still touched the border after growing the input
    dtype: str


@dataclass
class EffectiveRF:
    """Mean |d centre unit / d input| over test images (Luo et al., 2016)."""

    heatmap: object  # numpy (H, W), sums to 1
    centre: tuple  # (y, x) input pixel at the centre of the final map's centre unit
    radius95: Optional[float]  # radius (pixels) around `centre` that holds 95% of the gradient mass
    images: int
    dataset: str
    run: str
    figure: Optional[str] = None


@dataclass
class RFResult:
    model: str
    input_shape: tuple  # (C, H, W)
    layers: list
    final: tuple  # (Axis H, Axis W) of the final spatial map
    final_size: tuple  # (H, W) of the final spatial map at the probe input
    final_op: Optional[int]  # index of the torch call whose input is the final map; None: the output
    warnings: list
    probe: Optional[Probe] = None
    erf: Optional[EffectiveRF] = None

    @property
    def final_rf_hw(self):
        return tuple(a.rf for a in self.final)

    @property
    def final_window_hw(self):
        """The local window, leaving out global paths (squeeze-excitation ...)."""
        return tuple(a.window for a in self.final)

    @property
    def final_jump_hw(self):
        return tuple(a.jump for a in self.final)

    @property
    def final_rf(self):
        """55, "55x57" (H x W) or "global"."""
        return _show_pair(self.final_rf_hw)

    @property
    def final_jump(self):
        return _show_pair(self.final_jump_hw)

    @property
    def coverage(self) -> float:
        """Share of the input area that the final map's RF box can cover."""
        return math.prod(min(1.0, rf / n) for rf, n in zip(self.final_rf_hw, self.input_shape[1:]))

    @property
    def first_exceeding(self) -> Optional[Layer]:
        """The first layer whose RF exceeds the input along H or W."""
        size = self.input_shape[1:]
        return next((l for l in self.layers
                     if any(g or r > n for r, g, n in zip(l.rf_out, l.global_out, size))), None)

    @property
    def probe_rf(self):
        """The gradient probe's RF, shown like final_rf (None when it did not run)."""
        return None if self.probe is None else _show_pair(self.probe.rf)

    @property
    def verified(self) -> Optional[bool]:
        """Does the gradient probe agree with the analysis? None when it did not run."""
        if self.probe is None:
            return None
        return all(
            (a.glob and p >= n) or a.rf == p
            for a, p, n in zip(self.final, self.probe.rf, self.probe.input_size)
        )

    def to_json(self) -> dict:
        """Keys: model; input [C, H, W]; final_rf and final_jump (a number when H and W agree,
        "HxW" otherwise, "global" for a map that sees the whole input); final_rf_hw, final_jump_hw
        ([H, W]); final_window_hw ([H, W] local window, leaving out global paths such as
        squeeze-excitation gates); final_map ([H, W] size of the final spatial map); coverage
        (0..1); first_exceeding (layer name or null); layers: [{index, name, op, k, s, d, p, rf_in,
        jump_in, rf_out, jump_out, global_in, global_out}], each an [H, W] pair (rf_* are local
        windows; global_* say whether a global path adds the whole input); warnings (list of
        strings). With --verify: verify {probe_rf, probe_rf_hw, probe_input, match, clipped}; with
        --erf: erf {run, dataset, images, radius95, centre, figure}."""
        first = self.first_exceeding
        out = {
            "model": self.model,
            "input": list(self.input_shape),
            "final_rf": self.final_rf,
            "final_jump": self.final_jump,
            "final_rf_hw": _json_pair(self.final_rf_hw),
            "final_jump_hw": _json_pair(self.final_jump_hw),
            "final_window_hw": _json_pair(self.final_window_hw),
            "final_map": list(self.final_size),
            "coverage": round(self.coverage, 4),
            "first_exceeding": first.name if first else None,
            "layers": [
                {"index": l.index, "name": l.name, "op": l.op,
                 **{key: _json_pair(getattr(l, key)) for key in
                    ("k", "s", "d", "p", "rf_in", "jump_in", "rf_out", "jump_out")},
                 "global_in": list(l.global_in), "global_out": list(l.global_out)}
                for l in self.layers
            ],
            "warnings": list(self.warnings),
        }
        if self.probe is not None:
            out["verify"] = {"probe_rf": self.probe_rf, "probe_rf_hw": list(self.probe.rf),
                             "probe_input": list(self.probe.input_size), "match": self.verified,
                             "clipped": self.probe.clipped}
        if self.erf is not None:
            e = self.erf
            out["erf"] = {"run": e.run, "dataset": e.dataset, "images": e.images,
                          "radius95": None if e.radius95 is None else round(e.radius95, 2),
                          "centre": [_num(c) for c in e.centre], "figure": e.figure}
        return out


# ---- number formatting ----------------------------------------------------------------------------

def _num(v):
    if v == INF:
        return "global"
    if float(v).is_integer():
        return int(v)
    return round(float(v), 3)


def _show_pair(hw):
    h, w = (_num(v) for v in hw)
    return h if h == w else f"{h}x{w}"


def _json_pair(hw):
    return [_num(v) for v in hw]


# ---- the tracer -----------------------------------------------------------------------------------

def _op_name(func) -> str:
    """torch.add, Tensor.add, Tensor.__radd__, Tensor.add_ -> 'add'; property getters -> their name."""
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in ("r", "i") and name[1:] in _DUNDER_BINARY:
            name = name[1:]  # __radd__, __iadd__ -> add
    elif name.endswith("_") and not name.startswith("_"):
        name = name[:-1]  # in-place variant
    return name


_DUNDER_BINARY = {"add", "sub", "mul", "truediv", "floordiv", "div", "mod", "pow", "and", "or", "xor",
                  "lshift", "rshift", "matmul"}

# Elementwise (with broadcasting): the output unit sees what the inputs' units at its position see.
_ACTIVATIONS = {
    "relu", "relu6", "hardtanh", "elu", "selu", "celu", "gelu", "silu", "mish", "leaky_relu", "prelu",
    "rrelu", "softplus", "softsign", "hardswish", "hardsigmoid", "sigmoid", "tanh", "logsigmoid",
    "threshold", "clamp", "clip", "clamp_min", "clamp_max",
}
_NORMS = {"batch_norm", "group_norm", "layer_norm", "instance_norm", "local_response_norm", "rms_norm"}
_DROPOUTS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
_ELEMENTWISE = _ACTIVATIONS | _NORMS | _DROPOUTS | {
    "add", "sub", "subtract", "rsub", "mul", "multiply", "div", "divide", "true_divide", "truediv",
    "floor_divide", "floordiv", "mod", "remainder", "fmod", "pow", "float_power", "neg", "negative", "pos",
    "positive", "abs", "absolute", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt",
    "square", "reciprocal", "sign", "sgn", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
    "asinh", "acosh", "atanh", "erf", "erfc", "erfinv", "floor", "ceil", "round", "trunc", "frac",
    "nan_to_num", "maximum", "minimum", "fmax", "fmin", "where", "lerp", "addcmul", "addcdiv", "atan2",
    "hypot", "copysign", "xlogy", "logit", "softshrink", "hardshrink", "tanhshrink", "eq", "ne", "lt", "le",
    "gt", "ge", "greater", "less", "equal", "not_equal", "greater_equal", "less_equal", "logical_and",
    "logical_or", "logical_xor", "logical_not", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
    "and", "or", "xor", "invert", "isnan", "isinf", "isfinite", "masked_fill", "copy", "to", "type",
    "type_as", "float", "double", "half", "bfloat16", "int", "long", "bool", "contiguous", "clone",
    "detach", "cpu", "cuda", "requires_grad", "data", "real", "imag", "conj",
    "cat", "concat", "concatenate", "stack",
}
# Keep H and W where they are (else: a collapse or an unknown rearrangement).
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as",
             "broadcast_to", "view_as", "reshape_as", "channel_shuffle", "native_channel_shuffle", "repeat",
             "tile", "getitem", "select", "narrow", "index_select", "chunk", "split", "unbind",
             "tensor_split", "split_with_sizes"}
_COLLAPSING_RESHAPES = {"view", "reshape", "flatten", "squeeze", "view_as", "reshape_as"}
_TRANSPOSES = {"transpose", "swapaxes", "swapdims"}  # (input, dim0, dim1)
# Along a `dim` argument: over channels they are pointwise; over H and W they see everything.
_DIM_OPS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "std_mean", "var_mean", "prod",
            "norm", "logsumexp", "nansum", "nanmean", "median", "nanmedian", "argmax", "argmin", "all",
            "any", "count_nonzero", "softmax", "log_softmax", "softmin", "cumsum", "cumprod", "cummax",
            "cummin", "logcumsumexp", "normalize", "sort", "argsort"}
_DIM_POSITION = {"norm": 2, "normalize": 2}  # index of `dim` among the positional args (else 1)
_DIM_DEFAULT = {"normalize": 1, "softmax": 1, "log_softmax": 1, "softmin": 1}  # else: all dims
_FRESH = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
          "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}  # results do not depend on the data
_POOLS = {"max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d"}
_ADAPTIVE_POOLS = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}


def pair(v):
    """A per-axis (H, W) value from an int or a sequence, as torch's conv and pool arguments take it."""
    if isinstance(v, (list, tuple)):
        return (v[0], v[0]) if len(v) == 1 else (v[-2], v[-1])
    return (v, v)


def _arg(args, kwargs, index, name, default=None):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for t in obj if isinstance(t, torch.Tensor)]
    return []


class _FinalMap(Exception):
    """Raised to stop a forward pass once the final spatial map exists."""

    def __init__(self, tensor):
        super().__init__()
        self.tensor = tensor


class _Tracer(TorchFunctionMode):
    """Follows the RF metadata of every tensor computed from the input during one forward pass.

    probe=True runs the verify model: saturating activations, normalisation and dropout become
    identities and max pooling becomes average pooling, so that gradients reach every input pixel
    the final map depends on. stop_at=k raises _FinalMap with the input of call k (the final map).
    shapes_only=True skips the arithmetic of convolutions (zeros of the right shape): the
    analysis needs only their arguments.
    """

    def __init__(self, model: nn.Module, input_tensor, probe=False, stop_at=None, shapes_only=False):
        super().__init__()
        self.shapes_only = shapes_only
        self.names = {m: name for name, m in model.named_modules()}
        self.meta = {}  # id(tensor) -> (Axis H, Axis W), for the live tensors computed from the input
        self.set([input_tensor], (PIXEL, PIXEL))
        self.probe = probe
        self.stop_at = stop_at
        self.stack = []  # (module, call number) of the modules running now, innermost last
        self.calls = Counter()  # module -> calls so far
        self.count = 0  # torch calls made inside the model's forward
        self.raw_layers = []  # (module, call, op, k, s, d, p, Axis pairs in, Axis pairs out)
        self.final = None  # (metadata, size, call index)
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

    def warn(self, message):
        self.warnings[message] = self.warnings.get(message, 0) + 1

    # -- dispatch ------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.stack:  # outside the model's forward
            return func(*args, **kwargs)
        name = _op_name(func)
        if self.probe:
            out = _probe_call(name, func, args, kwargs)
        elif self.shapes_only and name == "conv2d":
            out = _conv_zeros(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        index = self.count
        self.count += 1
        outs = _tensors(out)
        if not outs or name in _FRESH:
            return out
        inputs = [(t, self.meta[id(t)]) for a in (*args, *kwargs.values()) for t in _tensors(a)
                  if id(t) in self.meta]
        if not inputs:
            return out
        if index == self.stop_at:
            raise _FinalMap(inputs[0][0])
        if all(m is GLOBAL for _, m in inputs):
            self.set(outs, GLOBAL)  # nothing spatial left: heads, flatten, linear after global pooling
            return out
        self.handle(name, args, kwargs, inputs, outs, index)
        return out

    def set(self, tensors, meta):
        for t in tensors:
            if id(t) not in self.meta:  # forget the entry when t dies, before its id can be reused
                weakref.finalize(t, self.meta.pop, id(t), None)
            self.meta[id(t)] = meta

    def handle(self, name, args, kwargs, inputs, outs, index):
        x, meta = inputs[0]
        if name == "conv2d":
            weight = _arg(args, kwargs, 1, "weight")
            self.window(name, x, meta, outs, weight.shape[-2:], _arg(args, kwargs, 3, "stride", 1),
                        _arg(args, kwargs, 4, "padding", 0), _arg(args, kwargs, 5, "dilation", 1))
        elif name == "conv_transpose2d":
            weight = _arg(args, kwargs, 1, "weight")
            self.window(name, x, meta, outs, weight.shape[-2:], _arg(args, kwargs, 3, "stride", 1),
                        _arg(args, kwargs, 4, "padding", 0), _arg(args, kwargs, 7, "dilation", 1),
                        transposed=True)
        elif name in _POOLS:
            self.pool(name, args, kwargs, x, meta, outs)
        elif name in _ADAPTIVE_POOLS:
            self.adaptive_pool(name, x, meta, outs, index)
        elif name in ("interpolate", "upsample"):
            self.interpolate(name, args, kwargs, x, meta, outs)
        elif name == "pad":
            self.pad(args, kwargs, meta, outs)
        elif name in ("pixel_shuffle", "pixel_unshuffle"):
            r = _arg(args, kwargs, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor")
            if name == "pixel_shuffle":
                new = tuple(a._replace(jump=a.jump / r) for a in meta)
                self.record(name, x, meta, new, outs, k=(1, 1), s=(1 / r, 1 / r), d=(1, 1), p=(0, 0))
            else:
                self.window(name, x, meta, outs, (r, r), r, 0, 1)
        elif name in ("max", "min") and isinstance(_arg(args, kwargs, 1, "other"), torch.Tensor):
            self.merge(name, inputs, outs)  # torch.max(a, b): elementwise
        elif name in _DIM_OPS:
            self.dim_op(name, args, kwargs, x, meta, outs, index)
        elif name in _ELEMENTWISE:
            self.merge(name, inputs, outs)
        elif name in _RESHAPES:
            self.reshape(name, x, meta, outs, index)
        elif name in _TRANSPOSES or name == "permute":
            self.transpose(name, args, x, meta, outs)
        else:
            self.unknown(name, inputs, outs)

    # -- spatial ops ---------------------------------------------------------------------------
    def window(self, op, x, meta, outs, k, s, p, d, transposed=False):
        k, s, d = pair(tuple(k)), pair(s), pair(d)
        if isinstance(p, str):  # 'valid' or 'same' (the odd pixel of 'same' goes after)
            p = (0, 0) if p == "valid" else tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        p = pair(p)
        step = _transposed_window if transposed else _window
        new = tuple(step(a, *args) for a, args in zip(meta, zip(k, s, p, d)))
        self.record(op, x, meta, new, outs, k=k, s=s, d=d, p=p)

    def pool(self, op, args, kwargs, x, meta, outs):
        base = 2 if op == "lp_pool2d" else 1  # lp_pool2d(input, norm_type, kernel_size, stride)
        k = pair(_arg(args, kwargs, base, "kernel_size"))
        s = _arg(args, kwargs, base + 1, "stride") or k  # None or [] mean "= kernel"
        p = 0 if op == "lp_pool2d" else _arg(args, kwargs, 3, "padding", 0)
        d = _arg(args, kwargs, 4, "dilation", 1) if op.startswith("max") else 1
        # A fixed window, even one that spans the whole map here (F.avg_pool2d(x, 4) on 4x4): the
        # RF of its units does not depend on the input size, unlike adaptive (global) pooling.
        self.window(op, x, meta, outs, k, s, p, d)

    def adaptive_pool(self, op, x, meta, outs, index):
        size, out_size = tuple(x.shape[-2:]), tuple(outs[0].shape[-2:])
        if out_size == (1, 1):
            self.collapse(x, meta, outs, index)
            return
        # Window i spans [floor(i*n/m), ceil((i+1)*n/m)); uniform only when m divides n.
        k = tuple(max(math.ceil((i + 1) * n / m) - math.floor(i * n / m) for i in range(m))
                  for n, m in zip(size, out_size))
        if any(n % m for n, m in zip(size, out_size)):
            self.warn(f"{self.where()}: {op} from {size} to {out_size} has windows of unequal size; "
                      "RF uses the largest")
        s = tuple(n / m for n, m in zip(size, out_size))
        self.window(op, x, meta, outs, k, s, 0, 1)

    def interpolate(self, op, args, kwargs, x, meta, outs):
        mode = _arg(args, kwargs, 3, "mode", "nearest")
        align = _arg(args, kwargs, 4, "align_corners") or False
        taps = {"bilinear": 2, "bicubic": 4}.get(mode, 1)
        new, s = [], []
        for a, n, m in zip(meta, x.shape[-2:], outs[0].shape[-2:]):
            ratio = (n - 1) / max(m - 1, 1) if align and taps > 1 else n / m
            # input position (in input units) sampled by output unit 0
            first = 0.0 if (align or taps == 1 and mode == "nearest") else max(0.0, 0.5 * ratio - 0.5)
            if mode == "nearest-exact":
                first = math.floor(0.5 * ratio)
            half = (taps - 1) / 2
            new.append(Axis(a.lo + (first - half) * a.jump, a.hi + (first + half) * a.jump, a.jump * ratio,
                            a.glob))
            s.append(ratio)
        self.record(op, x, meta, tuple(new), outs, k=(taps, taps), s=tuple(s), d=(1, 1), p=(0, 0))

    def pad(self, args, kwargs, meta, outs):
        pads = list(_arg(args, kwargs, 1, "pad")) + [0, 0, 0, 0]
        left, top = pads[0], pads[2]  # (left, right, top, bottom): the last dim first
        self.set(outs, tuple(a._replace(lo=a.lo - shift * a.jump, hi=a.hi - shift * a.jump)
                             for a, shift in zip(meta, (top, left))))

    def record(self, op, x, meta, new, outs, *, k, s, d, p):
        if meta is not GLOBAL:
            module, call = self.stack[-1]
            self.raw_layers.append((module, call, op, k, s, d, p, meta, new))
        self.set(outs, new)

    def collapse(self, x, meta, outs, index):
        """Global pooling (or a flatten / mean over H and W): `x` is a candidate final map."""
        self.final = (meta, tuple(x.shape[-2:]), index)
        self.set(outs, GLOBAL)

    # -- the rest ------------------------------------------------------------------------------
    def merge(self, op, inputs, outs):
        """Elementwise ops and concatenations: the union of the windows of the inputs that have the
        output's H and W; a pooled input (a squeeze-excitation gate) makes the output global."""
        for out in outs:
            size = tuple(out.shape[-2:]) if out.dim() >= 2 else None
            same = [m for t, m in inputs if m is not GLOBAL and t.dim() >= 2 and tuple(t.shape[-2:]) == size]
            if not same:
                self.unknown(op, inputs, [out])
                continue
            others = [m for t, m in inputs if m is GLOBAL or not (t.dim() >= 2 and tuple(t.shape[-2:]) == size)]
            if any(m is not GLOBAL for m in others):
                self.warn(f"{self.where()}: {op} broadcasts a spatial map over a larger one; "
                          "the output is taken to see the whole input")
            axes = []
            for i, axis_name in enumerate(("H", "W")):
                windows = [m[i] for m in same]
                jumps = {a.jump for a in windows}
                centres = {a.centre for a in windows}
                if len(jumps) > 1 or len(centres) > 1:
                    what = (f"jumps {sorted(_num(j) for j in jumps)}" if len(jumps) > 1
                            else f"centre offsets {sorted(_num(c) for c in centres)}")
                    self.warn(f"{self.where()}: {op} merges misaligned paths along {axis_name} "
                              f"({what}); RF is the union of their windows")
                glob = any(a.glob for a in windows) or bool(others)
                axes.append(Axis(min(a.lo for a in windows), max(a.hi for a in windows), windows[0].jump, glob))
            self.set([out], tuple(axes))

    def dim_op(self, op, args, kwargs, x, meta, outs, index):
        ndim = x.dim()
        dim = _arg(args, kwargs, _DIM_POSITION.get(op, 1), "dim", _DIM_DEFAULT.get(op))
        if dim is None:
            dim = kwargs.get("axis")
        if dim is None or dim == ():
            dims = set(range(ndim))
        else:
            dims = {d % ndim for d in (dim if isinstance(dim, (list, tuple)) else (dim,))}
        spatial = dims & {ndim - 2, ndim - 1}
        if len(spatial) == 2:
            self.collapse(x, meta, outs, index)
        elif not spatial and all(tuple(t.shape[-2:]) == tuple(x.shape[-2:]) for t in outs if t.dim() >= 2):
            self.set(outs, meta)
        elif len(spatial) == 1 and all(tuple(t.shape) == tuple(x.shape) for t in outs):  # softmax over H ...
            axis = 0 if ndim - 2 in spatial else 1
            new = list(meta)
            new[axis] = meta[axis]._replace(glob=True)
            self.set(outs, tuple(new))
        else:
            self.unknown(op, [(x, meta)], outs)

    def reshape(self, op, x, meta, outs, index):
        size = tuple(x.shape[-2:])
        if all(t.dim() >= 2 and tuple(t.shape[-2:]) == size for t in outs):
            self.set(outs, meta)
        elif op in _COLLAPSING_RESHAPES and x.dim() >= 2 and outs[0].dim() < x.dim() \
                and outs[0].shape[-1] % math.prod(size) == 0:
            self.collapse(x, meta, outs, index)  # H and W flattened into one trailing dimension
        else:
            self.unknown(op, [(x, meta)], outs)

    def transpose(self, op, args, x, meta, outs):
        ndim = x.dim()
        if op == "permute":
            dims = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
            moved = [d % ndim for d in dims][-2:] != [ndim - 2, ndim - 1]
        else:
            moved = bool({d % ndim for d in args[1:3]} & {ndim - 2, ndim - 1})
        if moved:
            self.unknown(op, [(x, meta)], outs)
        else:
            self.set(outs, meta)

    def unknown(self, op, inputs, outs):
        spatial = [(t, m) for t, m in inputs if t.dim() >= 2]
        same = [m for t, m in spatial for out in outs
                if out.dim() >= 2 and tuple(out.shape[-2:]) == tuple(t.shape[-2:])]
        if same and len(outs) == 1:
            self.warn(f"{self.where()}: unknown operation {op!r} keeps H and W; treated as pointwise "
                      "(its RF contribution is unknown)")
            self.merge(op, [(t, m) for t, m in spatial if tuple(t.shape[-2:]) == tuple(outs[0].shape[-2:])],
                       outs)
        else:
            self.warn(f"{self.where()}: unknown operation {op!r} changes the spatial layout "
                      f"{tuple(inputs[0][0].shape)} -> {[tuple(t.shape) for t in outs]}; "
                      "the RF is not followed past it")

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


def _conv_zeros(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Zeros shaped like F.conv2d's result (and its error on an input of the wrong channel count)."""
    if input.shape[-3] != weight.shape[1] * groups:
        raise RuntimeError(f"conv2d with a weight of shape {tuple(weight.shape)} and groups={groups} expected an "
                           f"input with {weight.shape[1] * groups} channels, got {input.shape[-3]}")
    k, s, d = weight.shape[-2:], pair(stride), pair(dilation)
    if isinstance(padding, str):
        size = [n if padding == "same" else (n - di * (ki - 1) - 1) // si + 1
                for n, ki, si, di in zip(input.shape[-2:], k, s, d)]
    else:
        size = [(n + 2 * pi - di * (ki - 1) - 1) // si + 1
                for n, ki, si, pi, di in zip(input.shape[-2:], k, s, pair(padding), d)]
    return input.new_zeros((*input.shape[:-3], weight.shape[0], *size))


def _probe_call(name, func, args, kwargs):
    """Run one op the way the verify model needs it (see _Tracer)."""
    x = args[0] if args else None
    if name in _ACTIVATIONS or name in _NORMS or name in _DROPOUTS:
        return x.clone()  # identity; a caller of an in-place form that ignores the result sees x unchanged
    if name == "max_pool2d":
        k = _arg(args, kwargs, 1, "kernel_size")
        s = _arg(args, kwargs, 2, "stride") or k
        p = _arg(args, kwargs, 3, "padding", 0)
        d = pair(_arg(args, kwargs, 4, "dilation", 1))
        ceil_mode = _arg(args, kwargs, 5, "ceil_mode", False)
        if d == (1, 1):
            return F.avg_pool2d(x, k, s, p, ceil_mode=ceil_mode)
        k = pair(k)
        kernel = x.new_full((x.shape[1], 1, *k), 1.0 / math.prod(k))
        return F.conv2d(x, kernel, stride=s, padding=p, dilation=d, groups=x.shape[1])
    if name == "adaptive_max_pool2d":
        return F.adaptive_avg_pool2d(x, _arg(args, kwargs, 1, "output_size"))
    if name in ("amax", "amin"):
        dim = _arg(args, kwargs, 1, "dim", ())
        return x.mean(dim=dim or None, keepdim=_arg(args, kwargs, 2, "keepdim", False))
    return func(*args, **kwargs)


# ---- running the model ----------------------------------------------------------------------------

def _run(model, x, tracer):
    with tracer.hooked():
        return model(x)


@contextmanager
def _on_meta(model):
    """Swap every parameter and buffer of `model` for a meta tensor of its shape, in place (a copy of
    a big model costs more than the whole pass), and put the originals back afterwards."""
    saved = []
    try:
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is not None:
                        saved.append((store, name, t))
                        store[name] = torch.empty_like(t, device="meta")
        yield
    finally:
        for store, name, t in saved:
            store[name] = t


def _trace(model, input_shape):
    """The analysis pass -> (tracer, output).

    Meta tensors carry shapes without data, so that pass costs nothing even for a ResNet-50 at
    224x224; but torch loads their kernels lazily, seconds on first use, so they are taken only when
    that machinery is loaded already (torchvision loads it). Otherwise, or when the model needs
    real values (data-dependent control flow, CPU constants), CPU tensors, convolutions skipped.
    """
    if "torch._dynamo" in sys.modules:
        x = torch.zeros((1, *input_shape), device="meta")
        tracer = _Tracer(model, x)
        try:
            with torch.no_grad(), _on_meta(model):
                return tracer, _run(model, x, tracer)
        except Exception:  # the CPU pass below gives the real error, if there is one
            pass
    x = torch.zeros((1, *input_shape))
    tracer = _Tracer(model, x, shapes_only=True)
    try:
        with torch.no_grad():
            return tracer, _run(model, x, tracer)
    except (Exception, SystemExit) as e:
        raise forward_error(model, None, input_shape, e) from None


def analyze(model: nn.Module, input_shape=(3, 32, 32)) -> RFResult:
    """The receptive-field table of `model` on a 1 x C x H x W probe input (run in eval mode)."""
    input_shape = check_input(model, input_shape)
    was_training = model.training
    model.eval()
    try:
        tracer, out = _trace(model, input_shape)
    finally:
        model.train(was_training)
    # The final map: the model's output when it is still spatial (a fully convolutional net),
    # else the input of the last global pooling.
    maps = [t for t in _tensors(out) if id(t) in tracer.meta and t.dim() >= 2]
    if maps and tracer.meta[id(maps[0])] is not GLOBAL:
        final = (tracer.meta[id(maps[0])], tuple(maps[0].shape[-2:]), None)
    elif tracer.final is not None:
        final = tracer.final
    else:
        unknown = "; ".join(tracer.warning_list()[:3]) or "none"
        raise CnnscopeError(
            f"cnnscope could not follow any spatial feature map of {type(model).__name__} to its output "
            f"(operations it did not know: {unknown})."
        )
    meta, size, op = final
    return RFResult(model=type(model).__name__, input_shape=input_shape, layers=tracer.layers(),
                    final=meta, final_size=size, final_op=op, warnings=tracer.warning_list())


def _final_map(model, x, result: RFResult, probe=False):
    """Run `model` on x and return the final spatial map (with its autograd graph)."""
    tracer = _Tracer(model, x, probe=probe, stop_at=result.final_op)
    try:
        out = _run(model, x, tracer)
    except _FinalMap as stop:
        return stop.tensor
    maps = [t for t in _tensors(out) if t.dim() >= 2]
    if not maps:
        raise CnnscopeError(f"{result.model} returned no spatial map to probe.")
    return maps[0]


def _centre_gradient(fmap, x):
    """d(sum over channels of the centre unit of fmap) / dx, and that unit's (row, col)."""
    h, w = fmap.shape[-2:]
    centre = ((h - 1) // 2, (w - 1) // 2)
    (grad,) = torch.autograd.grad(fmap[:, :, centre[0], centre[1]].sum(), x)
    return grad, centre


# ---- verify: gradient probing -----------------------------------------------------------------------

def _positive_(name, p):
    """Verify weights: positive and normalised so that activations neither vanish nor explode."""
    if name.rsplit(".", 1)[-1].endswith("bias"):
        value = 0.0
    elif p.dim() >= 3:  # conv kernels (out, in, kh, kw), template banks (T, out, in, kh, kw)
        value = 1.0 / math.prod(p.shape[-3:])
    elif p.dim() == 2:  # linear (out, in)
        value = 1.0 / p.shape[-1]
    else:  # mixing coefficients, gains, packed triangles
        value = 1.0 / max(p.numel(), 1)
    p.fill_(value)


def _probe_side(axis: Axis, n: int) -> int:
    """A probe input side large enough for the centre unit's RF, in whole jumps (the model's
    stride structure stays intact)."""
    if axis.glob:
        return n
    j = max(1, math.ceil(axis.jump))
    return max(n, j * math.ceil((axis.rf + 2 * j) / j))


def verify(model: nn.Module, result: RFResult, attempts=4) -> Probe:
    """The final map's RF measured by gradient probing, independently of the analysis.

    A copy of the model gets positive weights (biases 0), identity activations, normalisation and
    dropout, and average pooling for max pooling; then the support of d(centre unit) / d(input) on
    a random positive input is the RF. The input grows until that support is clear of the border.
    Runs in float64 (deep nets would underflow float32 at the RF's edge), float32 if that fails.
    """
    failure = None
    for dtype in (torch.float64, torch.float32):
        net = copy.deepcopy(model).to(dtype).eval()
        with torch.no_grad():
            for name, p in net.named_parameters():
                _positive_(name, p)
        try:
            return _probe(net, result, dtype, attempts)
        except RuntimeError as e:  # e.g. a model that builds float32 constants in its forward
            failure = e
    raise CnnscopeError(
        f"The gradient probe of {result.model} failed: {type(failure).__name__}: "
        f"{str(failure).splitlines()[0][:300]}. The analysis above stands; run without --verify."
    )


def _probe(net, result: RFResult, dtype, attempts) -> Probe:
    """One axis at a time: the probed axis grows, the other keeps the analysed input's size (with
    positive weights a path at the centre of the other axis reaches every pixel of the probed one,
    so a thin input suffices: cost ~ RF x W rather than RF^2)."""
    generator = torch.Generator().manual_seed(0)
    extent, sides, clipped = [], [], []
    for axis, a in enumerate(result.final):
        side = _probe_side(a, result.input_shape[1 + axis])
        for attempt in range(attempts):
            size = list(result.input_shape[1:])
            size[axis] = side
            x = torch.rand(1, result.input_shape[0], *size, generator=generator, dtype=dtype) + 0.5
            x.requires_grad_()
            grad, _ = _centre_gradient(_final_map(net, x, result, probe=True), x)
            hits = (grad[0].abs().sum(0) > 0).any(dim=1 - axis).nonzero().flatten().tolist()
            lo, hi = (hits[0], hits[-1]) if hits else (0, -1)
            touches = not a.glob and (lo == 0 or hi == side - 1)  # may be clipped: grow and retry
            if not touches or attempt == attempts - 1:
                break
            side = _probe_side(Axis(0, 2 * side, a.jump), side)
        extent.append(hi - lo + 1)
        sides.append(side)
        clipped.append(touches)
    return Probe(tuple(extent), tuple(sides), any(clipped), str(dtype).replace("torch.", ""))


# ---- effective RF -----------------------------------------------------------------------------------

def effective_rf(model: nn.Module, x: torch.Tensor, result: RFResult, *, batch_size=16, on_batch=None):
    """Mean |d centre / d input| over the images x (N, C, H, W), summed over channels, normalised to
    sum 1; and the radius around the centre unit's RF centre that holds 95% of that mass.

    `result` must be the analysis of `model` at x's image size. Returns (heatmap, centre, radius95).
    """
    import numpy as np

    model.eval()
    total = torch.zeros(x.shape[-2:], dtype=torch.float64)
    centre = None
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].detach().clone().requires_grad_()
        grad, centre = _centre_gradient(_final_map(model, batch, result), batch)
        total += grad.abs().sum(1).sum(0).double()
        if on_batch is not None:
            on_batch(len(batch))
    heat = (total / total.sum()).numpy() if total.sum() > 0 else total.numpy()
    cy, cx = (a.centre + c * a.jump for a, c in zip(result.final, centre))
    ys, xs = np.indices(heat.shape)
    distance = np.hypot(ys - cy, xs - cx).ravel()
    order = np.argsort(distance, kind="stable")
    mass = np.cumsum(heat.ravel()[order])
    radius = float(distance[order][np.searchsorted(mass, 0.95 - 1e-9)]) if mass[-1] > 0 else None
    return heat, (cy, cx), radius


def rf_box(result: RFResult, centre):
    """(top, left, bottom, right) input pixels of the theoretical RF around `centre` (y, x)."""
    (cy, cx), (h, w) = centre, result.final
    return (cy - (h.window - 1) / 2, cx - (w.window - 1) / 2, cy + (h.window - 1) / 2, cx + (w.window - 1) / 2)


# ---- the command ------------------------------------------------------------------------------------

def report(spec=None, ctor=None, input_shape=(3, 32, 32), *, check=False, erf_run=None, erf_images=64,
           data_dir="data", trust_spec=False, progress=None) -> RFResult:
    """What `cnnscope rf` does: analyse SPEC; `check` adds the gradient probe (result.probe);
    `erf_run` measures the effective RF of that run's weights (result.erf, RUN/plots/erf.png) and
    analyses the run's model (in SPEC's architecture when SPEC is given) at its images' size;
    `trust_spec`: build the run's own SPEC even when it is no zoo model (spec.check_file_spec).
    `progress`: a rich Progress to report on."""
    from cnnscope.runs.spec import build_model

    if erf_run is None:
        if spec is None:
            raise CnnscopeError("Give a SPEC (e.g. `cnnscope rf basic`) or a trained run with --erf RUN.")
        model, result = None, None
        if not check:
            model, result = _analyze_on_meta(spec, ctor, input_shape)
        if result is None:
            model = build_model(spec, ctor)
            result = analyze(model, input_shape)
    else:
        model, result = _measure_erf(erf_run, spec, ctor, input_shape, erf_images, data_dir, trust_spec, progress)
    if check:
        task = progress.add_task("verify: gradient probe", total=None) if progress else None
        result.probe = verify(model, result)
        if progress:
            progress.remove_task(task)
    return result


def _analyze_on_meta(spec, ctor, input_shape):
    """(model, result) of SPEC built on the meta device, which skips the weight initialisation (0.43 s
    of a ResNet-50's 0.6 s of RF work); (None, None) where that does not work: the meta pass is not
    taken (see _trace), or the constructor or the forward pass needs real values."""
    from cnnscope.runs.spec import build_model, resolve_target

    resolve_target(spec)  # import the model's module first: torchvision loads the meta machinery
    if "torch._dynamo" not in sys.modules:
        return None, None
    try:
        model = build_model(spec, ctor, device="meta")
        return model, analyze(model, input_shape)
    except CnnscopeError:  # built on the CPU, it gets the real error message, if there is one
        return None, None


def _measure_erf(run, spec, ctor, input_shape, n_images, data_dir, trust_spec, progress):
    from cnnscope.render import plots
    from cnnscope.runs.checkpoint import load_run_model
    from cnnscope.runs.inspect import Target, load_test_images

    if ctor and spec is None:
        raise CnnscopeError("--ctor applies to a SPEC; with --erf RUN alone the run's checkpoint gives the "
                            "constructor keywords. Drop --ctor, or give the SPEC it belongs to.")
    # with SPEC: the run's weights in SPEC's architecture
    model, ckpt, run_dir = load_run_model(run, trust_spec=trust_spec, spec=spec, ctor=ctor)
    images = load_test_images(Target(model, str(run_dir), run_dir / "plots", ckpt), n_images, data_dir=data_dir)
    shape = tuple(images.x.shape[1:])
    if tuple(input_shape) != shape:
        raise CnnscopeError(f"--erf measures the run's {'x'.join(map(str, shape))} test images: pass --input "
                            f"{' '.join(map(str, shape))} (or leave --input out).")
    result = analyze(model, shape)
    task = progress.add_task("erf: gradients", total=len(images.x)) if progress else None
    heat, centre, radius = effective_rf(model, images.x, result,
                                        on_batch=(lambda k: progress.advance(task, k)) if progress else None)
    figure = plots.erf_heatmap(
        heat, run_dir / "plots" / "erf.png", centre=centre, box=rf_box(result, centre), radius=radius,
        box_label=f"theoretical RF {result.final_rf} px",
        title=f"Effective RF: {result.model}, {run_dir.name} ({len(images.x)} {images.dataset} test images)")
    result.erf = EffectiveRF(heatmap=heat, centre=centre, radius95=radius, images=len(images.x),
                             dataset=images.dataset, run=str(run_dir), figure=str(figure))
    return model, result


# ---- rendering --------------------------------------------------------------------------------------

_COLUMNS = ("#", "Layer", "k", "s", "d", "RF_in", "jump_in", "RF_out", "jump_out")


def _rf_cell(window, glob) -> str:
    """The local window, starred when the units also see the whole input through a global path."""
    return str(_show_pair(window)) + ("*" if any(glob) else "")


def _cells(layer: Layer) -> list:
    return [str(layer.index), layer.name, *(str(_show_pair(v)) for v in (layer.k, layer.s, layer.d)),
            _rf_cell(layer.rf_in, layer.global_in), str(_show_pair(layer.jump_in)),
            _rf_cell(layer.rf_out, layer.global_out), str(_show_pair(layer.jump_out))]


def _notes(result: RFResult) -> list:
    """Plain-text lines after the table: coverage, first layer past the input, verify, ERF."""
    c, h, w = result.input_shape
    first = result.first_exceeding
    lines = [f"Final map {result.final_size[0]}x{result.final_size[1]}; its RF covers "
             f"{result.coverage:.0%} of the {h}x{w} input; "
             + (f"RF exceeds the input from layer {first.index} ({first.name})." if first
                else "no layer's RF exceeds the input.")]
    if any(a.glob for a in result.final):
        first_global = next((l for l in result.layers if any(l.global_out)), None)
        lines.append("RF values marked * also see the whole input through a global path (a squeeze-excitation "
                     "gate, a softmax over H or W)"
                     + (f" from layer {first_global.index} on" if first_global else "")
                     + f"; the local window of the final map is {_show_pair(result.final_window_hw)}.")
    if result.probe is not None:
        p = result.probe
        verdict = "matches" if result.verified else "DOES NOT MATCH"
        lines.append(f"Verify (gradient probe, {p.dtype}, input grown to {p.input_size[0]} along H and "
                     f"{p.input_size[1]} along W): RF "
                     f"{result.probe_rf} {verdict} the analysis ({result.final_rf})"
                     + (" [the support still touched the border]" if p.clipped else "") + ".")
    if result.erf is not None:
        e = result.erf
        radius = "undefined (zero gradient)" if e.radius95 is None else f"{e.radius95:.1f} px"
        lines.append(f"Effective RF ({e.images} {e.dataset} test images of {e.run}): 95% of the gradient "
                     f"mass lies within {radius} of the centre"
                     + (f"; heatmap {e.figure}" if e.figure else "") + ".")
    return lines


def to_markdown(result: RFResult, title: Optional[str] = None) -> str:
    """The seed's RF table (README-ready), then the final RF line, notes and warnings."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(_COLUMNS) + " |",
              "|---:|:------|:-:|:-:|:-:|-----:|--------:|-------:|---------:|"]
    lines += ["| " + " | ".join(_cells(l)) + " |" for l in result.layers]
    lines += ["", f"**Final RF:** {result.final_rf} &nbsp;&nbsp; **Final jump:** {result.final_jump}"]
    lines += ["", *(f"{note}  " for note in _notes(result))]
    if result.warnings:
        lines += ["", *(f"> warning: {w}  " for w in result.warnings)]
    return "\n".join(lines).rstrip() + "\n"


def to_table(result: RFResult, title: Optional[str] = None):
    """A rich renderable: the table, the final RF and the notes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    c, h, w = result.input_shape
    table = Table(title=title or f"RF: {result.model} ({h}x{w} input)")
    for i, column in enumerate(_COLUMNS):
        table.add_column(column, justify="left" if i == 1 else "right", overflow="fold")
    for layer in result.layers:
        table.add_row(*_cells(layer))
    parts = [table, Text(f"Final RF: {result.final_rf}   Final jump: {result.final_jump}", style="bold")]
    parts += [Text(note) for note in _notes(result)]
    parts += [Text(f"warning: {w}", style="yellow") for w in result.warnings]
    return Group(*parts)


def rf_markdown(model: nn.Module, input_shape=(3, 32, 32), title: Optional[str] = None) -> str:
    """analyze + to_markdown: the rf.md of a run."""
    return to_markdown(analyze(model, input_shape), title=title)
