"""Per-layer summary of a model from one forward pass: output shapes, parameters and MACs per CALL.

Weight tying is the point: ECTiedNet calls one block six times and EGRRNet runs each stage's
weights T times, so a table built from `model.modules()` undercounts their compute and a table
built from calls overcounts their parameters. Here every call of a module is a row, parameters are
totalled twice (unique tensors, and per call) and MACs once per call.

MACs are counted where they happen, at the ATen operation, with torch.utils.flop_counter's formulas
(core/macs.py), and charged to the innermost module running at the time, so functional convolutions
(F.conv2d with a shared kernel at a per-call dilation), einsum and attention are counted too; an
operation that may hide products but has no formula is named in the result's warnings.
"""
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from cnnscope.core.macs import MacCounter, uncounted_warnings
from cnnscope.core.probe import check_input, probe_forward, uncalled


@dataclass
class LayerCall:
    name: str  # qualified module name ("" is the model itself)
    type: str
    call: int  # 1 for the first call of this module, 2 for the second, ...
    calls: int  # how many times the module was called in the pass
    output_shape: list
    params: int  # parameters the module owns directly (recurse=False) or, for a leaf, all of them
    macs: int  # MACs charged to this call (the module's own functional work, not its children's)
    depth: int = 0  # 0 for the model, 1 for its children, ...
    total_params: int = 0  # parameters of the module and everything inside it, each tensor once
    # the geometry of the first convolution or pooling this call runs itself (None without one):
    # per call, so a kernel reused at another dilation shows the dilation of that call
    kernel: Optional[list] = None
    stride: Optional[list] = None
    dilation: Optional[list] = None
    groups: Optional[int] = None


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
    warnings: list = field(default_factory=list)  # operations that ran uncounted (core/macs.py)
    # memory as torchinfo counts it, for one input: the input, every parameter once, and the outputs of
    # every leaf-module call twice (kept for the backward pass, and their gradients)
    input_bytes: int = 0
    param_bytes: int = 0
    activation_bytes: int = 0

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "input_shape": self.input_shape,
            "params_unique": self.params_unique,
            "params_non_trainable": self.params_non_trainable,
            "params_per_call": self.params_per_call,
            "macs": self.macs,
            "memory_bytes": {"input": self.input_bytes, "params": self.param_bytes,
                             "activations": self.activation_bytes},
            "layers": [asdict(layer) for layer in self.layers],
            "warnings": self.warnings,
        }


@dataclass
class ZooTable:
    """The zoo's summary, one row per model: {name, class, params, macs (at 3x32x32), dataset, seed,
    description}. It is built where the registry is known (runs/zoo.py); it lives here so that render,
    which may import only core, can register its renderers."""

    rows: list

    def to_json(self) -> list:
        return [dict(row) for row in self.rows]


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


def _geometry(op: str, args) -> Optional[dict]:
    """Kernel, stride, dilation and groups from the arguments of a convolution or pooling operation
    (as ATen receives them); None for any other operation."""
    if op == "convolution":  # (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
        return {"kernel": list(args[1].shape[2:]), "stride": list(args[3]), "dilation": list(args[5]),
                "groups": int(args[8])}
    if op in ("max_pool2d", "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool2d", "avg_pool3d"):
        kernel = list(args[1])
        stride = list(args[2]) if len(args) > 2 and args[2] else kernel  # an empty stride is the kernel's
        dilation = list(args[4]) if op.startswith("max") and len(args) > 4 else [1] * len(kernel)
        return {"kernel": kernel, "stride": stride, "dilation": dilation, "groups": None}
    return None


class _Recorder:
    """The module calls of one forward pass, as LayerCalls in call order; the innermost running call
    is charged the MACs and the geometry of the operations it runs itself."""

    def __init__(self, model: nn.Module):
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: list[LayerCall] = []  # the module calls running now, innermost last
        self.calls: list[LayerCall] = []
        self.counts: dict[nn.Module, int] = {}
        self.leaf_output_bytes = 0

    def pre_hook(self, module, args):
        self.counts[module] = self.counts.get(module, 0) + 1
        leaf = not any(True for _ in module.children())
        own = module.parameters() if leaf else module.parameters(recurse=False)
        name = self.names[module]
        call = LayerCall(name, type(module).__name__, self.counts[module], 0, [], sum(p.numel() for p in own), 0,
                         depth=name.count(".") + 1 if name else 0,
                         total_params=sum(p.numel() for p in module.parameters()))
        self.stack.append(call)
        self.calls.append(call)

    def post_hook(self, module, args, output):
        call = self.stack.pop()
        out = _first_tensor(output)
        call.output_shape = list(out.shape[1:]) if out is not None else []
        if out is not None and not any(True for _ in module.children()):
            self.leaf_output_bytes += out.numel() * out.element_size()

    def charge(self, macs):
        self.stack[-1].macs += macs

    def observe(self, op, args):
        if self.stack and self.stack[-1].kernel is None:
            for key, value in (_geometry(op, args) or {}).items():
                setattr(self.stack[-1], key, value)

    def where(self) -> str:
        return self.stack[-1].name or "(model)"


def summarize(model: nn.Module, input_shape=(3, 32, 32), spec=None) -> SummaryResult:
    """Run one (1, *input_shape) forward pass in eval mode and tabulate every module call. `spec`
    names the model in errors (a bad input shape, a forward that raises)."""
    input_shape = check_input(model, input_shape, spec)
    recorder = _Recorder(model)
    counter = MacCounter(recorder.charge, recorder.where, recorder.observe)
    handles = [h for module in recorder.names for h in (module.register_forward_pre_hook(recorder.pre_hook),
                                                         module.register_forward_hook(recorder.post_hook))]
    try:
        probe_forward(model, input_shape, counter, spec)
    finally:
        for h in handles:
            h.remove()

    for call in recorder.calls:
        call.calls = recorder.counts[model.get_submodule(call.name)] if call.name else 1
    params = list(model.parameters())
    left_out = uncalled(model, recorder.counts)
    return SummaryResult(
        type(model).__name__, list(input_shape), layers=recorder.calls,  # every call: the hierarchy
        params_unique=sum(p.numel() for p in params if p.requires_grad),
        params_non_trainable=sum(p.numel() for p in params if not p.requires_grad),
        params_per_call=sum(c.params for c in recorder.calls), macs=sum(c.macs for c in recorder.calls),
        warnings=uncounted_warnings(counter.uncounted) + ([left_out] if left_out else []),
        input_bytes=4 * math.prod(input_shape),  # the float32 probe
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        activation_bytes=2 * recorder.leaf_output_bytes,
    )
