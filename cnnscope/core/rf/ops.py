"""The torch operations the RF tracer knows, by name, and how it runs some of them.

A torch function or Tensor method is known by its name (`op_name`): torch.add, Tensor.add,
Tensor.__radd__ and Tensor.add_ are all 'add'. The tables say what each name does to H and W.
"""
import math

import torch
import torch.nn.functional as F

from cnnscope.core.runtime import pair


def op_name(func) -> str:
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

# The explicit table of what the tracer knows. An operation that is in none of these tables, on a map
# the final map depends on, makes the RF unknown from there on (result.UnknownOp), whatever it does
# to the shape: nothing is ever taken to be pointwise because it keeps H and W.

# Elementwise (with broadcasting): the output unit sees what the inputs' units at its position see.
# These one-input ones are identities in the probe (their input -> output is monotone or bounded).
ACTIVATIONS = {
    "relu", "relu6", "hardtanh", "elu", "selu", "celu", "gelu", "silu", "mish", "leaky_relu", "prelu",
    "rrelu", "softplus", "softsign", "hardswish", "hardsigmoid", "sigmoid", "tanh", "logsigmoid",
    "threshold", "clamp", "clip", "clamp_min", "clamp_max",
}
NORMS = {"batch_norm", "group_norm", "layer_norm", "instance_norm", "local_response_norm", "rms_norm"}
DROPOUTS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
ELEMENTWISE = ACTIVATIONS | NORMS | DROPOUTS | {
    # arithmetic
    "add", "sub", "subtract", "rsub", "mul", "multiply", "div", "divide", "true_divide", "truediv",
    "floor_divide", "floordiv", "mod", "remainder", "fmod", "pow", "float_power", "neg", "negative", "pos",
    "positive", "abs", "absolute", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt",
    "square", "reciprocal", "sign", "sgn", "signbit", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
    "asinh", "acosh", "atanh", "arcsin", "arccos", "arctan", "erf", "erfc", "erfinv", "floor", "ceil", "round",
    "trunc", "fix", "frac", "nan_to_num", "maximum", "minimum", "fmax", "fmin", "where", "lerp", "addcmul",
    "addcdiv", "atan2", "arctan2", "hypot", "copysign", "xlogy", "logit", "logaddexp", "logaddexp2", "sinc",
    "heaviside", "softshrink", "hardshrink", "tanhshrink", "glu", "masked_fill",
    # comparisons and logic
    "eq", "ne", "lt", "le", "gt", "ge", "greater", "less", "equal", "not_equal", "greater_equal",
    "less_equal", "logical_and", "logical_or", "logical_xor", "logical_not", "bitwise_and", "bitwise_or",
    "bitwise_xor", "bitwise_not", "and", "or", "xor", "invert", "isnan", "isinf", "isfinite", "isposinf",
    "isneginf",
    # copies, casts, devices
    "copy", "to", "type", "type_as", "float", "double", "half", "bfloat16", "int", "long", "short", "bool",
    "byte", "char", "contiguous", "clone", "detach", "cpu", "cuda", "requires_grad", "data", "real", "imag",
    "conj", "resolve_conj", "resolve_neg",
    # concatenations (along channels: each unit keeps its position)
    "cat", "concat", "concatenate", "stack",
}
# Keep H and W where they are (else: an unknown rearrangement); views, reshapes, permutes and strided
# slices are followed wherever they put H and W (rearrange.py).
RESHAPES = {"expand", "expand_as", "broadcast_to", "channel_shuffle", "native_channel_shuffle", "repeat", "tile",
            "getitem", "select", "narrow", "chunk", "split", "unbind", "tensor_split", "split_with_sizes"}
# Along a `dim` argument: over channels they are pointwise; over H and W they see everything.
DIM_OPS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "std_mean", "var_mean", "prod",
           "norm", "logsumexp", "nansum", "nanmean", "median", "nanmedian", "argmax", "argmin", "all",
           "any", "count_nonzero", "softmax", "log_softmax", "softmin", "normalize", "sort", "argsort"}
# Along a `dim` argument too, but unit i sees units 0 .. i only (a table per unit, sampling.py)
CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"}
DIM_POSITION = {"norm": 2, "normalize": 2}  # index of `dim` among the positional args (else 1)
DIM_DEFAULT = {"normalize": 1, "softmax": 1, "log_softmax": 1, "softmin": 1}  # else: all dims
FRESH = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
         "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}  # results do not depend on the data
POOLS = {"max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d"}
# Read an N x C x H x W input (H and W the last two dimensions); sampling.SAMPLING has the others
GRID_OPS = {"conv2d", "conv_transpose2d", "pixel_shuffle", "pixel_unshuffle", *POOLS}


def arg(args, kwargs, index, name, default=None):
    return args[index] if len(args) > index else kwargs.get(name, default)


