"""The compiled fused passes of CPU training (cnnscope.core.fused): the same numbers as the plain
operations, forward and backward, only inside the training step's context, and the plain
operations wherever compiling fails."""
import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F

from cnnscope import zoo
from cnnscope.core import fastconv, fused, hooks, runtime, training
from cnnscope.core.fold import to_channels_last
from cnnscope.runs import recipes
from cnnscope.zoo.blocks import DivisiveNorm
from cnnscope.zoo.egrr import GatedDilatedDepthwise


def test_compiled_weight_grad_equals_the_conv():
    """A rectangular dilation, taps reaching past the map."""
    torch.manual_seed(0)
    n, c, hw, dilation = 3, 5, (12, 10), (3, 6)
    x = torch.randn(n, c, *hw).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, 3, 3, requires_grad=True)
    g = torch.randn(n, c, *hw).contiguous(memory_format=torch.channels_last)
    out = F.conv2d(x, weight, None, 1, dilation, dilation, c)
    expected, = torch.autograd.grad(out, weight, g)
    got = fastconv.compiled_weight_grad(x, g, dilation, (3, 3), dilation)
    assert not fused.tap_sums.failed
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def chain_args(cls) -> tuple:
    """Arguments for cls.fusable_chain: maps of 3 images, 6 channels, 9 x 7, and eps (DivisiveNorm) or gate
    probabilities and three branches (egrr's mixing)."""
    torch.manual_seed(0)

    def maps():
        return torch.randn(3, 6, 9, 7).contiguous(memory_format=torch.channels_last).requires_grad_()

    if cls is GatedDilatedDepthwise:
        return torch.softmax(torch.randn(3, 3, 9, 7), 1).requires_grad_(), maps(), maps(), maps()
    return maps(), 1e-3


@pytest.mark.parametrize("cls", [DivisiveNorm, GatedDilatedDepthwise], ids=lambda cls: cls.__name__)
def test_a_compiled_chain_equals_the_plain_one(cls):
    """Forward and the gradients of every tensor argument; DivisiveNorm's plain one is the module's
    forward (with its pool module)."""
    args = chain_args(cls)
    want = DivisiveNorm(eps=args[1])(args[0]) if cls is DivisiveNorm else cls.fusable_chain(*args)
    compiled = fused.fused_chain(cls.fusable_chain, cls.__name__)
    got = compiled(*args)
    assert not compiled.failed
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(want)
    inputs = [a for a in args if isinstance(a, torch.Tensor)]
    for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_fused_passes_run_only_in_compiled_training():
    """Without compile, the CPU step runs FastDilatedDepthwise with its eager weight gradient and every
    module as it is; compiled, egrr's GatedDilatedDepthwise modules (one per recursive block), found
    through the hook they declare, get their compiled chain only while the step's context is entered,
    and the model itself stays eager. On CUDA compile means the whole model, and no passes."""
    cpu = torch.device("cpu")
    model = zoo.build("egrr", stem_channels=8, stages=((8, 2, 1), (16, 2, 2)))
    modules = hooks.fusable_modules(model)
    assert len(modules) == 2 and all(isinstance(m, GatedDilatedDepthwise) for m in modules)
    assert len(hooks.fusable_modules(zoo.build("ectied"))) == 1 and not hooks.fusable_modules(zoo.build("basic"))
    plain = fastconv.training_ops(model, cpu, compiled=False)
    assert type(plain) is fastconv.FastDilatedDepthwise and not plain.compiled
    with plain:
        assert all(m.fused_chain is None for m in modules)
    compiled = fastconv.training_ops(model, cpu, compiled=True)
    assert compiled.mode.compiled
    with compiled:
        assert all(m.fused_chain is fused.fused_chain(m.fusable_chain, "") for m in modules)
    assert all(m.fused_chain is None for m in modules)
    recipe = recipes.get_recipe("egrr")
    loop = training.make_loop(model, [None], None, recipe, cpu, compiled=True)  # as train --compile builds it
    assert not loop.compiled and type(loop.step.fast_ops) is fastconv.CompiledPasses
    assert type(training.make_loop(model, [None], None, recipe, cpu).step.fast_ops) is fastconv.FastDilatedDepthwise
    assert not runtime.compiles_whole_model(cpu, True) and runtime.compiles_whole_model(torch.device("cuda"), True)
    assert isinstance(fastconv.training_ops(model, torch.device("cuda"), compiled=True), contextlib.nullcontext)


def test_a_failing_compiler_leaves_the_plain_operations(monkeypatch):
    """torch.compile without a working backend: one warning, then the plain function, whose errors
    are its own."""
    def no_compiler(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler here")

    compile_with = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_with(fn, backend=no_compiler, **kw))
    square = fused.Compiled(lambda x: x * x, "a square")
    with pytest.warns(UserWarning, match="torch.compile of a square failed .*no C\\+\\+ compiler here"):
        assert square(torch.tensor(3.0)) == 9.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert square(torch.tensor(2.0)) == 4.0
    with pytest.raises(TypeError):
        square("a", "b")


@pytest.mark.slow
def test_a_training_step_with_the_fused_passes_matches():
    """A whole forward and backward of a one-stage egrr (the gate's mixing, dilated depthwise convs
    at dilations 2 and 4) under the training step's context, compiled passes against plain ones:
    the same loss and gradients."""
    model = to_channels_last(zoo.build("egrr", stem_channels=8, stages=((8, 2, 1),))).train()
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)

    def loss_and_grads(compiled):
        torch.manual_seed(1)  # the same gate noise
        with fastconv.training_ops(model, torch.device("cpu"), compiled):
            loss = model(x).logsumexp(1).sum()
        return [loss, *torch.autograd.grad(loss, list(model.parameters()))]

    plain, compiled = loss_and_grads(False), loss_and_grads(True)
    assert not fused.tap_sums.failed
    assert not fused.fused_chain(GatedDilatedDepthwise.fusable_chain, "").failed
    for a, b in zip(compiled, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
