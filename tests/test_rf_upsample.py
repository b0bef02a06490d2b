"""Receptive fields after upsampling (issue 14): the units of an upsampled map do not all see the same
window. The analysis gives each unit its own (from PyTorch's interpolation index rules), reports the
range and the centre unit's, and --verify checks the units unit by unit. Every unit of a row is also
measured here by an independent gradient probe (positive weights, float64) and compared in full.

Notation: conv 3x3 s2 p1 on the input gives [-1, 1] + 2q: unit q sees pixels 2q - 1 .. 2q + 1.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnscope.core.rf import receptive_field, verify_receptive_field
from test_rf import UNet, positive_run


class Up(nn.Module):
    """conv 3x3 s2 p1, then F.interpolate(**how) (then a 3x3 conv when `after`)."""

    def __init__(self, after=False, **how):
        super().__init__()
        self.how = how
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.after = nn.Conv2d(4, 4, 3, padding=1) if after else nn.Identity()

    def forward(self, x):
        return self.after(F.interpolate(self.down(x), **self.how))


class FCN(nn.Module):
    """Two stride-2 stages, bilinear x2, a 3x3 conv, a skip, bilinear to the input size (align_corners)."""

    def __init__(self):
        super().__init__()
        self.d1, self.d2 = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1)
        self.mid, self.head = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a = self.d1(x)
        b = self.mid(F.interpolate(self.d2(a), scale_factor=2, mode="bilinear", align_corners=False))
        return F.interpolate(self.head(a + b), size=x.shape[-2:], mode="bilinear", align_corners=True)


def row_supports(model, shape):
    """[(first, last) input column with a nonzero gradient] for every unit of the output's centre row."""
    out, x = positive_run(model, shape)
    row = (out.shape[-2] - 1) // 2
    found = []
    for u in range(out.shape[-1]):
        (grad,) = torch.autograd.grad(out[0, :, row, u].sum(), x, retain_graph=True)
        hits = (grad[0].abs().sum(0) > 0).any(dim=0).nonzero().flatten().tolist()
        found.append((hits[0], hits[-1]))
    return found


def analysed_supports(result, n):
    """The analysis's window of every unit of a row, clipped to the n input pixels."""
    axis = result.final[1]
    return [(max(0, round(lo)), min(n - 1, round(hi)))
            for lo, hi in (axis.unit_window(u) for u in range(result.final_size[1]))]


@pytest.mark.parametrize("model, windows, centre", [
    # src = (o + 0.5)/2 - 0.5 clamped at 0: units 0 and 31 land on one input unit (3), the others
    # between two neighbours 2 pixels apart (3 + 2 = 5)
    (Up(scale_factor=2, mode="bilinear"), (3, 5), 5),
    # 8 units to 15 with align_corners: src = o * 7/14 = o/2: even units on one input unit (3), odd
    # between two (5); the centre unit 7 is odd
    (Up(size=(15, 15), mode="bilinear", align_corners=True), (3, 5), 5),
    # bicubic: four taps q-1 .. q+2 (3 + 3*2 = 9) inside; o = 0 (src -0.25) clamps to units {0, 1}: 5;
    # o = 1 (src 0.25) to {0, 1, 2}: 7
    (Up(scale_factor=2, mode="bicubic"), (5, 9), 9),
    # nearest x2: unit o is input unit o // 2 (3); the 3x3 conv after it reads o-1 .. o+1, always two
    # input units: 5 for every unit
    (Up(True, scale_factor=2, mode="nearest"), (5, 5), 5),
    # nearest-exact 8 -> 12 units: o reads floor((o + 0.5) * 2/3) = 0,1,1,2,3,3,4,5,5,6,7,7; the 3x3 conv
    # after it reads o-1 .. o+1: two distinct input units (5) or three (7, o = 3, 6, 9); centre o = 5: {3, 4}
    (Up(True, size=(12, 12), mode="nearest-exact"), (5, 7), 5),
    # area 8 -> 4 units (adaptive average pooling): o reads units 2o and 2o + 1: 3 + 2 = 5 everywhere
    (Up(size=(4, 4), mode="area"), (5, 5), 5),
])
def test_upsampled_units_see_their_own_windows(model, windows, centre):
    result = receptive_field(model, (3, 16, 16))
    assert result.final_range_hw == (windows, windows) and result.final_centre_hw == (centre, centre)
    assert result.varies == (windows[0] != windows[1]) and result.final_rf == windows[1]
    assert analysed_supports(result, 16) == row_supports(model, (3, 16, 16))
    result.probe = verify_receptive_field(model, result)
    sampled = {hi - lo + 1 for lo, hi in (result.final[0].unit_window(c.unit) for c in result.probe.units
                                          if c.axis == 0)}  # the probe's H side is the analysed 16
    assert result.verified and sampled >= set(windows)  # the extremes among them


def test_chained_bilinear_fcn_unit_by_unit():
    """The FCN's units do not all see alike; every unit of a row equals the independent probe, and
    --verify (which grows the input, re-analysing there: the last upsampling is to the input's size)
    agrees on the units it samples, the extremes included."""
    model = FCN()
    result = receptive_field(model, (3, 32, 32))
    (lo, hi), _ = result.final_range_hw
    assert result.varies and lo < hi and result.final_rf == hi
    assert analysed_supports(result, 32) == row_supports(model, (3, 32, 32))
    result.probe = verify_receptive_field(model, result)
    assert result.verified and len(result.probe.units) > 2
    json = result.to_json()
    assert json["varies"] and json["final_window_range_hw"] == [[lo, hi], [lo, hi]]


def test_transposed_unet_verified_per_unit():
    """test_rf.UNet: units see 25 or 29 (derived there); the probe checks a unit of each size and the
    centre unit (25), where the old centre-only probe reported 25 against the analysis's 29."""
    result = receptive_field(UNet(), (3, 40, 40))
    assert result.final_range_hw == ((25, 29), (25, 29)) and result.final_centre_hw == (25, 25)
    result.probe = verify_receptive_field(UNet(), result)
    assert result.verified
    assert {c.probe[1] - c.probe[0] + 1 for c in result.probe.units} == {25, 29}
