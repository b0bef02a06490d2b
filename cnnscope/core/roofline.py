"""The memory roofline of a training step: the bytes a step must at least move. Over the machine's
memory bandwidth (cnnscope.core.bench.triad_bytes_per_s) they give the fastest a step can run.

The least traffic of a training step, as counted here (`step_min_bytes`):

- activations: every floating-point tensor that enters or leaves a leaf module (a module without
  children) in the training forward, each counted once however many modules read it (a view counts
  as the tensor it views), is written once in the forward and read once in the backward: 2 x its
  bytes. Work inside a leaf (a fused BN + ReLU, the three dilations of egrr's gated depthwise conv)
  is assumed to stay in the caches; the gradients of the activations are assumed never to reach
  memory. So this is a floor, not what eager PyTorch moves (every op writes its output and its
  backward writes a gradient).
- parameters: every trainable tensor once (tied weights once): the weight read once and written
  once, its gradient written once and read once, and each optimizer state tensor per weight (SGD
  momentum 1, Adam 2) read once and written once: (4 + 2 x states) x its bytes.

The roofline of the step is those bytes over the measured bandwidth: no implementation on this
machine can train faster than that while the activations do not fit in the caches.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnscope.core.probe import forward_hooks, leaf_modules


@dataclass
class StepBytes:
    """The least bytes one training step moves in one process (see the module docstring)."""
    activation_bytes: int  # 2 x the bytes of the activations at leaf-module boundaries
    parameter_bytes: int  # (4 + 2 x optimizer states) x the bytes of the trainable parameters

    @property
    def total(self) -> int:
        return self.activation_bytes + self.parameter_bytes


def boundary_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """The bytes of the distinct floating-point tensors that enter or leave a leaf module in
    `model(x)` (the forward as the model is set: train or eval; no autograd), a view counted as the
    largest view of its tensor seen."""
    seen: dict[int, tuple[torch.Tensor, int]] = {}  # id(base) -> (base, bytes); holding base keeps ids unique

    def note(*values):
        for value in values:
            if isinstance(value, (list, tuple)):
                note(*value)
            elif isinstance(value, dict):
                note(*value.values())
            elif isinstance(value, torch.Tensor) and value.is_floating_point() and not isinstance(
                    value, nn.Parameter):
                base = value if value._base is None else value._base
                size = value.numel() * value.element_size()
                seen[id(base)] = (base, max(size, seen.get(id(base), (base, 0))[1]))

    with forward_hooks(leaf_modules(model), lambda module, args, output: note(args, output)), torch.no_grad():
        model(x)
    return sum(size for _, size in seen.values())


def step_min_bytes(model: nn.Module, input_shape, batch_size: int, optimizer_states: int = 1) -> StepBytes:
    """The least bytes a training step of `model` on a (batch_size, *input_shape) float32 batch
    moves (the module docstring's model). The forward runs in training mode on a copy on the meta
    device, so nothing of that size is allocated and `model` is left as it is; a model whose forward
    cannot run there (it makes tensors of its own on the CPU, or reads values) runs on a CPU copy at a
    batch of 2, scaled to the batch."""
    activations = _activation_bytes(model, input_shape, batch_size)
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return StepBytes(activation_bytes=2 * activations, parameter_bytes=(4 + 2 * optimizer_states) * weights)


def _activation_bytes(model, input_shape, batch_size) -> int:
    try:
        meta = copy.deepcopy(model).to("meta").train()
        return boundary_bytes(meta, torch.empty(batch_size, *input_shape, device="meta"))
    except (RuntimeError, NotImplementedError):
        cpu = copy.deepcopy(model).cpu().train()
        return boundary_bytes(cpu, torch.zeros(2, *input_shape)) * batch_size // 2