def tensors(obj):
    """The tensors of an argument or a result: itself, or those in a list, tuple or dict (a model's
    {"out": map} output)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for t in obj if isinstance(t, torch.Tensor)]
    return []


def conv_shaped(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, zeros=True):
    """Zeros shaped like F.conv2d's result (and its error on an input of the wrong channel count);
    zeros=False: uninitialised (no memory written, for a pass that reads no value)."""
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
    shape = (*input.shape[:-3], weight.shape[0], *size)
    return input.new_zeros(shape) if zeros else input.new_empty(shape)


# Elementwise ops whose output has the shape and dtype of one of their operands
_SHAPE_KEEPING = ACTIVATIONS | NORMS | DROPOUTS | {"add", "sub", "rsub", "mul", "div", "true_divide", "truediv"}


def _in_place(func, kwargs) -> bool:
    name = getattr(func, "__name__", "")
    return kwargs.get("inplace") is True or (name.endswith("_") and not name.endswith("__")) or name.startswith("__i")


def shape_call(name, func, args, kwargs, zeros=True):
    """Run one op for the analysis, which needs the shapes of the results and not their values:
    convolutions give zeros (uninitialised where `zeros` is False: no value is read), elementwise
    ops that keep an operand's shape and dtype give that operand (itself where the op is in place,
    else a view of it), without computing anything."""
    if name == "conv2d":
        return conv_shaped(*args, **kwargs, zeros=zeros)
    if name in _SHAPE_KEEPING and args and isinstance(args[0], torch.Tensor):
        operands = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        x = args[0]
        if name not in ACTIVATIONS | NORMS | DROPOUTS:
            shape = torch.broadcast_shapes(*(t.shape for t in operands))
            dtype = torch.result_type(*args[:2]) if len(args) > 1 else x.dtype
            if x.shape != shape or x.dtype != dtype:
                return func(*args, **kwargs)
        return x if _in_place(func, kwargs) else x.view_as(x)
    return func(*args, **kwargs)


# Bounded functions (gates, attention weights): in the probe their input is scaled into [-1/2, 1/2] by a
# constant, so that they neither saturate (a zero gradient) nor, as identities, square the map at each gate.
SATURATING = {"sigmoid", "hardsigmoid", "tanh", "logsigmoid", "softsign", "softmax", "log_softmax", "softmin"}


def _unsaturated(x):
    return x / (2 * x.detach().abs().amax()).clamp_min(1.0)


# Products of two maps (attention without a softmax, gates by hand): in the probe each would square
# the magnitude of the values, and a few in a row overflow float64; the probe bounds their results
# by a constant (which leaves the gradient's support as it is).
PRODUCTS = {"mul", "matmul", "bmm", "einsum"}


def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """scaled_dot_product_attention with its softmax unsaturated (the fused kernel's backward gives
    NaN on the probe's large logits), its mask kept, no dropout."""
    logits = _unsaturated(query @ key.transpose(-2, -1))
    if is_causal:
        attn_mask = torch.ones(logits.shape[-2:], dtype=torch.bool).tril()
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else logits + attn_mask
    return torch.softmax(logits, -1) @ value


def probe_call(name, func, args, kwargs):
    """Run one op the way the verify model needs it (see tracer.Tracer)."""
    out = _probe_call(name, func, args, kwargs)
    if (name in PRODUCTS and isinstance(out, torch.Tensor) and out.is_floating_point()
            and sum(isinstance(a, torch.Tensor) and a.dim() > 0 for a in (*args, *kwargs.values())) >= 2):
        return out / out.detach().abs().amax().clamp_min(1.0)
    return out


def _probe_call(name, func, args, kwargs):
    x = args[0] if args else None
    if name in SATURATING and isinstance(x, torch.Tensor) and x.is_floating_point():
        return func(_unsaturated(x), *args[1:], **kwargs)
    if name == "scaled_dot_product_attention":
        return _attention(*args, **kwargs)
    if name == "pad" and not math.isfinite(arg(args, kwargs, 3, "value", 0.0) or 0.0):
        # -inf around a max pool ('same' padding): the probe's pool averages, and 0 keeps it finite
        return F.pad(x, arg(args, kwargs, 1, "pad"), arg(args, kwargs, 2, "mode", "constant"), 0.0)
    if name == "multi_head_attention_forward":  # its softmax is inside: queries and keys scaled down before
        return func(_unsaturated(args[0]), _unsaturated(args[1]), *args[2:], **kwargs)
    if name in ACTIVATIONS or name in NORMS or name in DROPOUTS:
        return x.clone()  # identity; a caller of an in-place form that ignores the result sees x unchanged
    if name == "grid_sample":  # the identity grid (no displacement), the grid's gradient kept
        grid = args[1]
        theta = torch.eye(2, 3, dtype=grid.dtype).expand(grid.shape[0], 2, 3)
        identity = F.affine_grid(theta, (grid.shape[0], 1, *grid.shape[1:3]),
                                 align_corners=bool(arg(args, kwargs, 4, "align_corners")))
        return func(x, identity + (grid - grid.detach()), *args[2:], **kwargs)
    if name == "deform_conv2d":  # zero offsets, their gradient kept
        offset = args[2]
        return func(x, args[1], offset - offset.detach(), *args[3:], **kwargs)
    if name == "max_pool2d":
        k = arg(args, kwargs, 1, "kernel_size")
        s = arg(args, kwargs, 2, "stride") or k
        p = arg(args, kwargs, 3, "padding", 0)
        d = pair(arg(args, kwargs, 4, "dilation", 1))
        ceil_mode = arg(args, kwargs, 5, "ceil_mode", False)
        if d == (1, 1):
            return F.avg_pool2d(x, k, s, p, ceil_mode=ceil_mode)
        k = pair(k)
        kernel = x.new_full((x.shape[1], 1, *k), 1.0 / math.prod(k))
        return F.conv2d(x, kernel, stride=s, padding=p, dilation=d, groups=x.shape[1])
    if name == "adaptive_max_pool2d":
        return F.adaptive_avg_pool2d(x, arg(args, kwargs, 1, "output_size"))
    if name in ("amax", "amin"):
        dim = arg(args, kwargs, 1, "dim", ())
        return x.mean(dim=dim or None, keepdim=arg(args, kwargs, 2, "keepdim", False))
    return func(*args, **kwargs)
