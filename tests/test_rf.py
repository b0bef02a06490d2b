"""Receptive fields from the live graph (cnnscope.core.rf, cnnscope.runs.rf, `cnnscope rf`).

The analysis is checked against the seed's table, against hand-derived figures, and against the
independent gradient probe of --verify on torchvision models and on the graphs that tools which
chain modules in call order get wrong (strided shortcuts, concatenated branches, a module reused
at several dilations, functional convs, rectangular kernels).
"""
import json
import re
import sys
import textwrap

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from cnnscope import zoo
from cnnscope import render
from cnnscope.cli import cli
from cnnscope.core.rf import effective_receptive_field, receptive_field, rf_box, tracer, verify_receptive_field
from cnnscope.errors import CnnscopeError
from cnnscope.render.rf import _cells
from cnnscope.runs import rf as rf_runs
from cnnscope.runs.checkpoint import save_checkpoint
from cnnscope.runs.datasets import load_dataset
from cnnscope.runs.spec import build_model

# The seed README's table for Net (shared/seeds/002, section 4.1), row for row.
SEED_NET_ROWS = """\
| 1 | c1a.conv | 3 | 1 | 1 | 1 | 1 | 3 | 1 |
| 2 | c1b.conv | 3 | 1 | 1 | 3 | 1 | 5 | 1 |
| 3 | c1c.conv | 3 | 2 | 1 | 5 | 1 | 7 | 2 |
| 4 | c2a.dw | 3 | 1 | 1 | 7 | 2 | 11 | 2 |
| 5 | c2a.pw | 1 | 1 | 1 | 11 | 2 | 11 | 2 |
| 6 | c2b.dw | 3 | 2 | 1 | 11 | 2 | 15 | 4 |
| 7 | c2b.pw | 1 | 1 | 1 | 15 | 4 | 15 | 4 |
| 8 | c3a.conv | 1 | 1 | 1 | 15 | 4 | 15 | 4 |
| 9 | c3b.dw | 3 | 2 | 1 | 15 | 4 | 23 | 8 |
| 10 | c3b.pw | 1 | 1 | 1 | 23 | 8 | 23 | 8 |
| 11 | c4a.dw | 3 | 1 | 2 | 23 | 8 | 55 | 8 |
| 12 | c4a.pw | 1 | 1 | 1 | 55 | 8 | 55 | 8 |
| 13 | c4b.conv | 1 | 1 | 1 | 55 | 8 | 55 | 8 |
"""


def probed(model, shape=(3, 32, 32)):
    """Analysis plus the gradient probe."""
    result = receptive_field(model, shape)
    result.probe = verify_receptive_field(model, result)
    return result


def layer(result, name):
    (row,) = [l for l in result.layers if l.name == name]
    return row


# ---- the zoo ----------------------------------------------------------------------------------------

def test_basic_reproduces_the_seed_table_exactly():
    text = render.to_markdown(receptive_field(zoo.build("basic")), "RF: Net (32x32 input)")
    assert text.startswith("### RF: Net (32x32 input)\n\n| # | Layer | k | s | d | RF_in | jump_in | RF_out | "
                           "jump_out |\n|---:|:------|:-:|:-:|:-:|-----:|--------:|-------:|---------:|\n")
    assert SEED_NET_ROWS + "\n**Final RF:** 55 &nbsp;&nbsp; **Final jump:** 8\n" in text


@pytest.mark.parametrize("name, final_rf, final_jump, first_exceeding", [
    ("basic", 55, 8, "c4a.dw"),
    ("dilated", 45, 1, "c4a.dw"),
    ("tiny", 45, 2, "c4.2.dw"),
])
def test_zoo_final_rf(name, final_rf, final_jump, first_exceeding):
    result = receptive_field(zoo.build(name))
    assert (result.final_rf, result.final_jump) == (final_rf, final_jump)
    assert result.first_exceeding.name == first_exceeding
    assert result.coverage == 1.0 and result.warnings == []


