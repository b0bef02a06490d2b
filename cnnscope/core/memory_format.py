"""Memory format is a speed choice, never a correctness one: whether a model may run on channels_last
batches (and weights) or needs contiguous ones.

channels_last is faster for convolutions, but a forward written for contiguous tensors can fail on
it (`x.view(x.size(0), -1)` over a map larger than 1x1 raises) or, through strides or data pointers,
compute something else. `channels_last_refusal(model, x)` runs one probe batch both ways and says
why channels_last must not be used ("" when it may).
"""
from contextlib import contextmanager

import torch
import torch.nn as nn

from cnnscope.core.fold import to_channels_last
from cnnscope.core.probe import run_forward

# Logits of the two memory formats differ by float rounding only (other kernels, other summation orders;
# on a GPU, TF32 convolutions round to about 1e-3): a difference above this share of the largest logit is
# the model's, as a layout bug's are of the order of the logits themselves
TOLERANCE = 1e-2


def to_contiguous(model: nn.Module) -> nn.Module:
    """Store every 4-D parameter and buffer contiguously (the inverse of fold.to_channels_last), in place."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous()
    return model


@contextmanager
def _same_noise(device):
    """The RNG fixed, and restored after: a forward that draws noise draws the same in both formats."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        yield


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def channels_last_refusal(model: nn.Module, x: torch.Tensor, spec=None) -> str:
    """Why `model` must run on contiguous batches, or "" when channels_last gives the same logits.

    Runs `x` (a small probe batch on the model's device) in eval mode contiguous through contiguous
    weights, then channels_last through channels_last weights, and compares the outputs (within
    TOLERANCE of the largest logit). The model's weights, training flag and RNG are left as they
    were. An error of the contiguous forward is the model's, whatever the format: a CnnscopeError
    naming it and `spec` (probe.run_forward).
    """
    was_training = model.training
    tensors = [*model.parameters(), *model.buffers()]
    stored = [t.data for t in tensors]  # as they were: put back as they were, strides included
    model.eval()
    try:
        reference = run_forward(to_contiguous(model), x.contiguous(), spec, _same_noise(x.device))
        try:
            with torch.no_grad(), _same_noise(x.device):
                other = to_channels_last(model)(x.contiguous(memory_format=torch.channels_last))
        except (Exception, SystemExit) as e:
            return f"its forward fails on channels_last batches only ({_first_line(e)})"
        return _compare(reference, other)
    finally:
        model.train(was_training)
        for tensor, data in zip(tensors, stored):
            tensor.data = data


def _compare(reference, other) -> str:
    if not (isinstance(reference, torch.Tensor) and isinstance(other, torch.Tensor)):
        return ""  # not logits: the commands that need logits say so themselves
    if reference.shape != other.shape:
        return (f"its output on channels_last batches has shape {tuple(other.shape)}, on contiguous ones "
                f"{tuple(reference.shape)}")
    reference, other = reference.float(), other.float()
    worst = (other - reference).abs().nan_to_num(0.0).max().item() if other.numel() else 0.0
    if worst <= TOLERANCE * reference.abs().nan_to_num(0.0).max().item() + 1e-6:
        return ""
    return f"its logits on channels_last batches differ from those on contiguous ones (by up to {worst:.3g})"
