"""Running a model under the tracer: the analysis (`receptive_field`) and the final spatial map
that the gradient probe and the effective RF differentiate."""
import torch
import torch.nn as nn

from cnnscope.core.probe import check_input, forward_error
from cnnscope.core.rf.axis import GLOBAL
from cnnscope.core.rf.ops import tensors
from cnnscope.core.rf.result import RFResult, UnknownOp
from cnnscope.core.rf.scatter import Scattered, settled
from cnnscope.core.rf.tracer import FinalMap, Tracer, ValuesNeeded
from cnnscope.errors import CnnscopeError


def _run(model, x, tracer):
    with tracer.hooked():
        return model(x)


def _device(model):
    """Where the model's weights are (the probe input goes there too); the CPU for none."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _trace(model, input_shape, values):
    """The analysis pass -> (tracer, output): one pass of a zero input on the model's device, in
    which the tracer computes no convolution and no elementwise op that keeps its operand's shape
    (ops.shape_call): the analysis needs the shapes, not the values. One path whatever is imported:
    a pass on meta tensors would need torch's meta machinery, which loads in seconds (torch._dynamo,
    sympy) unless something imported it before."""
    x = torch.zeros((1, *input_shape), device=_device(model))
    tracer = Tracer(model, x, shapes_only=True, values=values)
    try:
        with torch.no_grad():
            return tracer, _run(model, x, tracer)
    except ValuesNeeded:
        raise
    except (Exception, SystemExit) as e:
        raise forward_error(model, None, input_shape, e) from None


def receptive_field(model: nn.Module, input_shape=(3, 32, 32), *, values=True) -> RFResult:
    """The receptive-field table of `model` on a 1 x C x H x W probe input (run in eval mode). An
    operation the analysis does not know, on the way to the final map, makes the result unknown
    from it on (result.unknown), never a number. values=False: the model's weights are not its
    own (left uninitialised, which saves the time of initialising them): a forward that reads a
    value (a branch on it, an index from a buffer) raises tracer.ValuesNeeded; where it reads
    none, the table cannot depend on the weights."""
    input_shape = check_input(model, input_shape)
    was_training = model.training
    model.eval()
    try:
        tracer, out = _trace(model, input_shape, values)
    finally:
        model.train(was_training)
    # The final map: the model's output when it is still spatial (a fully convolutional net),
    # else the input of the last global pooling.
    tracked = [t for t in tensors(out) if id(t) in tracer.meta]
    meta = tracer.meta[id(tracked[0])] if tracked else None
    if isinstance(meta, Scattered):  # cut into windows or patches: a map again, or unknown
        grid = settled(meta, tuple(tracked[0].shape))
        if grid is None:
            meta = meta.origin
        else:
            tracer.set(tracked[:1], grid[1], grid[0])
            meta = grid[1]
    if isinstance(meta, UnknownOp):
        return RFResult(model=type(model).__name__, input_shape=input_shape, layers=tracer.layers(), final=None,
                        final_size=tracer.grid(tracked[0]), final_op=None, warnings=tracer.warning_list(),
                        unknown=meta)
    if meta is not None and meta is not GLOBAL and tracked[0].dim() >= 2:
        final = (meta, tracer.grid(tracked[0]), None, tracer.layout(tracked[0]))
    elif tracer.final is not None:
        final = tracer.final
    else:
        raise CnnscopeError(
            f"cnnscope could not follow any spatial feature map of {type(model).__name__} to its output: "
            "no tensor it returns is computed from the input by torch operations."
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
        value = fmap.select(layout.h, layout.prefix + unit[0] * layout.grid[1] + unit[1])
    (grad,) = torch.autograd.grad(value.sum(), x, retain_graph=retain_graph)
    return grad