def test_ectied_one_block_six_calls_at_their_own_dilations_equals_probe():
    result = probed(zoo.build("ectied"))
    depthwise = [l for l in result.layers if l.name.startswith("block#") and l.name.endswith(":conv2d")]
    assert [l.name for l in depthwise] == [f"block#{i}:conv2d" for i in range(1, 7)]
    assert [l.d for l in depthwise] == [(d, d) for d in (1, 1, 2, 1, 2, 3)]
    # stem 3; per call: depthwise 2d*jump, DivisiveNorm's 3x3 mean 2*jump; blur (3x3, s2) between
    assert result.final_rf == 3 + sum(2 * d + 2 for d in (1, 1, 2)) + 2 + sum(2 * (2 * d + 2) for d in (1, 2, 3))
    assert result.verified and result.probe.rf == result.final_rf_hw


def test_egrr_gated_dilations_and_recursion_equal_probe():
    stages = ((16, 2, 1), (32, 2, 2), (32, 1, 1))  # the real EGRRStage code, at a probe-sized scale
    result = probed(zoo.build("egrr", stages=stages))
    dw = [l.d for l in result.layers if l.name.startswith("stages.0.dw#1")]
    assert dw == [(1, 1), (2, 2), (4, 4)]  # one kernel, three dilations, per step
    assert result.verified and result.probe.rf == result.final_rf_hw
    assert result.warnings == []


def test_swrn_soft_shared_convs_equal_probe():
    result = probed(zoo.build("swrn", depth=16, width=1))
    assert "stage2.blocks.1.conv1" in [l.name for l in result.layers]  # an SConv2d, named as a layer
    assert result.verified and result.probe.rf == result.final_rf_hw


# ---- torchvision models (no weights) ---------------------------------------------------------------

# The analysis against --verify on every torchvision family: tests/test_rf_torchvision.py

def test_densenet121_rf_follows_its_block_config():
    result = receptive_field(torchvision.models.densenet121(), (3, 224, 224))
    expected, jump = 7 + 2 * 2, 4  # 7x7/2 conv, 3x3/2 max pool
    for i, layers in enumerate((6, 12, 24, 16)):
        expected += layers * 2 * jump  # one 3x3 conv per dense layer
        if i < 3:  # transition: 2x2/2 average pool
            expected += jump
            jump *= 2
    assert (result.final_rf, result.final_jump) == (expected, 32) == (2071, 32)


# ---- hand-built graphs --------------------------------------------------------------------------------

