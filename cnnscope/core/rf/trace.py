"""Running a model under the tracer: the analysis (`receptive_field`) and the final spatial map
that the gradient probe and the effective RF differentiate."""
import sys
from contextlib import contextmanager

import torch
import torch.nn as nn

from cnnscope.core.probe import check_input, forward_error
from cnnscope.core.rf.axis import GLOBAL
from cnnscope.core.rf.ops import tensors
from cnnscope.core.rf.result import RFResult
from cnnscope.core.rf.tracer import FinalMap, Tracer
from cnnscope.errors import CnnscopeError


def _run(model, x, tracer):
    with tracer.hooked():
        return model(x)


def meta_tensors_loaded() -> bool:
    """Is torch's meta-tensor machinery loaded already? torch loads it lazily, seconds on first use
    (torchvision loads it), so a pass on meta tensors pays only where it is."""
    return "torch._dynamo" in sys.modules


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
    224x224, where their machinery is loaded (meta_tensors_loaded). Otherwise, or when the model
    needs real values (data-dependent control flow, CPU constants), CPU tensors, convolutions skipped.
    """
    if meta_tensors_loaded():
        x = torch.zeros((1, *input_shape), device="meta")
        tracer = Tracer(model, x)
        try:
            with torch.no_grad(), _on_meta(model):
                return tracer, _run(model, x, tracer)
        except Exception:  # the CPU pass below gives the real error, if there is one
            pass
    x = torch.zeros((1, *input_shape))
    tracer = Tracer(model, x, shapes_only=True)
    try:
        with torch.no_grad():
            return tracer, _run(model, x, tracer)
    except (Exception, SystemExit) as e:
        raise forward_error(model, None, input_shape, e) from None


def receptive_field(model: nn.Module, input_shape=(3, 32, 32)) -> RFResult:
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
    maps = [t for t in tensors(out) if id(t) in tracer.meta and t.dim() >= 2]
    if maps and tracer.meta[id(maps[0])] is not GLOBAL:
        final = (tracer.meta[id(maps[0])], tracer.grid(maps[0]), None, tracer.layout(maps[0]))
    elif tracer.final is not None:
        final = tracer.final
    else:
        unknown = "; ".join(tracer.warning_list()[:3]) or "none"
        raise CnnscopeError(
            f"cnnscope could not follow any spatial feature map of {type(model).__name__} to its output "
            f"(operations it did not know: {unknown})."
        )
    meta, size, op, layout = final
    return RFResult(model=type(model).__name__, input_shape=input_shape, layers=tracer.layers(),
                    final=meta, final_size=size, final_op=op, warnings=tracer.warning_list(), final_layout=layout,
                    size_dependent=tracer.size_dependent)


def final_map(model, x, result: RFResult, probe=False):
    """Run `model` on x and return the final spatial map (with its autograd graph)."""
    tracer = Tracer(model, x, probe=probe, stop_at=result.final_op)
    try:
        out = _run(model, x, tracer)
    except FinalMap as stop:
        return stop.tensor
    maps = [t for t in tensors(out) if t.dim() >= 2]
    if not maps:
        raise CnnscopeError(f"{result.model} returned no spatial map to probe.")
    return maps[0]


def map_grid(fmap, layout):
    """(H, W) of the final map `fmap` (its layout.Layout: None for N x C x H x W)."""
    if layout is None or layout.merged:
        return tuple(fmap.shape[-2:]) if layout is None else tuple(layout.grid)
    return fmap.shape[layout.h], fmap.shape[layout.w]


def unit_gradient(fmap, x, layout, unit, retain_graph=False):
    """d(sum over channels (and batch) of unit (row, col) of fmap) / dx."""
    if layout is None or not layout.merged:
        h, w = (-2, -1) if layout is None else (layout.h + fmap.dim(), layout.w + fmap.dim())
        (last, i), (first, j) = sorted([(h, unit[0]), (w, unit[1])], reverse=True)
        value = fmap.select(last, i).select(first, j)
    else:
        value = fmap.select(layout.h, unit[0] * layout.grid[1] + unit[1])
    (grad,) = torch.autograd.grad(value.sum(), x, retain_graph=retain_graph)
    return grad
