"""Batch-norm folding, channels_last, and `cnnscope bench`."""
import json
import re

import pytest
import torch
import torch.nn as nn

from cnnscope import render, zoo
from cnnscope.cli import cli
from cnnscope.core import fastconv, fused
from cnnscope.core.bench import BenchResult
from cnnscope.core.fastconv import FastDilatedDepthwise, _dilated_depthwise
from cnnscope.core.fold import conv_bn_pairs, fold_batchnorm, to_channels_last

# (model, constructor keywords, BNs that fold). Every BN of the compact models reads a conv output;
# egrr folds its stem and its 4 projection BNs, never the 38 ISNorm BNs that read a gated mix; swrn
# folds the bn2 after each stage's first (plain) conv1, and, at width > 1, the first block's bn1,
# which alone reads the stem conv's output (the block's 1x1 shortcut reads the activated BN output);
# never a pre-activation bn1 that reads a residual sum, the final bn, or a bn2 after an SConv2d (its
# weight is a mix of shared templates). ectied has GroupNorms only.
FOLDS = [
    ("basic", {}, 9),
    ("dilated", {}, 10),
    ("tiny", {}, 20),
    ("ectied", {}, 0),
    ("egrr", {}, 5),
    ("swrn", {"depth": 16, "width": 2, "num_templates": 2}, 4),
]


def randomize_batchnorms(model):
    """Running statistics and affines far from the identity, so that a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


@pytest.mark.parametrize("name,kw,expected", FOLDS, ids=[f[0] for f in FOLDS])
def test_fold_batchnorm_is_exact(name, kw, expected):
    torch.manual_seed(0)
    model = randomize_batchnorms(zoo.build(name, **kw)).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert len(folded.folded_batchnorms) == expected
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == bns - expected
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    assert not folded.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bns  # a copy


def test_fold_finds_the_right_pairs():
    egrr = zoo.build("egrr")
    pairs = conv_bn_pairs(egrr)
    assert ("stem.0", "stem.1") in pairs
    assert all(".norm." not in bn for _, bn in pairs)  # no ISNorm
    first_bn2s = [(f"stage{i}.blocks.0.conv1", f"stage{i}.blocks.0.bn2") for i in (1, 2, 3)]
    # width 1: stage 1's first block has no shortcut conv, so the residual reads the stem output too
    swrn = zoo.build("swrn", depth=16, width=1, num_templates=2)
    assert conv_bn_pairs(swrn) == first_bn2s
    swrn = zoo.build("swrn", depth=16, width=2, num_templates=2)
    assert conv_bn_pairs(swrn) == [("conv", "stage1.blocks.0.bn1"), *first_bn2s]


class ConvBNResidual(nn.Module):
    """The conv output also feeds the residual: folding the BN would change it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        c = self.conv(x)
        return self.bn(c) + c


class PreActivation(nn.Module):
    """BN-ReLU-conv: the BN reads the block input, not a conv output."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        x = self.conv0(x)
        return self.conv(torch.relu(self.bn(x + 1)))


class TiedConvOneBN(nn.Module):
    """One conv called twice, its BN after the second call only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(torch.relu(self.conv(x))))


class TiedConvBN(nn.Module):
    """A conv-BN pair called twice (weight tying): folds."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        for _ in range(2):
            x = torch.relu(self.bn(self.conv(x)))
        return x


@pytest.mark.parametrize("module,expected", [(ConvBNResidual, []), (PreActivation, []), (TiedConvOneBN, []),
                                             (TiedConvBN, [("conv", "bn")])])
def test_fold_only_where_the_bn_reads_a_conv_output_alone(module, expected):
    torch.manual_seed(0)
    model = randomize_batchnorms(module()).eval()
    folded = fold_batchnorm(model, input_shape=(3, 8, 8))
    assert folded.folded_batchnorms == expected
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=0)


def test_channels_last_skips_5d_templates():
    model = zoo.build("swrn", depth=16, width=1, num_templates=2)
    to_channels_last(model)
    conv = model.stage1.blocks[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.stride()[1] == 1
    templates = model.stage1.bank.templates
    assert templates.dim() == 5 and templates.is_contiguous()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model(x).sum().backward()
    assert conv.grad.is_contiguous(memory_format=torch.channels_last)
    assert templates.grad is not None and templates.grad.shape == templates.shape


def documented_json_keys():
    """The keys the bench command's help promises, from its "JSON: {...}" block."""
    block = re.search(r"JSON: \{(.*?)\}", cli.commands["bench"].help, re.S).group(1)
    return {key for key in re.findall(r"([a-z_]+)(?=[,\s(]|$)", re.sub(r"\(.*?\)", "", block, flags=re.S))}


