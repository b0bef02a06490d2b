"""Receptive fields through the operations modern CNNs use beyond conv and pool (issue 14): channels-last
blocks, strided slicing and pixel (un)shuffle, hand-written convolutions (unfold -> matmul -> fold),
gates and global mixing. Every expected number is derived by hand in the test's docstring, and the
gradient probe of --verify (an independent measurement) must agree unit by unit.

Notation: a map of jump j whose unit u sees input pixels [lo + u*j, hi + u*j] is written [lo, hi] j.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnscope.core.rf import receptive_field, verify_receptive_field


def probed(model, shape=(3, 32, 32)):
    result = receptive_field(model, shape)
    result.probe = verify_receptive_field(model, result)
    assert result.verified, result.probe
    return result


def conv(i=4, o=4, k=3, s=1):
    return nn.Conv2d(i, o, k, stride=s, padding=k // 2)


# ---- channels-last blocks --------------------------------------------------------------------------

class ChannelsLast(nn.Module):
    """conv 3x3 -> channels-last: LayerNorm over C, Linear over C, GELU, Linear -> back -> conv 3x3.
    `move` says how H and W go to the middle and back."""

    def __init__(self, move):
        super().__init__()
        self.move = move
        self.c1, self.c2 = conv(3, 8), conv(8, 8)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        x = self.c1(x)
        if self.move == "permute":
            y = x.permute(0, 2, 3, 1)
        elif self.move == "movedim":
            y = torch.movedim(x, 1, -1)
        else:
            y = x.transpose(1, 3).transpose(1, 2)  # N x W x H x C, then N x H x W x C
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))) * 0.5
        y = y.permute(0, 3, 1, 2) if self.move != "movedim" else torch.movedim(y, -1, 1)
        return self.c2(x + y)


@pytest.mark.parametrize("move", ["permute", "movedim", "transpose"])
def test_channels_last_block_is_pointwise(move):
    """Channel-wise ops (LayerNorm, Linear over C) keep each unit's window: two 3x3 convs, RF 3 + 2 = 5."""
    result = probed(ChannelsLast(move))
    assert result.final_rf == 5 and result.final_jump == 1 and not result.warnings


