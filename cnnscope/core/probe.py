"""The one validated probe of a model's forward pass, and the check of a probe input's shape.

Every command that runs a model on a made-up input (summary, rf, bench, train, attribute) goes
through here, so a model that cannot be probed gets the same clear message everywhere:

- a forward that raises: the exception and the SPEC;
- a forward that does not return one logits tensor, where a command needs logits (train, bench,
  attribute): what it returned, and the wrapper that fixes it; logits that are not floating point,
  or whose rows are not one per image of the batch;
- a model without parameters, where a command trains it (train, bench); a model whose forward never
  calls a block that holds parameters (a warning: legal, but those weights learn nothing);
- an input shape that is not C H W >= 1, or that would not fit in memory: the estimate, made
  before anything of that size is allocated.
"""
import math
import os
import warnings
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn

from cnnscope.errors import CnnscopeError, CnnscopeWarning

# Above this many pixels per batch the memory estimate runs a probe at this area and scales it.
PROBE_PIXELS = 256 * 256
# In a no-grad pass, the input and output of a layer, and a residual branch, are alive at once.
INFERENCE_LIVE_MAPS = 3


def _name(model, spec) -> str:
    return spec or type(model).__name__


def _first_conv(model):
    return next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)),
                (None, None))


def input_channels(model) -> int | None:
    """The channels the model's first convolution takes (None without one)."""
    return _first_conv(model)[1].in_channels if _first_conv(model)[1] is not None else None


def forward_error(model, spec, input_shape, error: BaseException) -> CnnscopeError:
    """The message for a forward pass of `model` that raised `error` on a 1 x C x H x W input."""
    shape = "x".join(map(str, input_shape))
    conv_name, conv = _first_conv(model)
    if conv is not None and conv.in_channels != input_shape[0]:
        return CnnscopeError(
            f"{_name(model, spec)} takes {conv.in_channels}-channel images (its first convolution {conv_name} "
            f"has in_channels={conv.in_channels}), but the probe input is {shape}: give C H W with "
            f"C={conv.in_channels}."
        )
    message = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {message[0][:300]}" if message else type(error).__name__
    return CnnscopeError(
        f"The forward pass of {_name(model, spec)} on a 1x{shape} input failed: {detail}. Check the input "
        "size (C H W) and the constructor keywords, or fix the model's forward."
    )


def run_forward(model: nn.Module, x: torch.Tensor, spec=None, mode=None):
    """model(x) with no autograd, inside `mode` (a TorchFunctionMode or any context manager); an
    exception of the forward (sys.exit included) becomes a CnnscopeError naming it and the SPEC."""
    try:
        with torch.no_grad(), mode or nullcontext():
            return model(x)
    except (Exception, SystemExit) as e:
        raise forward_error(model, spec, tuple(x.shape[1:]), e) from None


def probe_forward(model: nn.Module, input_shape, mode=None, spec=None, batch=1):
    """One no-grad forward of a (batch, *input_shape) zero batch in eval mode (see run_forward); the
    model's training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        return run_forward(model, torch.zeros(batch, *input_shape, device=device), spec, mode)
    finally:
        model.train(was_training)


def logits(output, model, spec=None, batch=None) -> torch.Tensor:
    """`output` if it is one (batch, classes) tensor of floating-point scores, with `batch` rows when
    given; else an error saying what cnnscope needs."""
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        if not output.is_floating_point():
            raise CnnscopeError(
                f"The forward of {_name(model, spec)} returns logits of dtype {output.dtype}; the loss and the "
                "predictions need real floating-point scores (float32, float16 or bfloat16). Return them as such "
                "(e.g. `.float()` of integer scores, `.abs()` or `.real` of complex ones).")
        if batch is not None and output.shape[0] != batch:
            raise CnnscopeError(
                f"The forward of {_name(model, spec)} returns {output.shape[0]} rows of logits for a batch of "
                f"{batch} images; it must return one row per image, shape (batch, classes). Check how it flattens "
                "its features: x.flatten(1) keeps the batch, x.view(-1, n) or x.view(1, -1) may not.")
        return output
    if isinstance(output, torch.Tensor):
        got = f"a tensor of shape {tuple(output.shape)}"
    elif isinstance(output, (tuple, list, dict)):
        got = f"a {type(output).__name__} of {len(output)}"
    else:
        got = f"a {type(output).__name__}"
    raise CnnscopeError(
        f"The forward of {_name(model, spec)} returns {got}; cnnscope needs a model whose forward returns one "
        "logits tensor of shape (batch, classes). Wrap it: a module whose forward calls the model and returns "
        "the logits (e.g. `return self.net(x)[0]` or `return self.net(x)['logits']`)."
    )


def uncalled(model: nn.Module, called) -> str | None:
    """What a forward that called the modules in `called` left out: the outermost modules holding
    parameters that no called module holds, and their parameter count, in words (None: nothing)."""
    used = {id(p) for m in called for p in m.parameters(recurse=False)}
    names = []
    for name, module in model.named_modules():
        if module in called or any(name.startswith(n + ".") for n in names):
            continue
        if any(id(p) not in used for p in module.parameters()):
            names.append(name)
    if not names:
        return None
    count = sum(p.numel() for n in names for p in model.get_submodule(n).parameters() if id(p) not in used)
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (f"the forward pass never calls {shown}: {count:,} parameters take no part, and training leaves them as "
            "they are. Check the constructor keywords (a count of 0 or less, say).")


def require_parameters(model: nn.Module, spec=None):
    if not any(p.requires_grad for p in model.parameters()):
        raise CnnscopeError(
            f"{_name(model, spec)} has no trainable parameters, so there is nothing to train. Check the SPEC and "
            "its constructor keywords (a model keeps its layers as attributes, e.g. self.conv = nn.Conv2d(...))."
        )


def classifier_outputs(model: nn.Module, input_shape, spec=None) -> int:
    """Probe `model` as a classifier about to be trained: it has parameters and its forward returns
    one logits tensor, a row per image of a batch of two; returns its number of outputs (classes)."""
    require_parameters(model, spec)
    called = set()
    handles = [m.register_forward_pre_hook(lambda module, args: called.add(module)) for m in model.modules()]
    try:
        output = probe_forward(model, input_shape, spec=spec, batch=2)
    finally:
        for h in handles:
            h.remove()
    left_out = uncalled(model, called)
    if left_out:
        warnings.warn(f"{_name(model, spec)}: {left_out}", CnnscopeWarning, stacklevel=2)
    return logits(output, model, spec, batch=2).shape[1]


# ---- the input shape ----------------------------------------------------------------------------

def available_memory(device=None) -> int:
    """Bytes free for new tensors on `device` (CPU: MemAvailable of /proc/meminfo)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no way to know, no refusal
        return 2**63


