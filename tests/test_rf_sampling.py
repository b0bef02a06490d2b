"""Receptive fields where output units read other positions than their own (issue 25): shifts and
mirrors (roll, flip), adaptive pooling that does not divide its input, antialiased downsampling,
sampling at positions computed from the data (deformable convs, grid_sample), transposed convs that
leave units with no input, and a looped dilated/strided residual net whose probe once raised a false
alarm. Every figure is derived by hand in the test's docstring; the analysis's window of every unit
of a row must equal an independent gradient measurement (test_rf_upsample.row_supports), and
--verify (its own probe) must agree.

Notation: conv 3x3 p1 on the input gives unit u the pixels [u-1, u+1]; a window is (first, last)
pixel, and pixels beyond the image (padding) count as in every conventional RF analysis.
"""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from cnnscope import render
from cnnscope.cli import cli
from cnnscope.core.rf import receptive_field, verify_receptive_field
from test_rf_upsample import analysed_supports, row_supports


def verified(model, shape, clipped=False):
    result = receptive_field(model, shape)
    result.probe = verify_receptive_field(model, result)
    assert result.verified and result.probe.clipped == clipped, result.probe
    return result


def windows(result, axis=1):
    return [result.final[axis].unit_window(u) for u in range(result.final_size[axis])]