class Tokens(nn.Module):
    """conv 3x3 -> flatten H, W into tokens -> Linear over channels per token -> unflatten -> grouped
    view that keeps the grid -> conv 3x3 with stride 2."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc, self.c2 = conv(3, 8), nn.Linear(8, 8), conv(8, 8, s=2)

    def forward(self, x):
        x = self.c1(x)
        n, c, h, w = x.shape
        t = self.fc(x.flatten(2).transpose(1, 2))  # N x HW x C
        x = t.transpose(1, 2).reshape(n, c, h, w)
        x = x.view(n, 2, c // 2, h, w).flip(1).reshape(n, c, h, w)  # a channel shuffle by view
        return self.c2(x)


def test_tokens_and_grid_keeping_views():
    """Flattening H and W and unflattening them again keeps every unit's window: 3, then the stride-2
    3x3 conv adds 2: RF 5, jump 2."""
    result = probed(Tokens())
    assert result.final_rf == 5 and result.final_jump == 2


# ---- strided slicing, pixel (un)shuffle ------------------------------------------------------------

class Slice(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = conv(12 if kind in ("space_to_depth", "unshuffle") else 3)

    def forward(self, x):
        if self.kind == "space_to_depth":  # the YOLOv5 Focus stem
            x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        elif self.kind == "offset":
            x = x[..., 1::2, ::2]
        else:
            x = F.pixel_unshuffle(x, 2)
        return self.conv(x)


def test_offset_strided_slice_is_a_window():
    """x[..., 1::2, ::2]: unit v is pixel (2v + 1, 2v): [1, 1] 2 along H, [0, 0] 2 along W. The 3x3 conv
    (p1) reads units v-1 .. v+1: H [-1, 3] 2, W [-2, 2] 2: RF 5 on both axes, centres one pixel apart."""
    result = probed(Slice("offset"))
    assert result.final_rf == 5 and result.final_jump == 2
    (h, w) = result.final
    assert (h.lo, h.hi, w.lo, w.hi) == (-1, 3, -2, 2)


@pytest.mark.parametrize("kind", ["space_to_depth", "unshuffle"])
def test_space_to_depth_is_a_2x2_window(kind):
    """The four phase slices concatenated (or pixel_unshuffle(2)): unit v sees pixels 2v and 2v + 1:
    [0, 1] 2. The 3x3 conv adds 2 jumps: [-2, 3] 2, RF 6."""
    result = probed(Slice(kind))
    assert result.final_rf == 6 and result.final_jump == 2
    assert (result.final[0].lo, result.final[0].hi) == (-2, 3)


def test_pixel_shuffle_is_nearest_upsampling_per_phase():
    """conv 3x3 (RF 3), pixel_shuffle(2): output unit o is input unit o // 2 (jump 1/2), RF 3. A 3x3 conv
    on it reads o-1 .. o+1, i.e. input units (o-1)//2 .. (o+1)//2: two neighbours for every o, so RF
    3 + 1 = 4 for every unit."""
    model = nn.Sequential(conv(3, 16), nn.PixelShuffle(2), conv(4, 4))
    result = probed(model, (3, 16, 16))
    assert result.final_rf == 4 and result.final_jump == 0.5 and not result.varies
    assert [l.rf_out[0] for l in result.layers] == [3, 3, 4]


# ---- unfold -> matmul -> fold --------------------------------------------------------------------

class UnfoldConv(nn.Module):
    """A 3x3 conv written by hand (stride s): unfold, a Linear over C*k*k per block, back to a grid by
    view (s = 1) or F.fold with kernel 1 (s = 2); then a real 3x3 conv."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride
        self.unfold = nn.Unfold(3, padding=1, stride=stride)
        self.weight = nn.Parameter(torch.randn(8, 3 * 9) / 9)
        self.conv = conv(8, 8)

    def forward(self, x):
        n, _, h, w = x.shape
        cols = self.unfold(x)  # N x 27 x L
        y = self.weight @ cols  # N x 8 x L
        if self.stride == 1:
            y = y.view(n, 8, h, w)
        else:
            y = F.fold(y, (h // 2, w // 2), kernel_size=1)
        return self.conv(y)


@pytest.mark.parametrize("stride, rf, jump", [(1, 5, 1), (2, 7, 2)])
def test_unfold_matmul_is_the_convolution(stride, rf, jump):
    """unfold(3, p1, stride s) -> matmul is a 3x3 conv: [-1, 1] s; the 3x3 conv after it adds 2 jumps:
    RF 3 + 2s (5 at s = 1, 7 at s = 2)."""
    result = probed(UnfoldConv(stride))
    assert (result.final_rf, result.final_jump) == (rf, jump)
    assert [l.op for l in result.layers][:1] == ["unfold"]


def test_tensor_unfold_einsum_is_the_convolution():
    """x.unfold(2, 3, 2).unfold(3, 3, 2) (after padding by 1) and an einsum against a weight: a 3x3
    stride-2 conv, [-1, 1] 2; then a 3x3 conv: RF 3 + 2*2 = 7, jump 2."""

    class Patches(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.rand(8, 3, 3, 3))
            self.conv = conv(8, 8)

        def forward(self, x):
            patches = F.pad(x, (1, 1, 1, 1)).unfold(2, 3, 2).unfold(3, 3, 2)  # N x C x H' x W' x 3 x 3
            return self.conv(torch.einsum("nchwij,ocij->nohw", patches, self.weight))

    result = probed(Patches())
    assert (result.final_rf, result.final_jump) == (7, 2) and not result.warnings


def test_fold_is_a_transposed_window():
    """A 2x2 stride-2 conv and a 2x2 stride-2 transposed conv by hand: unfold(2, stride 2), a matmul
    mixing each block's 12 values, fold(2, stride 2). Unit o of the output comes from block o // 2,
    which sees pixels [2(o//2), 2(o//2) + 1]: RF 2 for every unit, jump 1."""

    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Parameter(torch.rand(12, 12))

        def forward(self, x):
            return F.fold(self.mix @ F.unfold(x, 2, stride=2), x.shape[-2:], 2, stride=2)

    result = probed(Blocks(), (3, 16, 16))
    assert result.final_rf == 2 and result.final_jump == 1 and not result.varies


# ---- gates and global mixing -------------------------------------------------------------------------

class GatedStack(nn.Module):
    """Six squeeze-excitation blocks (hard-sigmoid gates, as MobileNetV3 and RegNetY): the old probe
    took the gates for identities, squared the map at every block and lost the gradient to overflow."""

    def __init__(self, gate=nn.Hardsigmoid):
        super().__init__()
        self.convs = nn.ModuleList(conv(3 if i == 0 else 8, 8) for i in range(6))
        self.fcs = nn.ModuleList(nn.Linear(8, 8) for _ in range(6))
        self.gate = gate()

    def forward(self, x):
        for c, fc in zip(self.convs, self.fcs):
            x = c(x)
            x = x * self.gate(fc(x.mean((2, 3))))[:, :, None, None]
        return x


@pytest.mark.parametrize("gate", [nn.Hardsigmoid, nn.Sigmoid])
def test_gated_stack_is_global_and_verified(gate):
    """Six 3x3 convs: local window 13; the gates make every unit see the whole input."""
    result = probed(GatedStack(gate))
    assert result.final_rf == "global" and result.final_window_hw == (13, 13)
    assert result.probe.rf == (32, 32)


class Attention(nn.Module):
    """conv 3x3 -> single-head attention over the H*W tokens -> back to the grid -> conv 3x3, with or
    without the residual around the attention."""

    def __init__(self, residual, fused=False):
        super().__init__()
        self.residual, self.fused = residual, fused
        self.c1, self.c2 = conv(3, 8), conv(8, 8)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        x = self.c1(x)
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        if self.fused:
            y = F.scaled_dot_product_attention(self.q(t), self.k(t), self.v(t))
        else:
            y = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) / 8 ** 0.5, dim=-1) @ self.v(t)
        y = y.transpose(1, 2).reshape(n, c, h, w)
        return self.c2(x + y if self.residual else y)


