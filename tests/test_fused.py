"""The compiled fused passes of CPU training (cnnscope.core.fused): the same numbers as the plain
operations, forward and backward, only inside the training step's context, and the plain
operations wherever compiling fails."""
import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F

from cnnscope import zoo
from cnnscope.core import fastconv, fused
from cnnscope.core.fold import to_channels_last
from cnnscope.zoo.blocks import DivisiveNorm


@pytest.fixture
def compiled_ops(monkeypatch):
    monkeypatch.setenv(fused.COMPILED_OPS_ENV, "1")


def test_compiled_weight_grad_equals_the_conv(compiled_ops):
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


def test_compiled_divisive_norm_equals_the_module(compiled_ops):
    torch.manual_seed(0)
    module = DivisiveNorm()
    x = torch.randn(3, 6, 9, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(3, 6, 9, 7)
    want = module(x)
    want_grad, = torch.autograd.grad(want, x, g)
    got = fused.divisive_norm(x, module.eps)
    got_grad, = torch.autograd.grad(got, x, g)
    assert not fused.divisive_norm.failed
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5)


def test_the_hook_is_set_only_inside_the_training_step(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(fused.COMPILED_OPS_ENV, "1")
    with fastconv.training_ops(cpu, compiled=False):
        assert DivisiveNorm.fused is fused.divisive_norm
    assert DivisiveNorm.fused is None
    monkeypatch.setenv(fused.COMPILED_OPS_ENV, "0")
    ops = fastconv.training_ops(cpu, compiled=False)
    with ops:
        assert DivisiveNorm.fused is None and not ops.mode.compiled
    assert isinstance(fastconv.training_ops(cpu, compiled=True), contextlib.nullcontext)  # a compiled model


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
def test_a_training_step_with_the_fused_passes_matches(compiled_ops):
    """A whole forward and backward of a small ectied (DivisiveNorm, dilated depthwise convs) under
    the training step's context, compiled passes against plain ones: the same loss and gradients."""
    torch.manual_seed(0)
    model = to_channels_last(zoo.build("ectied", channels=8, expansion=2)).train()
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)

    def loss_and_grads(compiled):
        ops = fastconv.CpuTrainingOps(compiled)
        with ops:
            loss = model(x).logsumexp(1).sum()
        return [loss, *torch.autograd.grad(loss, list(model.parameters()))]

    plain, compiled = loss_and_grads(False), loss_and_grads(True)
    assert not fused.tap_sums.failed and not fused.divisive_norm.failed
    for a, b in zip(compiled, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