class ResidualDown(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(3, 8, 1, stride=2)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class TwoBranchConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch3 = nn.Conv2d(3, 4, 3, padding=1)
        self.branch5 = nn.Conv2d(3, 4, 5, padding=2)
        self.merge = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.merge(torch.cat([self.branch3(x), self.branch5(x)], dim=1))


class DilatedKernel(nn.Module):
    """A kernel whose dilation is an argument of the call."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3))

    def forward(self, x, dilation):
        return F.conv2d(x, self.weight, padding=dilation, dilation=dilation)


class ThreeCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = DilatedKernel()

    def forward(self, x):
        x = self.stem(x)
        for dilation in (1, 2, 3):
            x = self.block(x, dilation)
        return x


class FunctionalConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(F.conv2d(x, self.weight, stride=2, padding=1))


class Rectangular(nn.Module):
    def __init__(self):
        super().__init__()
        self.row = nn.Conv2d(3, 4, (1, 7), padding=(0, 3))
        self.down = nn.Conv2d(4, 4, 3, stride=(2, 1), padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.down(self.row(x))).flatten(1)


def test_strided_shortcut_reads_the_block_input():
    result = probed(ResidualDown())
    assert [l.name for l in result.layers] == ["conv1", "conv2", "shortcut"]
    assert layer(result, "shortcut").rf_in == (1, 1)  # not conv2's output: a chain would say 7
    assert (result.final_rf, result.final_jump) == (7, 2)  # 3, then 3x3 at jump 2; the 1x1 adds nothing
    assert result.verified and result.warnings == []


def test_concat_of_different_kernels_takes_the_larger():
    result = probed(TwoBranchConcat())
    assert layer(result, "merge").rf_in == (5, 5)
    assert result.final_rf == 7 and result.verified


def test_module_called_three_times_at_dilations_1_2_3():
    result = probed(ThreeCalls())
    assert [(l.name, l.d) for l in result.layers] == [
        ("stem", (1, 1)), ("block#1", (1, 1)), ("block#2", (2, 2)), ("block#3", (3, 3))]
    assert result.final_rf == 1 + 2 + 4 + 6 and result.verified


def test_functional_conv2d_is_a_row_with_its_call_arguments():
    result = probed(FunctionalConv())
    first = result.layers[0]
    assert (first.name, first.k, first.s, first.rf_out, first.jump_out) == (
        "FunctionalConv:conv2d", (3, 3), (2, 2), (3, 3), (2, 2))
    assert (result.final_rf, result.final_jump) == (7, 2) and result.verified


def test_rectangular_kernel_per_axis():
    result = probed(Rectangular())
    assert _cells(result.layers[0])[2] == "1x7"
    assert (result.final_rf, result.final_jump) == ("3x9", "2x1")
    assert result.final_rf_hw == (3, 9) and result.probe.rf == (3, 9) and result.verified


def test_misaligned_merge_is_flagged_and_takes_the_union():
    class EvenKernelResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 2)

        def forward(self, x):
            return x + self.conv(F.pad(x, (0, 1, 0, 1)))  # 2x2 window centred half a pixel off

    result = probed(EvenKernelResidual())
    assert any("misaligned" in w and "centre offsets [0, 0.5]" in w for w in result.warnings)
    assert result.final_rf == 2 and result.verified


def test_unknown_ops_are_named_never_silently_identity():
    class Rolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.roll(x, 1, dims=-1)).mean((2, 3))

    class Subsampled(Rolled):
        def forward(self, x):  # rows picked by a list: no window (strided slices are, tests/test_rf_ops.py)
            return self.conv(x[:, :, [0, 2, 5]]).mean((2, 3))

    result = receptive_field(Rolled())
    assert any("'roll'" in w and "treated as pointwise" in w for w in result.warnings)
    with pytest.raises(CnnscopeError, match="'getitem' changes the spatial layout"):
        receptive_field(Subsampled())


def test_squeeze_excitation_makes_the_rf_global():
    class SqueezeExcite(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            x = self.conv(x)
            gate = torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]
            return (x * gate).mean((2, 3))

    result = probed(SqueezeExcite())
    assert result.final_rf == "global" and result.final_window_hw == (3, 3)
    assert result.verified and result.probe.rf == (32, 32)


def test_upsampling_and_pooling():
    class UNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.out = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.out(self.up(self.pool(self.down(x))))

    result = probed(UNetish())
    assert [(l.name, l.rf_out, l.jump_out) for l in result.layers] == [
        ("down", (3, 3), (1, 1)), ("pool", (4, 4), (2, 2)), ("up", (4, 4), (1, 1)), ("out", (6, 6), (1, 1))]
    assert result.verified


def positive_run(model, shape):
    """(output, input) of a float64 copy of `model` with positive weights and zero biases on a positive
    input: the nonzero input gradient of a unit is then exactly the set of pixels it depends on."""
    import copy
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.fill_(0.0 if name.endswith("bias") else 1.0 / p[0].numel())
    x = (torch.rand(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5)
    x.requires_grad_()
    return net(x), x


def unit_extents(model, shape=(3, 40, 40)):
    """Per axis, the extent of the nonzero input gradient of EVERY output unit, measured (float64,
    positive weights, zero biases, positive input): for H, the gradient of the sum of row r of the
    output over channels and columns (with separable windows its H extent is that of each unit of row
    r). -> ([extent of row r], [extent of column c])."""
    out, x = positive_run(model, shape)
    extents = []
    for axis in (0, 1):
        found = []
        for i in range(out.shape[2 + axis]):
            unit = out[:, :, i, :] if axis == 0 else out[:, :, :, i]
            (grad,) = torch.autograd.grad(unit.sum(), x, retain_graph=True)
            hits = (grad[0].abs().sum(0) > 0).any(dim=1 - axis).nonzero().flatten().tolist()
            found.append(hits[-1] - hits[0] + 1)
        extents.append(found)
    return extents


def test_transposed_conv_k2_s2_adds_nothing():
    """Output unit o of a k=2 s=2 transposed conv gets input unit (o - t)/2 for the one tap t = o mod 2:
    every unit sees exactly one input unit, so the RF stays the 3x3 conv's 3 (the old rule, the hull
    of both phases, said 3 + (k-1)/s = 3.5). The two phases see different windows: unit o sees
    [-1 + q, 1 + q] with q = o // 2, i.e. [-1, 1] + o/2 for even o and [-1.5, 0.5] + o/2 for odd o."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 4, 2, stride=2))
    result = receptive_field(model, (3, 40, 40))
    assert result.final_rf == 3 and result.final_jump == 0.5
    assert result.final[0].phases == ((-1, 1), (-1.5, 0.5))
    rows, cols = unit_extents(model)
    assert max(rows) == max(cols) == 3 and set(rows) == {2, 3}  # 2: units at the border, clipped


