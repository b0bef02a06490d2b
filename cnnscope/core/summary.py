"""Per-layer summary of a model from one forward pass: output shapes, parameters and MACs per CALL.

Weight tying is the point: ECTiedNet calls one block six times and EGRRNet runs each stage's
weights T times, so a table built from `model.modules()` undercounts their compute and a table
built from calls overcounts their parameters. Here every call of a module is a row, parameters are
totalled twice (unique tensors, and per call) and MACs once per call.

MACs are counted where they happen, at the torch function (conv*, conv_transpose*, linear, matmul
family), and charged to the innermost module running at the time, so functional convolutions
(F.conv2d with a shared kernel at a per-call dilation) are counted too.
"""
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from cnnscope.core.probe import check_input, probe_forward

_CONVS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}
_CONV_TRANSPOSES = {torch.conv_transpose1d: 1, torch.conv_transpose2d: 2, torch.conv_transpose3d: 3}
_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm}
_ADD_MATMULS = {torch.addmm, torch.baddbmm}


def _macs(func, args, kwargs, out) -> int:
    """Multiply-accumulates of one torch function call (0 for anything that is not a product)."""
    if func in _CONVS:
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        # weight: (out, in/groups, *k); every output element costs in/groups * prod(k) MACs
        return out.numel() * math.prod(weight.shape[1:])
    if func in _CONV_TRANSPOSES:
        x = args[0]
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        # weight: (in, out/groups, *k); every input element is spread over out/groups * prod(k)
        return x.numel() * math.prod(weight.shape[1:])
    if func is torch.nn.functional.linear:
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        return out.numel() * weight.shape[-1]
    if func in _MATMULS:
        a = args[0]
        return out.numel() * (a.shape[-1] if a.dim() > 0 else 1)
    if func in _ADD_MATMULS:
        return out.numel() * args[1].shape[-1]
    if func is torch.tensordot:
        a, dims = args[0], (args[2] if len(args) > 2 else kwargs.get("dims", 2))
        contracted = a.shape[-dims:] if isinstance(dims, int) else [a.shape[i] for i in dims[0]]
        return out.numel() * math.prod(contracted)
    if func is torch.einsum:
        return _einsum_macs(args[0], args[1:])
    return 0


def _einsum_macs(equation: str, operands) -> int:
    """A contraction costs the product of the sizes of all its distinct indices."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    sizes = {}
    for spec, op in zip(inputs, operands):
        if "..." in spec:
            return 0  # broadcasting einsums are not products cnnscope's models use
        sizes.update(zip(spec, op.shape))
    return math.prod(sizes.values()) if len(operands) > 1 else 0


@dataclass
class LayerCall:
    name: str  # qualified module name ("" is the model itself)
    type: str
    call: int  # 1 for the first call of this module, 2 for the second, ...
    calls: int  # how many times the module was called in the pass
    output_shape: list
    params: int  # parameters the module owns directly (recurse=False) or, for a leaf, all of them
    macs: int  # MACs charged to this call (the module's own functional work, not its children's)


@dataclass
class SummaryResult:
    model: str
    input_shape: list
    layers: list = field(default_factory=list)
    params_unique: int = 0  # every trainable parameter tensor counted once
    params_non_trainable: int = 0
    params_per_call: int = 0  # each call counts its module's parameters again (the unrolled network)
    macs: int = 0
    buffers: int = 0

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "input_shape": self.input_shape,
            "params_unique": self.params_unique,
            "params_non_trainable": self.params_non_trainable,
            "params_per_call": self.params_per_call,
            "macs": self.macs,
            "layers": [asdict(layer) for layer in self.layers],
        }


@dataclass
class ZooTable:
    """The zoo's summary, one row per model: {name, class, params, macs (at 3x32x32), dataset, seed,
    description}. It is built where the registry is known (runs/zoo.py); it lives here so that render,
    which may import only core, can register its renderers."""

    rows: list

    def to_json(self) -> list:
        return [dict(row) for row in self.rows]


class _CallRecorder(TorchFunctionMode):
    """Charges the MACs of every product-like torch call to the innermost running module."""

    def __init__(self):
        super().__init__()
        self.stack: list[LayerCall] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.stack and isinstance(out, torch.Tensor):
            self.stack[-1].macs += _macs(func, args, kwargs, out)
        return out


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        return _first_tensor(list(obj.values()))
    return None


def summarize(model: nn.Module, input_shape=(3, 32, 32), spec=None) -> SummaryResult:
    """Run one (1, *input_shape) forward pass in eval mode and tabulate every module call. `spec`
    names the model in errors (a bad input shape, a forward that raises)."""
    input_shape = check_input(model, input_shape, spec)
    recorder = _CallRecorder()
    calls: list[LayerCall] = []
    counts: dict[nn.Module, int] = {}
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def pre_hook(module, args):
        counts[module] = counts.get(module, 0) + 1
        is_leaf = not any(True for _ in module.children())
        own = module.parameters(recurse=False) if not is_leaf else module.parameters()
        call = LayerCall(names[module], type(module).__name__, counts[module], 0, [],
                         sum(p.numel() for p in own), 0)
        recorder.stack.append(call)
        calls.append(call)

    def post_hook(module, args, output):
        call = recorder.stack.pop()
        out = _first_tensor(output)
        call.output_shape = list(out.shape[1:]) if out is not None else []

    for module in names:
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    try:
        probe_forward(model, input_shape, recorder, spec)
    finally:
        for h in handles:
            h.remove()

    for call in calls:
        call.calls = counts[model.get_submodule(call.name)] if call.name else 1
    result = SummaryResult(type(model).__name__, list(input_shape))
    # Rows: calls that own parameters or did multiply-accumulates themselves, plus leaves (ReLU, pools).
    result.layers = [
        c for c in calls
        if c.params or c.macs or not any(True for _ in model.get_submodule(c.name).children())
    ]
    result.params_unique = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result.params_non_trainable = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    result.params_per_call = sum(c.params for c in result.layers)
    result.macs = sum(c.macs for c in calls)
    return result
