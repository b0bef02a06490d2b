"""A fast backward for dilated depthwise convs, and the fused passes, for training on the CPU.

`training_ops(net, device, compiled)` is what a training forward of `net` runs under: on the CPU,
FastDilatedDepthwise, which routes every dilated depthwise F.conv2d through DilatedDepthwiseConv,
and in compiled training CompiledPasses: that, and the compiled fused passes of
cnnscope.core.fused (its weight gradient; the chains of the modules that declare one:
cnnscope.core.hooks).
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cnnscope.core import fused, hooks
from cnnscope.core.runtime import pair


class DilatedDepthwiseConv(torch.autograd.Function):
    """A depthwise, stride-1, 'same'-padded conv of odd kernel with its backward written out.

    On the CPU the backward of a dilated depthwise conv has no fast kernel: 10-50x the forward
    (basic's c4a.dw, d=2 on 4x4, took 6% of a training step). Both of its parts are cheap to write
    with fast ops: the input gradient is the same conv of the output gradient with the kernel
    flipped (the forward kernel handles dilation well), and the weight gradient of tap (a, b) is the
    sum over batch and positions of the output gradient times the input shifted by (d_h a, d_w b),
    one product and one channel-wise reduction per tap, in channels_last. 7x faster at 4x4, 4x at
    16x16 and 32x32 (d=2), 3x for the dilated model's d=8 conv at 32x32 (1 thread).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dilation, compiled=False):
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.has_bias, ctx.compiled = dilation, bias is not None, compiled
        return F.conv2d(x, weight, bias, 1, _same_padding(weight, dilation), dilation, x.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        padding = _same_padding(weight, ctx.dilation)
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = F.conv2d(grad, weight.flip(-2, -1), None, 1, padding, ctx.dilation, x.shape[1])
        weight_grad = compiled_weight_grad if ctx.compiled else depthwise_weight_grad
        grad_weight = weight_grad(x, grad, ctx.dilation, weight.shape[2:], padding)
        grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_x, grad_weight.to(weight.dtype), grad_bias, None, None


# Images per chunk of the weight gradient: a chunk's input, output gradient and product stay in the
# core's cache while the taps go over them (on 256 x 32 x 32 maps 2.6x faster than whole batches).
CHUNK_BYTES = 512 * 1024


def depthwise_weight_grad(x, grad, dilation, kernel_size, padding):
    """The weight gradient of a stride-1 depthwise conv: tap (a, b) of channel c is the sum over
    images and positions of grad times the input shifted by (d_h a, d_w b). One product and one
    channel-wise reduction per tap, in N H W C order (C innermost), over chunks of images."""
    (dh, dw), (kh, kw), (ph, pw) = dilation, kernel_size, padding
    n, c, h, w = grad.shape
    padded = F.pad(x.contiguous(memory_format=torch.channels_last), (pw, pw, ph, ph)).permute(0, 2, 3, 1)
    grad_nhwc = grad.permute(0, 2, 3, 1)
    per_chunk = max(1, CHUNK_BYTES // (c * h * w * grad.element_size()))
    sums = grad.new_zeros(kh * kw, c)
    buffer = grad.new_empty(min(per_chunk, n), h, w, c)
    for start in range(0, n, per_chunk):
        x_chunk, grad_chunk = padded[start:start + per_chunk], grad_nhwc[start:start + per_chunk]
        product = buffer[:grad_chunk.shape[0]]
        for tap in range(kh * kw):
            a, b = divmod(tap, kw)
            torch.mul(x_chunk[:, dh * a:dh * a + h, dw * b:dw * b + w], grad_chunk, out=product)
            sums[tap] += product.view(-1, c).sum(0)
    return sums.T.reshape(c, 1, kh, kw)


def compiled_weight_grad(x, grad, dilation, kernel_size, padding):
    """depthwise_weight_grad's result from one compiled kernel over all taps (cnnscope.core.fused)."""
    (dh, dw), (kh, kw), (ph, pw) = dilation, kernel_size, padding
    padded = F.pad(x.contiguous(memory_format=torch.channels_last), (pw, pw, ph, ph)).permute(0, 2, 3, 1)
    sums = fused.tap_sums(padded, grad.permute(0, 2, 3, 1), dh, dw, kh, kw)
    return sums.T.reshape(grad.shape[1], 1, kh, kw)


def _same_padding(weight, dilation):
    return tuple(d * (k - 1) // 2 for d, k in zip(dilation, weight.shape[2:]))


def _dilated_depthwise(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, compiled=False):
    """F.conv2d's arguments -> DilatedDepthwiseConv's output (its weight gradient compiled or not),
    or None where it does not apply (not depthwise with one filter per channel, strided, undilated,
    not 'same', an even kernel)."""
    if x.dim() != 4 or isinstance(padding, str) or groups != x.shape[1] or tuple(weight.shape[:2]) != (groups, 1):
        return None
    dilation, (kh, kw) = pair(dilation), weight.shape[2:]
    if pair(stride) != (1, 1) or dilation == (1, 1) or kh % 2 == 0 or kw % 2 == 0:
        return None
    if pair(padding) != _same_padding(weight, dilation):
        return None
    return DilatedDepthwiseConv.apply(x, weight, bias, dilation, compiled)


class FastDilatedDepthwise(TorchFunctionMode):
    """While active, dilated depthwise convs (F.conv2d calls, functional ones included) run as
    DilatedDepthwiseConv: the same numbers up to float rounding, a faster backward on the CPU.
    Only training uses it: the RF and summary analyses must see the convs as the model calls them.
    `compiled`: their weight gradient from cnnscope.core.fused."""

    def __init__(self, compiled=False):
        super().__init__()
        self.compiled = compiled

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            out = _dilated_depthwise(*args, **kwargs, compiled=self.compiled)
            if out is not None:
                return out
        return func(*args, **kwargs)


class CompiledPasses:
    """FastDilatedDepthwise with the fused passes of cnnscope.core.fused: the dilated depthwise
    weight gradient, and the chain of every module of `net` that declares one (hooks.fusable_modules:
    its `fused_chain`, set only while this is entered). Entered once per training forward."""

    def __init__(self, net: torch.nn.Module):
        self.mode = FastDilatedDepthwise(compiled=True)
        self.chains = [(module, fused.fused_chain(module.fusable_chain, type(module).__name__))
                       for module in hooks.fusable_modules(net)]

    def __enter__(self):
        self.mode.__enter__()
        for module, chain in self.chains:
            module.fused_chain = chain
        return self

    def __exit__(self, *exc):
        for module, _ in self.chains:
            module.fused_chain = None
        return self.mode.__exit__(*exc)


def training_ops(net: torch.nn.Module, device: torch.device, compiled: bool):
    """What a training forward of `net` runs under: on the CPU FastDilatedDepthwise, and with
    `compiled` CompiledPasses (the model stays eager there: runtime.compiles_whole_model); elsewhere
    nothing (cuDNN has fast dilated depthwise kernels; `compiled` compiles the whole model)."""
    if device.type != "cpu":
        return nullcontext()
    return CompiledPasses(net) if compiled else FastDilatedDepthwise()
