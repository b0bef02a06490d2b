"""Batch-norm folding and channels_last: what inference runs.

`fold_batchnorm(model)` returns an eval-mode copy in which every BatchNorm2d that reads the output
of a Conv2d, and nothing else reads that output, is folded into the conv's weight and bias and
replaced by Identity. The pairs are found from the live graph (one forward pass that records which
tensor each module call produced and how many torch operations read it), so any model is handled,
not only the zoo's layer patterns, and a BatchNorm whose input is not a conv output read by it
alone (egrr's ISNorm after a gated mix; a pre-activation BN-ReLU-conv block's BN, which reads a
residual sum) is never folded. In eval mode folding is exact up to float rounding:

    BN(conv(x)) = gamma * (W*x + b - mean) / sqrt(var + eps) + beta
                = (s W) * x + (s (b - mean) + beta),    s = gamma / sqrt(var + eps)
"""
import copy
from collections import Counter, defaultdict

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from cnnscope.core.probe import probe_forward


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store every 4-D parameter and buffer in channels_last memory format, in place.

    `model.to(memory_format=torch.channels_last)` fails on models that hold 5-D tensors (swrn's
    TemplateBank templates, (T, out, in, k, k)); those, and every tensor that is not 4-D, are left
    as they are. Gradients follow their parameter's layout.
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


# Queries of a tensor's metadata, not of its values: x.shape (a property: __get__), x.dim(), ...
_METADATA_QUERIES = {"__get__", "dim", "ndimension", "size", "numel", "nelement", "stride", "is_contiguous",
                     "is_floating_point", "is_complex", "element_size", "get_device", "storage_offset"}


class _ReadCounter(TorchFunctionMode):
    """Counts, for every tensor, the torch operations that read its values (metadata queries that
    return no tensor, such as x.shape or x.dim(), are not reads)."""

    def __init__(self):
        super().__init__()
        self.reads = Counter()
        self.seen = []  # keeps the tensors alive so that no id() is reused during the pass

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        returns_tensor = any(isinstance(t, torch.Tensor) for t in tree_flatten(out)[0])
        if returns_tensor or getattr(func, "__name__", "") not in _METADATA_QUERIES:
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor):
                    self.reads[id(t)] += 1
                    self.seen.append(t)
        return out


def conv_bn_pairs(model: nn.Module, input_shape=(3, 32, 32)) -> list[tuple[str, str]]:
    """(conv name, bn name) of every BatchNorm2d that can be folded into the Conv2d before it.

    A pair qualifies when, in one eval-mode forward pass of a (1, *input_shape) input, every call of
    the BN reads the output of a call of the conv, the two are called equally often (weight-tied
    blocks are fine), no other operation reads the conv's outputs, and the BN normalises with
    running statistics. Plain nn.Conv2d and nn.BatchNorm2d only (subclasses may change forward).
    """
    names = {m: n for n, m in model.named_modules()}
    conv_outputs = defaultdict(list)  # conv name -> id of each call's output
    bn_inputs = defaultdict(list)  # bn name -> id of each call's input
    produced_by = {}  # output id -> conv name
    keep = []  # the conv outputs stay alive, so that no id() is reused during the pass

    def conv_hook(module, args, output):
        conv_outputs[names[module]].append(id(output))
        produced_by[id(output)] = names[module]
        keep.append(output)

    def bn_hook(module, args):
        bn_inputs[names[module]].append(id(args[0]))

    handles = []
    for module, name in names.items():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(conv_hook))
        elif type(module) is nn.BatchNorm2d and module.track_running_stats and module.running_mean is not None:
            handles.append(module.register_forward_pre_hook(bn_hook))
    counter = _ReadCounter()
    try:
        probe_forward(model, input_shape, counter)
    finally:
        for h in handles:
            h.remove()

    pairs = []
    for bn, inputs in bn_inputs.items():
        convs = {produced_by.get(i) for i in inputs}
        if len(convs) != 1 or None in convs:
            continue
        conv = convs.pop()
        outputs = conv_outputs[conv]
        if len(outputs) == len(inputs) and all(counter.reads[i] == 1 for i in outputs):
            pairs.append((conv, bn))
    return pairs


def fold_batchnorm(model: nn.Module, input_shape=(3, 32, 32)) -> nn.Module:
    """An eval-mode copy of `model` with every pair of conv_bn_pairs folded: the conv gets the
    folded weight and a bias, the BatchNorm becomes nn.Identity. `model` itself is not changed.

    The copy is for inference only (its BatchNorms are gone, so training it would differ).
    `folded_batchnorms` on the copy lists the (conv, bn) names that were folded.
    """
    folded = copy.deepcopy(model).eval()
    pairs = conv_bn_pairs(folded, input_shape)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        # A module may be registered under several names; replace it wherever it is.
        for parent in folded.modules():
            for child_name, child in parent.named_children():
                if child is bn:
                    setattr(parent, child_name, nn.Identity())
    folded.folded_batchnorms = pairs
    return folded


def inference_copy(model: nn.Module, input_shape=(3, 32, 32), channels_last=True) -> nn.Module:
    """What evaluation runs: fold_batchnorm(model) in eval mode, its 4-D tensors channels_last."""
    folded = fold_batchnorm(model, input_shape)
    return to_channels_last(folded) if channels_last else folded