class Mixers(nn.Module):
    """Global mixing without attention: a pooled map fed back (x * mean), a matmul across W by a
    learned W x W matrix, an einsum against a pooled vector."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c1, self.c2 = conv(3, 8), conv(8, 8)
        self.mix = nn.Parameter(torch.rand(32, 32))

    def forward(self, x):
        x = self.c1(x)
        if self.kind == "mean":
            x = x * x.mean((2, 3), keepdim=True)
        elif self.kind == "matmul_w":
            x = x @ self.mix
        else:
            x = x + torch.einsum("nchw,nc->nhw", x, x.mean((2, 3)))[:, None]
        return self.c2(x)


class NonLocal(nn.Module):
    """A non-local block (Wang et al., 2018): 1x1 embeddings flattened to N x C x HW, a softmax over
    the HW x HW affinities by matmul, back to the grid, a 1x1 conv and the residual; or the same
    through nn.MultiheadAttention."""

    def __init__(self, mha=False):
        super().__init__()
        self.conv = conv(3, 8)
        self.theta, self.phi, self.g, self.out = (nn.Conv2d(8, 8, 1) for _ in range(4))
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True) if mha else None

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        if self.mha is not None:
            t = x.flatten(2).transpose(1, 2)
            return x + self.mha(t, t, t)[0].transpose(1, 2).reshape(n, c, h, w)
        theta, phi, g = (f(x).view(n, c, -1) for f in (self.theta, self.phi, self.g))
        affinity = torch.softmax(torch.matmul(theta.permute(0, 2, 1), phi), dim=-1)
        y = torch.matmul(affinity, g.permute(0, 2, 1)).permute(0, 2, 1).contiguous().view(n, c, h, w)
        return x + self.out(y)


@pytest.mark.parametrize("model, window", [
    (Attention(True), 5), (Attention(False), 5), (Attention(True, fused=True), 5), (Mixers("mean"), 5),
    (Mixers("einsum"), 5), (NonLocal(), 3), (NonLocal(mha=True).eval(), 3)],
    ids=["attention+residual", "attention", "scaled_dot_product_attention", "mean-fed-back", "einsum",
         "non-local", "multihead-attention"])
def test_global_mixing_is_global_beside_the_local_window(model, window):
    """Every unit sees the whole input; the local window is that of the 3x3 convs: 3, or 5 for two."""
    result = probed(model)
    assert result.final_rf == "global" and result.final_window_hw == (window, window) and not result.warnings
    assert result.probe.rf == (32, 32)


def test_matmul_across_w_is_global_along_w_only():
    """x @ M (M: W x W) mixes each row: global along W, the two 3x3 convs' 5 along H."""
    result = probed(Mixers("matmul_w"))
    assert result.final_rf == "5xglobal" and result.probe.rf == (5, 32)