def test_bench_json_has_every_documented_key(runner):
    result = runner.invoke(cli, ["bench", "basic", "--steps", "2", "--batch-size", "8", "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == documented_json_keys()
    numbers = {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert all(v > 0 for v in numbers.values()), numbers
    assert out["flops_per_image"] == 2 * 13_728_256 and out["params"] == 84_322 and out["folded_batchnorms"] == 9
    assert out["train_gflop_per_s"] == pytest.approx(3 * out["flops_per_image"] * out["train_images_per_s"] / 1e9)
    assert out["peak_fraction"] == pytest.approx(out["train_gflop_per_s"] / out["peak_gflop_per_s"])
    assert (out["device"], out["batch_size"], out["steps"], out["matmul_size"]) == ("cpu", 8, 2, 2048)
    assert out["peak_memory_source"] == "cpu_max_rss" and out["compile"] is False


def test_the_peak_adds_every_process_matmul(monkeypatch):
    """Each process times its own matmul; the peak is the sum of their rates (here two processes
    whose matmuls took 2 s and 4 s: 1/2 + 1/4 of the matmul's FLOPs per second)."""
    from cnnscope.core import bench as core_bench

    class TwoProcesses(core_bench.Dist):
        def gather(self, obj):
            return [obj, 2 * obj]

    monkeypatch.setattr(core_bench, "median_seconds", lambda steps, *a, **k: {"train": 1.0, "matmul": 2.0})
    monkeypatch.setattr(core_bench, "matmul_step", lambda device: (lambda: None, 64, 1000))
    timing = core_bench.time_training(lambda: None, torch.device("cpu"), 1, TwoProcesses(world_size=2))
    assert timing["peak_flops_per_s"] == 1000 / 2 + 1000 / 4
    assert (timing["train"], timing["matmul_size"], timing["matmul_flops"]) == (1.0, 64, 1000)


@pytest.mark.slow
def test_bench_trains_in_data_parallel_processes(runner):
    from cnnscope.core.runtime import cpu_cores

    result = runner.invoke(cli, ["bench", "basic", "--steps", "2", "--batch-size", "16", "--procs", "2",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["procs"], out["threads"], out["batch_size"]) == (2, max(1, cpu_cores() // 2), 16)
    assert out["train_images_per_s"] > 0 and 0 < out["peak_fraction"] < 1.5
    assert f"| run on | cpu, 2 processes x {out['threads']} threads" in render.to_markdown(BenchResult(**out))


def test_bench_amp_on_cpu_is_a_clear_error(runner, error_of):
    result = runner.invoke(cli, ["bench", "basic", "--amp", "--device", "cpu", "--steps", "1"])
    assert error_of(result).arguments == ("amp",) and "Traceback" not in result.output


def test_a_failing_compile_is_a_clear_error(runner, monkeypatch):
    """On the CPU the training step's fused passes fall back to the plain operations with a warning;
    the inference model, compiled whole, is the error."""
    def no_compiler(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler here")

    compile_with = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_with(fn, backend=no_compiler, **kw))
    monkeypatch.setattr(fused, "tap_sums", fused.Compiled(fused.tap_sums.function, fused.tap_sums.what))  # fails here only
    result = runner.invoke(cli, ["bench", "basic", "--compile", "--steps", "1", "--batch-size", "2"])
    assert result.exit_code == 2, result.output
    assert ("warning: torch.compile of the depthwise weight gradient failed (RuntimeError: no C++ compiler here); "
            "training goes on with the plain operations") in result.output
    assert "torch.compile failed on this machine (RuntimeError: no C++ compiler here)" in result.output
    assert "without compile" in result.output and "compile is --compile" in result.output
    assert "Traceback" not in result.output


# ---- the fast backward of dilated depthwise convs -----------------------------------------------

@pytest.mark.parametrize("n, c, hw, k, dilation", [
    (2, 8, (4, 4), 3, 2),  # basic's c4a.dw: the taps reach past the 4x4 map
    (2, 6, (32, 32), 3, 8),  # the dilated model's c4a.dw
    (3, 4, (12, 10), 5, (2, 4)),  # rectangular dilation, 5x5
    (1, 5, (7, 6), (3, 1), 3),  # a 3x1 kernel, odd sizes
])
def test_fast_dilated_depthwise_equals_the_conv(n, c, hw, k, dilation):
    torch.manual_seed(0)
    kh, kw = (k, k) if isinstance(k, int) else k
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    conv = nn.Conv2d(c, c, (kh, kw), padding=(dh * (kh - 1) // 2, dw * (kw - 1) // 2), dilation=(dh, dw),
                     groups=c).double()
    to_channels_last(conv)
    x = torch.randn(n, c, *hw, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    reference = conv(x)
    with FastDilatedDepthwise():
        fast = conv(x)
    assert reference.grad_fn.name() == "ConvolutionBackward0"
    assert fast.grad_fn.name() == "DilatedDepthwiseConvBackward"  # the mode took the call
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)
    g = torch.randn_like(reference)
    for a, b in zip(torch.autograd.grad(fast, (x, conv.weight, conv.bias), g),
                    torch.autograd.grad(reference, (x, conv.weight, conv.bias), g)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("images_per_chunk", [1, 2, 5])
def test_depthwise_weight_grad_over_chunks_of_images(monkeypatch, images_per_chunk):
    """The weight gradient summed chunk by chunk (2 per chunk of 5 leaves a chunk of 1) equals the conv's."""
    torch.manual_seed(0)
    n, c, h, w = 5, 3, 6, 7
    monkeypatch.setattr(fastconv, "CHUNK_BYTES", images_per_chunk * c * h * w * 8)
    x = torch.randn(n, c, h, w, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, c, h, w, dtype=torch.float64)
    out = torch.nn.functional.conv2d(x, weight, None, 1, (2, 3), (2, 3), c)
    expected, = torch.autograd.grad(out, weight, g)
    got = fastconv.depthwise_weight_grad(x, g.contiguous(memory_format=torch.channels_last), (2, 3), (3, 3), (2, 3))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("why, weight_shape, kw", [
    ("undilated", (4, 1, 3, 3), dict(padding=1, dilation=1, groups=4)),
    ("dense", (4, 4, 3, 3), dict(padding=2, dilation=2, groups=1)),
    ("two filters per channel", (8, 1, 3, 3), dict(padding=2, dilation=2, groups=4)),
    ("strided", (4, 1, 3, 3), dict(stride=2, padding=2, dilation=2, groups=4)),
    ("not 'same'", (4, 1, 3, 3), dict(padding=1, dilation=2, groups=4)),
    ("even kernel", (4, 1, 2, 2), dict(padding=1, dilation=2, groups=4)),
    ("string padding", (4, 1, 3, 3), dict(padding="same", dilation=2, groups=4)),
])
def test_fast_dilated_depthwise_leaves_other_convs_alone(why, weight_shape, kw):
    x, w = torch.randn(1, 4, 8, 8), torch.randn(weight_shape)
    assert _dilated_depthwise(x, w, None, **kw) is None, why
    with FastDilatedDepthwise():
        out = torch.nn.functional.conv2d(x, w, None, **kw)
    assert out.grad_fn is None
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w, None, **kw))


@pytest.mark.parametrize("name", ["basic", "dilated", "egrr"])
def test_fast_dilated_depthwise_training_step_matches(name):
    """A whole forward and backward of a zoo model with dilated depthwise convs (egrr's are
    functional, one shared kernel per call) gives the same loss and gradients under the mode."""
    torch.manual_seed(0)
    model = zoo.build(name).double().train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def loss_and_grads():
        torch.manual_seed(1)  # the same gate noise
        loss = model(x).logsumexp(1).sum()
        return [loss, *torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)]

    reference = loss_and_grads()
    with FastDilatedDepthwise():
        fast = loss_and_grads()
    for a, b in zip(fast, reference):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