def _saved_for_backward(model, input_shape, batch) -> int:
    """Bytes autograd keeps for the backward pass of a batch (parameters aside): a training step's
    activations, and tensors made from the parameters once per batch (a mixed template weight)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    was_training = model.training
    param = next(model.parameters(), None)
    x = torch.zeros(batch, *input_shape, device=param.device if param is not None else "cpu")
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.eval()(x)
    finally:
        model.train(was_training)
    return sum(saved.values())


def leaf_modules(model: nn.Module) -> list:
    """The modules of `model` that have no children: the ones whose forward does the work."""
    return [m for m in model.modules() if next(m.children(), None) is None]


@contextmanager
def forward_hooks(modules, hook):
    """`hook(module, args, output)` called after the forward of each of `modules`, inside the block."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _largest_outputs(model, input_shape) -> int:
    """A no-grad pass holds a layer's input and output and a residual branch at once: a few times
    the largest leaf module output of one image."""
    sizes = []

    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    with forward_hooks(leaf_modules(model), hook):
        probe_forward(model, input_shape)
    return INFERENCE_LIVE_MAPS * max(sizes, default=0)


def memory_estimate(model, input_shape, *, batch=1, training=False) -> int:
    """Bytes a batch of `batch` float32 inputs of `input_shape` needs: the input and the activations,
    measured by a probe at up to PROBE_PIXELS pixels and scaled by area (the input alone, a lower
    bound, when that probe fails). Training probes batches of 1 and 2, so that what is made once per
    batch is not counted per image."""
    c, h, w = input_shape
    input_bytes = batch * c * h * w * 4
    if batch * h * w <= PROBE_PIXELS:
        return input_bytes  # too small to matter; no probe
    shrink = max(1.0, math.sqrt(h * w / PROBE_PIXELS))
    small = (c, max(1, round(h / shrink)), max(1, round(w / shrink)))
    area = (h * w) / (small[1] * small[2])
    try:
        if training:
            one, two = (_saved_for_backward(model, small, n) for n in (1, 2))
            per_image = max(0, two - one)
            return int(input_bytes + max(0, one - per_image) + batch * per_image * area)
        return int(input_bytes + batch * _largest_outputs(model, small) * area)
    except (Exception, SystemExit):  # the real forward says what is wrong
        return input_bytes


def check_input(model: nn.Module, input_shape, spec=None, *, batch=1, training=False, device=None) -> tuple:
    """Refuse an input shape that is not C H W >= 1 or whose batch would not fit in memory; returns it
    as a tuple of ints. A channel count the model does not take is named by forward_error."""
    shape = tuple(int(n) for n in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise CnnscopeError(f"The input shape is C H W, three whole numbers of at least 1; got "
                            f"{' '.join(map(str, shape))}.")
    need = memory_estimate(model, shape, batch=batch, training=training)
    free = available_memory(device)
    if need > free:
        what = f"a batch of {batch} " if batch > 1 else "a "
        raise CnnscopeError(
            f"{_name(model, spec)} on {what}{'x'.join(map(str, shape))} input{'s' if batch > 1 else ''} needs about {need / 1e9:,.1f} GB "
            f"({'training' if training else 'inference'}: the input and its activations, estimated before "
            f"allocating), but {free / 1e9:,.1f} GB is available. Use a smaller input"
            f"{' or batch' if batch > 1 else ''}."
        )
    return shape


def display_pixels(images: torch.Tensor):
    """(N, C, H, W) model inputs -> (N, H, W, 3) floats in [0, 1] to draw: each image rescaled to its
    own range (the normalisation undone up to a scale), one channel shown as grey. The caller that
    knows the dataset's mean and std has the true pixels and puts those in its place."""
    x = images.detach().float().cpu()
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return rgb_pixels((x - low) / (high - low).clamp_min(1e-12))


def rgb_pixels(images: torch.Tensor):
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, 3) numpy for the figures: one channel repeated over
    RGB, the first three of more."""
    x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
    return x.permute(0, 2, 3, 1).cpu().numpy()
