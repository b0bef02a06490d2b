"""Receptive fields through maps cut into windows or patches by views and put back (issue 25): Swin's
window attention, a patch embedding by reshape, a space-to-depth stem. Every figure is derived by
hand in the test's docstring; the analysis's window of every unit of a row must equal an independent
gradient measurement (test_rf_upsample.row_supports), and --verify must agree.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnscope.core.rf import receptive_field, verify_receptive_field
from test_rf_upsample import analysed_supports, row_supports


def verified(model, shape):
    result = receptive_field(model, shape)
    result.probe = verify_receptive_field(model, result)
    assert result.verified, result.probe
    return result


def windows(result, axis=1):
    return [result.final[axis].unit_window(u) for u in range(result.final_size[axis])]


class WindowAttention(nn.Module):
    """conv 3x3; channels last; cut into 4x4 windows (Swin's window_partition); single-head
    attention within each window; put back (window_reverse); conv 3x3."""

    def __init__(self, size=4):
        super().__init__()
        self.size = size
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        x = self.c1(x).permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        s = self.size
        t = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        t = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2), -1) @ self.v(t)
        x = t.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return self.c2(x.permute(0, 3, 1, 2))


def test_window_attention_sees_its_window():
    """8 units a side, windows of 4: c1's unit u sees [u-1, u+1]; after the attention unit u sees
    its window's units 4(u//4) .. 4(u//4)+3: [4(u//4) - 1, 4(u//4) + 4] (6). c2 reads units v-1 ..
    v+1 (beyond the map the pattern of windows continues, as padding does in every RF): inside a
    window 6, across a window's edge two windows: v = 0: [-5, 4], 3 and 4: [-1, 8], 7: [3, 12]
    (10). RF 10 (the centre unit 3's), range 6 .. 10; on both axes."""
    model = WindowAttention()
    result = receptive_field(model, (3, 8, 8))
    assert windows(result) == [(-5, 4), (-1, 4), (-1, 4), (-1, 8), (-1, 8), (3, 8), (3, 8), (3, 12)]
    assert result.final_rf == 10 and result.final_range_hw == ((6, 10), (6, 10)) and result.final_centre_hw == (10, 10)
    assert analysed_supports(result, 8) == row_supports(model, (3, 8, 8))
    assert verified(model, (3, 8, 8)).final_rf == 10


class PatchEmbedding(nn.Module):
    """4x4 patches by view and permute, a Linear over each patch's 48 values (a ViT patch embedding
    without a conv), the tokens back to a 4x4 grid, conv 3x3."""

    def __init__(self):
        super().__init__()
        self.embed, self.conv = nn.Linear(48, 8), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        b, c, h, w = x.shape
        patches = x.view(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 4) * (w // 4), c * 16)
        tokens = self.embed(patches)  # b x 16 x 8
        return self.conv(tokens.transpose(1, 2).reshape(b, 8, h // 4, w // 4))


def test_patch_embedding_by_reshape_is_a_4x4_stride_4_window():
    """Token i sees pixels [4i, 4i+3] (4, jump 4), exactly the k=4 s=4 conv it replaces; the 3x3 conv
    on the 4x4 grid adds one jump each side: [4v-4, 4v+7], RF 12, jump 4."""
    model = PatchEmbedding()
    result = receptive_field(model, (3, 16, 16))
    assert windows(result) == [(4 * v - 4, 4 * v + 7) for v in range(4)]
    assert (result.final_rf, result.final_jump) == (12, 4) and not result.varies
    assert analysed_supports(result, 16) == row_supports(model, (3, 16, 16))
    verified(model, (3, 16, 16))


class SpaceToDepth(nn.Module):
    """TResNet's stem: each 2x2 block into the channels by view and permute, then a 1x1 conv (it sums
    the block's channels), then conv 3x3."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(12, 8, 1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        return self.c2(self.c1(x))


def test_space_to_depth_by_view_is_a_2x2_block():
    """Unit i of the 1x1 conv sums its block's four channels of each colour: pixels [2i, 2i+1] (2,
    jump 2); the 3x3 conv: [2i-2, 2i+3], RF 6."""
    model = SpaceToDepth()
    result = receptive_field(model, (3, 16, 16))
    assert windows(result) == [(2 * i - 2, 2 * i + 3) for i in range(8)]
    assert (result.final_rf, result.final_jump) == (6, 2)
    verified(model, (3, 16, 16))


def test_a_cut_never_put_back_is_unknown():
    """Two rows side by side in one (x.reshape(b, c, h/2, 2w)), then a 2x2 max pool over that: an
    element's row depends on both of its dimensions, no grid follows it: unknown from the reshape
    on, named."""

    class SideBySide(nn.Module):
        def forward(self, x):
            b, c, h, w = x.shape
            return F.max_pool2d(x.reshape(b, c, h // 2, 2 * w), 2)

    result = receptive_field(SideBySide(), (3, 16, 16))
    assert result.final_rf == "unknown" and result.unknown.op == "reshape" and result.unknown.layer == 1
    assert "cuts the map (1, 3, 16, 16) into [(1, 3, 8, 32)]" in result.unknown.detail