def conv(i=4, o=4, k=3, **kw):
    return nn.Conv2d(i, o, k, padding=k // 2, **kw)


# ---- shifts and mirrors -------------------------------------------------------------------------------

class Rolled(nn.Module):
    """conv 3x3, torch.roll by 2 along W (Swin's shifted windows), conv 3x3."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = conv(3), conv()

    def forward(self, x):
        return self.c2(torch.roll(self.c1(x), 2, dims=-1))


def test_roll_shifts_the_window_circularly():
    """16 units along W. Rolled unit o is c1's unit c = (o - 2) mod 16: pixels [c-1, c+1]. c2 reads
    rolled units v-1 .. v+1 (-1 and 16 are padding: nothing):
      v = 0: o 0, 1 -> c 14, 15 -> [13, 16] (4);  v = 1: o 0, 1, 2 -> c 14, 15, 0 -> [-1, 16] (18);
      v = 2: c 15, 0, 1 -> [-1, 16] (18);  v = 3 .. 14: c v-3 .. v-1 -> [v-4, v] (5);
      v = 15: o 14, 15 -> c 12, 13 -> [11, 14] (4).
    The seam's units see both ends of the image: RF (the largest) 18 along W, the centre unit 7's
    window [3, 7] (5, two pixels left of an unrolled one's); H is untouched: 5."""
    model = Rolled()
    result = receptive_field(model, (3, 16, 16))
    assert windows(result) == [(13, 16), (-1, 16), (-1, 16), *((v - 4, v) for v in range(3, 15)), (11, 14)]
    assert result.final_rf == "5x18" and result.final_range_hw == ((5, 5), (4, 18))
    assert result.final_centre_hw == (5, 5) and result.varies
    assert analysed_supports(result, 16) == row_supports(model, (3, 16, 16))
    assert verified(model, (3, 16, 16)).final_rf == "5x18"


class FlipTTA(nn.Module):
    """Flip test-time augmentation of a causal conv along W: y(x) + flip(y(flip(x))), y = a (1, 3)
    conv after two pixels of padding on the left."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, (1, 3))

    def y(self, x):
        return self.conv(F.pad(x, (2, 0)))

    def forward(self, x):
        return self.y(x) + torch.flip(self.y(torch.flip(x, [-1])), [-1])


def test_flip_mirrors_the_window_and_the_merge_widens_it():
    """y sees [u-2, u]. Flipped: unit o of flip(x) is pixel 15-o; y on it reads flipped units
    v-2 .. v (the two padded ones see nothing): pixels [15-v, 17-v] clipped to the image, and the flip
    back gives unit u = 15-v the mirrored window [u, u+2] (unit 14: [14, 15], unit 15: [15, 15]).
    The sum sees both: [u-2, u+2], 5 pixels where one branch alone sees 3; unit 14 [12, 15] (4),
    unit 15 [13, 15] (3). H: the kernel is one row, RF 1."""
    model = FlipTTA()
    result = receptive_field(model, (3, 8, 16))
    assert windows(result) == [*((u - 2, u + 2) for u in range(14)), (12, 15), (13, 15)]
    assert result.final_rf == "1x5" and result.final_range_hw == ((1, 1), (3, 5)) and result.final_centre_hw == (1, 5)
    assert analysed_supports(result, 16) == row_supports(model, (3, 8, 16))
    verified(model, (3, 8, 16))


# ---- uneven adaptive pooling, antialiasing ---------------------------------------------------------------

class UnevenPool(nn.Module):
    """conv 3x3, adaptive_avg_pool2d to 3x3 (8 does not divide by 3), conv 3x3."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = conv(3), conv()

    def forward(self, x):
        return self.c2(F.adaptive_avg_pool2d(self.c1(x), 3))


def test_adaptive_pool_that_does_not_divide_has_whole_pixel_windows():
    """Pool unit o averages c1's units floor(8o/3) .. ceil(8(o+1)/3) - 1: 0..2 -> [-1, 3] (5),
    2..5 -> [1, 6] (6), 5..7 -> [4, 8] (5). c2 reads pool units v-1 .. v+1 (beyond the three:
    nothing): v = 0: [-1, 6] (8), v = 1: [-1, 8] (10), v = 2: [1, 8] (8). Whole pixels, never the
    fractional 8/3-jump window; RF 10 (the largest, the centre unit's), range 8 .. 10. The pool's
    windows grow with the input: at any size they reach its border, so --verify checks them clipped."""
    model = UnevenPool()
    result = receptive_field(model, (3, 8, 8))
    assert [row.rf_out for row in result.layers] == [(3, 3), (6, 6), (10, 10)]
    assert windows(result) == [(-1, 6), (-1, 8), (1, 8)]
    assert result.final_rf == 10 and result.final_range_hw == ((8, 10), (8, 10)) and result.final_centre_hw == (10, 10)
    assert analysed_supports(result, 8) == row_supports(model, (3, 8, 8))
    assert verified(model, (3, 8, 8), clipped=True).probe.input_size == (18, 18)


class Antialiased(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode, self.conv = mode, conv(3)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=0.5, mode=self.mode, antialias=True)


@pytest.mark.parametrize("mode, units, rf", [
    # bilinear: PyTorch stretches the triangle filter by the scale 2: support 2 around the centre
    # 2o + 1, units int(2o - 0.5) .. 2o + 2 with weights 1/4, 3/4, 3/4, 1/4: 4 units, [2o-2, 2o+3]
    # (6); o = 0 clamps to units 0..2 ([-1, 3], 5), o = 7 to 13..15 ([12, 16], 5). Without the
    # filter: units 2o, 2o+1, [2o-1, 2o+2] (4).
    ("bilinear", [(-1, 3), *((2 * o - 2, 2 * o + 3) for o in range(1, 7)), (12, 16)], 6),
    # bicubic: Keys' cubic stretched to support 4: units 2o-3 .. 2o+4 at (j - 3.5)/2 = +-0.25 .. +-1.75,
    # all non-zero: [2o-4, 2o+5] (10); clamped: o = 0: units 0..4, o = 1: 0..6, o = 6: 9..15, o = 7: 11..15
    ("bicubic", [(-1, 5), (-1, 7), *((2 * o - 4, 2 * o + 5) for o in range(2, 6)), (8, 16), (10, 16)], 10),
])
def test_antialiased_downsampling_reads_the_filter_support(mode, units, rf):
    model = Antialiased(mode)
    result = receptive_field(model, (3, 16, 16))
    assert windows(result) == units and result.final_rf == rf
    assert analysed_supports(result, 16) == row_supports(model, (3, 16, 16))
    verified(model, (3, 16, 16))


# ---- data-dependent sampling ------------------------------------------------------------------------------

class Deformable(nn.Module):
    """conv 3x3; offsets from a 3x3 conv of its map; a 3x3 deformable conv (torchvision); conv 3x3."""

    def __init__(self):
        super().__init__()
        self.c1, self.offsets, self.c2 = conv(3), conv(4, 18), conv()
        self.deform = torchvision.ops.DeformConv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.c1(x)
        return self.c2(self.deform(x, self.offsets(x)))


class Transformer(nn.Module):
    """conv 3x3, then grid_sample of its map: by an affine grid from pooled features (a spatial
    transformer) or by a flow computed by a 3x3 conv (a warp); then conv 3x3."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.c1, self.c2 = kind, conv(3), conv()
        self.theta, self.flow = nn.Linear(4, 6), conv(4, 2)

    def forward(self, x):
        x = self.c1(x)
        n, _, h, w = x.shape
        if self.kind == "affine":
            grid = F.affine_grid(self.theta(x.mean((2, 3))).view(n, 2, 3), (n, 4, h, w), align_corners=False)
        else:
            base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), (n, 4, h, w), align_corners=False)
            grid = base + self.flow(x).permute(0, 2, 3, 1)
        return self.c2(F.grid_sample(x, grid, align_corners=False))


@pytest.mark.parametrize("model, window, probe_rf", [
    # fixed offsets: the 3x3 conv [u-2, u+2]; the offsets' conv sees [u-2, u+2] too; c2: 7
    (Deformable(), 7, (7, 7)),
    # the identity grid reads c1's own unit ([u-1, u+1]); the grid comes from pooled features:
    # every unit sees the whole input, also in the probe; c2: 5
    (Transformer("affine"), 5, (32, 32)),
    # the flow's conv sees [u-2, u+2]: joined with c1's window, 5; c2: 7
    (Transformer("flow"), 7, (7, 7)),
], ids=["deform_conv2d", "affine_grid", "flow_warp"])
def test_data_dependent_sampling_is_global_beside_the_fixed_offset_window(model, window, probe_rf):
    """The units read where the data says: any pixel, so the RF is global (data-dependent); beside it
    the window of the fixed offsets (zero offsets, the identity grid), which --verify's probe measures
    by sampling there with the positions' gradient kept."""
    result = verified(model, (3, 32, 32))
    assert result.final_rf == "global" and result.final_window_hw == (window, window)
    assert result.data_dependent_hw == (True, True) and result.probe.rf == probe_rf
    data = result.to_json()
    assert data["data_dependent_hw"] == [True, True] and data["final_window_hw"] == [window, window]
    assert "they can see any pixel, so the RF is global" in render.to_markdown(result)


# ---- units that see nothing -------------------------------------------------------------------------------

def test_transposed_conv_with_stride_and_dilation_leaves_empty_units():
    """ConvTranspose2d(k=3, s=2, d=2) on an 8-unit map (conv 3x3: unit i sees [i-1, i+1]): input unit
    i feeds outputs 2i + 2t, t = 0..2, so odd outputs get nothing (9 of the 19), and output 2q reads
    units q-2 .. q: [q-3, q+1] (5). The centre unit 9 sees nothing: the centre is unit 8 (the nearest
    that sees the input; the old code died unpacking None)."""
    model = nn.Sequential(conv(3), nn.ConvTranspose2d(4, 4, 3, stride=2, dilation=2))
    result = receptive_field(model, (3, 8, 8))
    assert windows(result) == [(q - 3, q + 1) if o % 2 == 0 else None for o, q in ((o, o // 2) for o in range(19))]
    assert result.empty_units_hw == (9, 9) and result.centre_unit_hw == (8, 8) and result.final_centre_hw == (5, 5)
    assert result.final_rf == 5 and result.final_range_hw == ((5, 5), (5, 5))
    result.probe = verify_receptive_field(model, result)
    assert result.verified and {c.probe for c in result.probe.units if c.unit % 2} == {(0, -1)}
    assert result.to_json()["empty_units_hw"] == [9, 9]
    assert "see no input at all: 9 rows and 9 columns" in render.to_markdown(result)


# ---- the set-2 false alarm ---------------------------------------------------------------------------------

class LoopedResidual(nn.Module):
    """A stem, then while the map is larger than 4: two residual blocks of one shared dilated conv
    (d = 2), and a stride-2 conv beside a 2x2 average pool. The loop's length depends on the input."""

    def __init__(self):
        super().__init__()
        self.stem, self.dilated = conv(3, 8), nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        while min(x.shape[-2:]) > 4:
            for _ in range(2):
                x = x + F.relu(self.dilated(x))
            x = F.relu(self.down(x)) + F.avg_pool2d(x, 2)
        return x.mean((2, 3))


def test_looped_dilated_strided_residual_net_verifies_without_a_false_alarm():
    """At 32x32 the loop runs at 32, 16 and 8 (jump 1, 2, 4): two dilated convs add 4 jumps each, the
    stride-2 conv one more on each side (the pool's window lies inside): 3 + 2*(4 + 8 + 16) +
    (2 + 4 + 8) = 73, jump 8. The probe once grew one axis with the other thin (8 pixels): the loop
    then ran once, the analysed call index pointed into another network, and the input grew to
    the limit with a support "still touching the border". Now the probe checks that the model at its
    input runs the analysed layers, and keeps the other axis at the analysed 32 where it does not."""
    model = LoopedResidual()
    result = verified(model, (3, 32, 32))
    assert (result.final_rf, result.final_jump) == (73, 8) and result.probe.rf == (73, 73)
    assert result.probe.input_size == (96, 96)


# ---- --verify's exit codes ---------------------------------------------------------------------------------

PROBE_FAILS = '''
import torch
import torch.nn as nn


class NoGradients(nn.Module):
    """Runs without autograd only: the analysis works, the probe cannot."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("this model runs under torch.no_grad() only")
        return self.conv(x)


class Rotated(NoGradients):
    def forward(self, x):
        return torch.rot90(self.conv(x), 1, (2, 3))
'''


@pytest.mark.parametrize("spec, code, message", [
    ("basic", 0, None),
    ("probe_fails.py:NoGradients", 2, "The gradient probe of NoGradients could not run: RuntimeError: this model"),
    ("probe_fails.py:Rotated", 2, "is unknown from layer 2 (Rotated) on: operation 'rot90'"),
])
def test_verify_exit_codes(runner, tmp_path, monkeypatch, spec, code, message):
    """0: the probe matches; 1: it does not (test_rf.test_cli_verify_mismatch_exits_1_with_both_numbers);
    2: it could not run, or the analysis has nothing to compare (unknown), or bad input."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "probe_fails.py").write_text(PROBE_FAILS)
    result = runner.invoke(cli, ["rf", spec, "--verify", "--format", "json"])
    assert result.exit_code == code, result.output
    if message:
        assert message in result.stderr and "Traceback" not in result.output
    else:
        assert json.loads(result.stdout)["verify"]["match"] is True
