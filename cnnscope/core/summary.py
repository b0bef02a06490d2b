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
from dataclasses import asdict, dataclass, field

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

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "input_shape": self.input_shape,
            "params_unique": self.params_unique,
            "params_non_trainable": self.params_non_trainable,
            "params_per_call": self.params_per_call,
            "macs": self.macs,
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


def summarize(model: nn.Module, input_shape=(3, 32, 32), spec=None) -> SummaryResult:
    """Run one (1, *input_shape) forward pass in eval mode and tabulate every module call. `spec`
    names the model in errors (a bad input shape, a forward that raises)."""
    input_shape = check_input(model, input_shape, spec)
    stack: list[LayerCall] = []  # the module calls running now, innermost last
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
        stack.append(call)
        calls.append(call)

    def post_hook(module, args, output):
        call = stack.pop()
        out = _first_tensor(output)
        call.output_shape = list(out.shape[1:]) if out is not None else []

    def charge(macs):
        stack[-1].macs += macs

    counter = MacCounter(charge, lambda: stack[-1].name or "(model)")
    for module in names:
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    try:
        probe_forward(model, input_shape, counter, spec)
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
    result.warnings = uncounted_warnings(counter.uncounted)
    left_out = uncalled(model, counts)
    if left_out:
        result.warnings.append(left_out)
    return result