def test_transposed_conv_k4_s2_p1_on_a_stride_2_trunk():
    """conv 3x3 s2 p1 then conv 3x3 s1 p1: input unit i sees [-3 + 2i, 3 + 2i] (RF 7, jump 2). A k=4 s=2
    p=1 transposed conv: output o gets input unit (o + 1 - t)/2 for the taps t in [0, 4) with o + 1 - t
    even, i.e. t in {1, 3} for even o (input units o/2 and o/2 - 1) and t in {0, 2} for odd o (input
    units (o+1)/2 and (o-1)/2): two neighbouring input units in every phase, one jump (2 pixels)
    apart, so RF = 7 + 2 = 9 for every unit (jump 1). The old rule said 7 + (k-1)*2/s = 10."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1))
    result = probed(model, (3, 40, 40))
    assert result.final_rf == 9 and result.final_jump == 1
    assert result.verified and result.probe.rf == (9, 9)
    rows, cols = unit_extents(model)
    assert max(rows) == max(cols) == 9


class UNet(nn.Module):
    """Two stride-2 conv downs, two k=2 s=2 transposed-conv ups, skip concatenations."""

    def __init__(self):
        super().__init__()
        conv = lambda i, o, s=1: nn.Conv2d(i, o, 3, stride=s, padding=1)
        self.enc1, self.down1, self.enc2, self.down2, self.mid = (
            conv(3, 4), conv(4, 4, 2), conv(4, 4), conv(4, 4, 2), conv(4, 4))
        self.up2, self.dec2 = nn.ConvTranspose2d(4, 4, 2, stride=2), conv(8, 4)
        self.up1, self.dec1 = nn.ConvTranspose2d(4, 4, 2, stride=2), conv(8, 4)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.down1(e1))
        d2 = self.dec2(torch.cat([self.up2(self.mid(self.down2(e2))), e2], 1))
        return self.dec1(torch.cat([self.up1(d2), e1], 1))


def test_transposed_convs_in_a_unet():
    """By hand (windows relative to unit u * jump): enc1 [-1, 1] j1; down1 [-2, 2] j2; enc2 [-4, 4];
    down2 [-6, 6] j4; mid [-10, 10] (RF 21). up2 (k2 s2, j2): unit o = 2q + t sees mid unit q, i.e.
    [-10, 10] - 2t: phases (even, odd) = [-10, 10], [-12, 8]; the skip enc2 [-4, 4] lies inside both.
    dec2 (3x3 on j2): even o unions odd o-1 [-14, 6], even o [-10, 10], odd o+1 [-10, 10] -> [-14, 10];
    odd o unions [-12, 8], [-12, 8], [-8, 12] -> [-12, 12]: RF 25 both. up1 (j1): o = 2q + t sees
    dec2 unit q (phase q mod 2) shifted by -t: phases o mod 4 = [-14, 10], [-15, 9], [-12, 12],
    [-13, 11] (25 each; enc1 inside). dec1 (3x3 on j1): o mod 4 = 0: [-14, 10] (25); 1: [-15, 9] U
    [-15, 9] U [-11, 13] = [-15, 13] (29); 2: [-16, 8] U [-12, 12] U [-12, 12] = [-16, 12] (29);
    3: [-13, 11] (25). So units see 25 or 29: the RF (max) is 29; the old rule (hull of the phases
    at every transposed conv) said 30."""
    model = UNet()
    result = receptive_field(model, (3, 40, 40))
    assert [(l.name, l.rf_out[0], l.jump_out[0]) for l in result.layers] == [
        ("enc1", 3, 1), ("down1", 5, 2), ("enc2", 9, 2), ("down2", 13, 4), ("mid", 21, 4),
        ("up2", 21, 2), ("dec2", 25, 2), ("up1", 25, 1), ("dec1", 29, 1)]
    assert result.final_rf == 29
    assert result.final[0].phases == ((-14, 10), (-15, 13), (-16, 12), (-13, 11))
    rows, cols = unit_extents(model)
    assert max(rows) == max(cols) == 29
    assert {rows[i] for i in range(16, 24)} == {25, 29}  # interior units: both sizes, period 4
    assert [rows[i] for i in range(16, 20)] == [25, 29, 29, 25]


def test_analysis_leaves_the_model_as_it_was():
    model = zoo.build("swrn", depth=16, width=1)  # one TemplateBank reached from several modules
    model.train()
    before = {name: (t, t.clone()) for name, t in model.state_dict(keep_vars=True).items()}
    receptive_field(model)
    after = model.state_dict(keep_vars=True)
    assert all(after[name] is t and torch.equal(t, copy) for name, (t, copy) in before.items())
    assert model.training


def test_value_dependent_forward_falls_back_to_real_tensors(monkeypatch):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.wide = nn.Conv2d(3, 4, 5, padding=2)

        def forward(self, x):  # a branch on values: shapes alone (meta tensors) cannot run this
            return self.conv(x) if x.sum() >= 0 else self.wide(x)

    assert receptive_field(Branchy()).final_rf == 3
    resnet = torchvision.models.resnet18()
    fast = receptive_field(resnet)
    monkeypatch.delitem(sys.modules, "torch._dynamo")  # as without torchvision: CPU tensors
    slow = receptive_field(resnet)
    assert (fast.layers, fast.final, fast.final_op) == (slow.layers, slow.final, slow.final_op)


META_BUILD = textwrap.dedent('''
    import torch
    import torch.nn as nn

    class BranchesOnWeights(nn.Module):
        """A forward that branches on a weight's value: neither meta pass can run it."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.wide = nn.Conv2d(3, 4, 5, padding=2)

        def forward(self, x):
            return self.conv(x) if self.conv.weight.abs().sum() > 0 else self.wide(x)

    class ReadsValues(nn.Module):
        """A constructor that reads a tensor's value: it cannot run on the meta device."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 7 if torch.ones(1).item() > 0 else 3, padding=3)

        def forward(self, x):
            return self.conv(x)
''')


@pytest.mark.parametrize("spec, final_rf", [("torchvision.models:resnet18", 435), ("meta_build.py:BranchesOnWeights", 3),
                                            ("meta_build.py:ReadsValues", 7)])
def test_report_builds_on_meta_where_it_can(tmp_path, monkeypatch, spec, final_rf):
    """`cnnscope rf SPEC` skips the weight initialisation by building on the meta device, and
    falls back to a CPU build where the constructor or the forward needs values: same tables."""
    (tmp_path / "meta_build.py").write_text(META_BUILD)
    monkeypatch.chdir(tmp_path)
    built = []
    original = receptive_field
    monkeypatch.setattr(rf_runs, "receptive_field",
                        lambda model, shape: built.append(next(model.parameters()).device.type)
                        or original(model, shape))
    result = rf_runs.report(spec, input_shape=(3, 224, 224) if "resnet" in spec else (3, 32, 32))
    assert result.final_rf == final_rf
    assert built == {"torchvision.models:resnet18": ["meta"], "meta_build.py:BranchesOnWeights": ["meta", "cpu"],
                     "meta_build.py:ReadsValues": ["cpu"]}[spec]
    assert result.to_json() == original(build_model(spec), result.input_shape).to_json()  # as built on the CPU


# ---- the command ------------------------------------------------------------------------------------

def test_cli_file_spec_with_neighbour_import_and_ctor(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rf_neighbour_layers.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def conv3x3(channels, stride=1):
            return nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
    """))
    (tmp_path / "stacked.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        from rf_neighbour_layers import conv3x3

        class Stacked(nn.Module):
            def __init__(self, depth, stride=1):
                super().__init__()
                self.stem = nn.Conv2d(3, 8, 1)
                self.convs = nn.Sequential(*(conv3x3(8, stride) for _ in range(depth)))

            def forward(self, x):
                return self.convs(self.stem(x)).mean((2, 3))
    """))
    result = runner.invoke(cli, ["rf", "stacked.py:Stacked", "--ctor", "depth=3", "--ctor", "stride=2",
                                 "--input", "3", "64", "64", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [l["name"] for l in data["layers"]] == ["stem", "convs.0", "convs.1", "convs.2"]
    assert (data["final_rf"], data["final_jump"]) == (1 + 2 + 4 + 8, 8)
    assert data["final_map"] == [8, 8] and data["input"] == [3, 64, 64]


def test_cli_json_keys(runner):
    result = runner.invoke(cli, ["rf", "dilated", "--format", "json", "--verify"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"final_rf", "final_jump", "layers", "warnings", "final_rf_hw", "coverage",
            "first_exceeding", "verify"} <= data.keys()
    assert (data["final_rf"], data["final_jump"], data["final_rf_hw"]) == (45, 1, [45, 45])
    assert set(data["layers"][0]) == {"index", "name", "op", "k", "s", "d", "p", "rf_in", "jump_in",
                                      "rf_out", "jump_out", "global_in", "global_out"}
    assert data["layers"][-1]["rf_out"] == [45, 45] and data["warnings"] == []
    assert data["verify"]["match"] is True and data["verify"]["probe_rf"] == 45


def test_cli_verify_mismatch_exits_1_with_both_numbers(runner, monkeypatch):
    window = tracer.sliding_window
    monkeypatch.setattr(tracer, "sliding_window", lambda axis, k, s, p, d: window(axis, k, s, p, 1))  # forget dilation
    result = runner.invoke(cli, ["rf", "basic", "--verify", "--format", "markdown"])
    assert result.exit_code == 1
    assert "RF mismatch: the analysis gives 39, the gradient probe 55." in result.stderr
    assert "RF 55 DOES NOT MATCH the analysis (39)" in result.stdout


def test_cli_table_format(runner):
    result = runner.invoke(cli, ["rf", "ectied", "--format", "table", "--title", "ECTied at 32x32"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # rich wraps long lines at the terminal width
    assert "ECTied at 32x32" in text and "Final RF: 55 Final jump: 2" in text
    assert "│ 11 │ block#3:conv2d │ 3 │ 1 │ 2 │ 11 │ 1 │ 15 │ 1 │" in text
    assert "RF exceeds the input from layer 20 (block#5:conv2d)" in text  # 19 + 2*2*2 at jump 2 > 32


def test_cli_without_spec_or_run_is_a_clean_error(runner, error_of):
    result = runner.invoke(cli, ["rf"])
    assert error_of(result).arguments == ("erf_run",) and "Traceback" not in result.output


def test_cli_erf_heatmap_and_radius(runner, tmp_path):
    torch.manual_seed(0)
    run = tmp_path / "basic-run"
    fake = load_dataset("fake")  # a freshly built model, saved as `cnnscope train` saves one
    save_checkpoint({"model_spec": "basic", "ctor": {}, "model": zoo.build("basic").state_dict(),
                     "dataset": "fake", "classes": fake.classes, "mean": fake.mean, "std": fake.std},
                    run / "checkpoints" / "last.pth")
    (run / ".cnnscope.lock").touch()  # a run folder: the commands write into it
    result = runner.invoke(cli, ["rf", "basic", "--erf", str(run), "--erf-images", "4", "--format", "json"])
    assert result.exit_code == 0, result.output
    erf = json.loads(result.stdout)["erf"]
    png = run / "plots" / "erf.png"
    assert erf["figure"] == str(png) and erf["images"] == 4 and erf["dataset"] == "fake"
    assert 0 < erf["radius95"] < 32 * 2 ** 0.5
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 100 and pixels[..., :3].std() > 0.05  # a drawn figure, not a blank canvas
    markdown = runner.invoke(cli, ["rf", "--erf", str(run), "--erf-images", "4", "--format", "markdown"])
    shown = re.search(r"95% of the gradient mass lies within ([0-9.]+) px of the centre", markdown.stdout)
    assert abs(float(shown.group(1)) - erf["radius95"]) <= 0.051


def test_effective_rf_radius_holds_95_percent_of_the_mass():
    torch.manual_seed(0)
    model = ResidualDown().eval()
    result = receptive_field(model)
    erf = effective_receptive_field(model, torch.randn(3, 3, 32, 32), result)
    heat, (cy, cx), radius = erf.heatmap, erf.centre, erf.radius95
    assert heat.shape == (32, 32) and abs(heat.sum() - 1) < 1e-9
    assert (cy, cx) == (14, 14)  # unit (7, 7) of the 16x16 final map, jump 2
    offsets = np.indices(heat.shape) - np.array([cy, cx])[:, None, None]
    distance = np.hypot(*offsets)
    assert heat[distance <= radius].sum() >= 0.95 > heat[distance < radius].sum()
    inside = np.abs(offsets).max(axis=0) <= 3  # the theoretical RF, 7x7
    assert (heat[~inside] == 0).all() and (heat[inside] > 0).sum() > 40
    assert rf_box(result, (cy, cx)) == (11, 11, 17, 17)


def test_erf_figure_labels_its_axes_and_explains_the_centre_marker(tmp_path, monkeypatch):
    from cnnscope.render import plots

    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig.axes[0]) or path)
    heat = np.zeros((8, 8))
    heat[3, 4] = 1.0
    plots.erf_heatmap(heat, tmp_path / "erf.png", centre=(3, 4), box=(1, 2, 5, 6), radius=0.0,
                      box_label="theoretical RF 5 px")
    ax = drawn[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("input x (px)", "input y (px)")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "theoretical RF 5 px" and labels[1].startswith("95% of the mass")
    assert labels[2] == "centre of the probed output unit's RF"
    marker = next(line for line in ax.get_lines() if line.get_label() == labels[2])
    assert (marker.get_xdata()[0], marker.get_ydata()[0], marker.get_marker()) == (4, 3, "+")
