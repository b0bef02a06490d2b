"""The fused passes of compiled CPU training (cnnscope.core.fused): the same numbers as the plain
operations, forward and backward, only inside the training step's context of `--compile`, and the
plain operations wherever compiling fails.

The formulas are checked eagerly: torch.compile is replaced by the identity, so the step runs the
same Python functions, through the same wrappers and hooks, uncompiled. Compiling even the smallest
chain takes about 20 s on a machine without inductor's cache, so the compiled kernels are checked
against the plain operations by benchmarks/fused_passes.py, before it times them.
"""
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
from cnnscope.zoo.egrr import EntropyGate, GatedDilatedDepthwise

CPU = torch.device("cpu")


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile as the identity, with fresh compiled passes (none kept for later tests)."""
    monkeypatch.setattr(torch, "compile", lambda function, **options: function)
    monkeypatch.setattr(fused, "tap_sums", fused.Compiled(fused.tap_sums.function, fused.tap_sums.what))
    monkeypatch.setattr(fused, "_chains", {})


def channels_last_maps(*shape, grad=False):
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_(grad)


def test_the_tap_sums_weight_grad_equals_the_convs(eager_compile):
    """A rectangular dilation, taps reaching past the map: the conv's own weight gradient."""
    torch.manual_seed(0)
    n, c, hw, dilation = 3, 5, (12, 10), (3, 6)
    x, g = channels_last_maps(n, c, *hw), channels_last_maps(n, c, *hw)
    weight = torch.randn(c, 1, 3, 3, requires_grad=True)
    expected, = torch.autograd.grad(F.conv2d(x, weight, None, 1, dilation, dilation, c), weight, g)
    got = fastconv.compiled_weight_grad(x, g, dilation, (3, 3), dilation)
    assert fused.tap_sums.compiled is not None and not fused.tap_sums.failed  # through the wrapper
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def assert_same_result(got, want, inputs):
    """Equal outputs, and equal gradients of every input for one random output gradient."""
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_divisive_norms_chain_equals_its_module(eager_compile):
    """The chain (F.avg_pool2d) against the module's plain forward (its pool module)."""
    torch.manual_seed(0)
    x = channels_last_maps(3, 6, 9, 7, grad=True)
    chain = fused.fused_chain(DivisiveNorm.fusable_chain, "DivisiveNorm")
    assert_same_result(chain(x, 1e-3), DivisiveNorm(eps=1e-3)(x), [x])


def test_egrrs_mixing_in_the_step_equals_the_plain_operations(eager_compile):
    """GatedDilatedDepthwise in the compiled step's context (its chain through the hook, the dilated
    depthwise convs' tap-sum weight gradient) against the per-pixel mix written out here."""
    torch.manual_seed(0)
    module = GatedDilatedDepthwise(6)
    x = channels_last_maps(3, 6, 9, 7, grad=True)
    probs = torch.softmax(torch.randn(3, 3, 9, 7), 1).requires_grad_()
    want = sum(probs[:, i:i + 1] * F.conv2d(x, module.weight, padding=d, dilation=d, groups=6)
               for i, d in enumerate(EntropyGate.DILATIONS))
    with fastconv.training_ops(module, CPU, compiled=True):
        got = module(x, probs)
    assert fused.fused_chain(module.fusable_chain, "").compiled is not None  # the forward took the hook
    assert_same_result(got, want, [x, probs, module.weight])
    assert fused.tap_sums.compiled is not None  # the weight gradient came from the tap sums


def test_a_training_step_with_the_fused_passes_matches(eager_compile):
    """A whole forward and backward of a one-stage egrr (the gate's mixing, dilated depthwise convs
    at dilations 2 and 4) in compiled training's context against the default one: the same loss and
    gradients."""
    model = to_channels_last(zoo.build("egrr", stem_channels=8, stages=((8, 2, 1),))).train()
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)

    def loss_and_grads(compiled):
        torch.manual_seed(1)  # the same gate noise
        with fastconv.training_ops(model, CPU, compiled):
            loss = model(x).logsumexp(1).sum()
        return [loss, *torch.autograd.grad(loss, list(model.parameters()))]

    plain, compiled = loss_and_grads(False), loss_and_grads(True)
    assert fused.tap_sums.compiled is not None
    for a, b in zip(compiled, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_fused_passes_run_only_in_compiled_training():
    """Without compile, the CPU step runs FastDilatedDepthwise with its eager weight gradient and every
    module as it is; compiled, egrr's GatedDilatedDepthwise modules (one per recursive block), found
    through the hook they declare, get their compiled chain only while the step's context is entered,
    and the model itself stays eager. On CUDA compile means the whole model, and no passes."""
    model = zoo.build("egrr", stem_channels=8, stages=((8, 2, 1), (16, 2, 2)))
    modules = hooks.fusable_modules(model)
    assert len(modules) == 2 and all(isinstance(m, GatedDilatedDepthwise) for m in modules)
    assert len(hooks.fusable_modules(zoo.build("ectied"))) == 1 and not hooks.fusable_modules(zoo.build("basic"))
    plain = fastconv.training_ops(model, CPU, compiled=False)
    assert type(plain) is fastconv.FastDilatedDepthwise and not plain.compiled
    with plain:
        assert all(m.fused_chain is None for m in modules)
    compiled = fastconv.training_ops(model, CPU, compiled=True)
    assert compiled.mode.compiled
    with compiled:
        assert all(m.fused_chain is fused.fused_chain(m.fusable_chain, "") for m in modules)
    assert all(m.fused_chain is None for m in modules)
    recipe = recipes.get_recipe("egrr")
    loop = training.make_loop(model, [None], None, recipe, CPU, compiled=True)  # as train --compile builds it
    assert not loop.compiled and type(loop.step.fast_ops) is fastconv.CompiledPasses
    assert type(training.make_loop(model, [None], None, recipe, CPU).step.fast_ops) is fastconv.FastDilatedDepthwise
    assert not runtime.compiles_whole_model(CPU, True) and runtime.compiles_whole_model(torch.device("cuda"), True)
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
