"""EGRR: Entropy-Gated Recursive Residual network for CIFAR-100 (seed 001), under 500K params.

Each stage applies ONE set of weights T times (depth folded into time). Step t of a stage:

    z = SymConv1x1(h)                       # W = L + L^T, only the lower triangle is stored
    g = EntropyGate(h)                      # per-pixel weights over dilations (1, 2, 4)
    z = sum_d g_d * DW3x3_d(z)              # one depthwise kernel used at all three dilations
    h = h + ReLU6(ISNorm_t(z))              # a BatchNorm of its own for every step t

The trainer drives the depth warm-up (`set_depth`) and the gate temperature (`set_tau`) through the
hooks of cnnscope.core.hooks: `on_progress`, `load_settings`, `skips_weights`. Setting
`model.record_gates = True` makes every forward fill `model.gate_maps` with one dict per executed
step, in execution order: {"stage": stage index (0-based), "step": step index (0-based),
"probs": (B, 3, H, W) gate probabilities, "variance": (B, H, W) channel-mean local variance},
all detached.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register

# (channels, recursion steps T, stride) per stage, from the seed README.
STAGES = ((48, 3, 1), (96, 4, 2), (96, 4, 1), (192, 5, 2), (192, 5, 1), (192, 5, 1),
          (384, 6, 2), (384, 6, 1))


class SymConv1x1(nn.Module):
    """1x1 conv with a symmetric C x C weight W = L + L^T (no bias).

    Only the lower triangle L (diagonal included) is stored: C(C+1)/2 numbers instead of C^2.
    """

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.tril = nn.Parameter(torch.randn(channels * (channels + 1) // 2) * channels ** -0.5)
        # Where each stored number goes in L; derived from `channels`, so not saved.
        self.register_buffer("tril_index", torch.tril_indices(channels, channels), persistent=False)

    def weight_matrix(self):
        lower = self.tril.new_zeros(self.channels, self.channels)
        lower = lower.index_put((self.tril_index[0], self.tril_index[1]), self.tril)
        return lower + lower.T

    def forward(self, x):
        return F.conv2d(x, self.weight_matrix()[:, :, None, None])

    def extra_repr(self):
        return f"channels={self.channels}"


class EntropyGate(nn.Module):
    """Per-pixel soft choice among DILATIONS, driven by the local (3x3) variance of the input.

    Training: Gumbel-softmax at temperature tau (soft); eval: softmax(logits / tau).
    Returns (probs (B, 3, H, W), variance (B, C, H, W)).
    """

    DILATIONS = (1, 2, 4)

    def __init__(self, channels, tau=1.0):
        super().__init__()
        self.tau = tau
        hidden = channels // 4
        self.head = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, len(self.DILATIONS), 1),
        )

    def forward(self, x):
        # Border pixels average over their valid neighbours only, so V is a true local variance.
        mean = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        mean_sq = F.avg_pool2d(x * x, 3, stride=1, padding=1, count_include_pad=False)
        variance = (mean_sq - mean * mean).clamp_min(0)
        logits = self.head(variance)
        if self.training:
            probs = F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=1)
        else:
            probs = F.softmax(logits / self.tau, dim=1)
        return probs, variance


class GatedDilatedDepthwise(nn.Module):
    """ONE depthwise 3x3 kernel (no bias) applied at every dilation of EntropyGate.DILATIONS; the
    outputs are mixed per pixel by the gate probabilities, which a trainer may run fused
    (`fusable_chain`: cnnscope.core.hooks)."""
    fused_chain = None

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, 3, 3))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def fusable_chain(probs, *branches):
        """The branches mixed per pixel: sum over i of probs[:, i] * branches[i]."""
        out = 0
        for i, branch in enumerate(branches):
            out = out + probs[:, i:i + 1] * branch
        return out

    def forward(self, x, probs):
        branches = [F.conv2d(x, self.weight, padding=dilation, dilation=dilation, groups=x.shape[1])
                    for dilation in EntropyGate.DILATIONS]
        return (self.fused_chain or self.fusable_chain)(probs, *branches)


class ISNorm(nn.Module):
    """Iteration-specific normalisation: one BatchNorm (own statistics, own gamma_t/beta_t) per step."""

    def __init__(self, channels, steps):
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(steps))

    def forward(self, x, step):
        return self.norms[step](x)


class EGRRStage(nn.Module):
    """An optional projection (when channels or stride change), then `steps` recursion steps that
    share every weight except the step's ISNorm."""

    def __init__(self, in_channels, channels, steps, stride):
        super().__init__()
        self.steps = steps
        if in_channels != channels or stride != 1:
            pool = [nn.AvgPool2d(2, stride=2)] if stride == 2 else []
            self.proj = nn.Sequential(*pool, nn.Conv2d(in_channels, channels, 1, bias=False),
                                      nn.BatchNorm2d(channels))
        else:
            self.proj = nn.Identity()
        self.sym = SymConv1x1(channels)
        self.gate = EntropyGate(channels)
        self.dw = GatedDilatedDepthwise(channels)
        self.norm = ISNorm(channels, steps)
        self.act = nn.ReLU6()

    def forward(self, h, max_steps=None, gate_maps=None):
        """Runs min(steps, max_steps) steps; appends {"step", "probs", "variance"} per step to
        `gate_maps` when it is a list."""
        h = self.proj(h)
        for t in range(min(self.steps, max_steps or self.steps)):
            probs, variance = self.gate(h)
            z = self.dw(self.sym(h), probs)
            h = h + self.act(self.norm(z, t))
            if gate_maps is not None:
                gate_maps.append({"step": t, "probs": probs.detach(),
                                  "variance": variance.mean(dim=1).detach()})
        return h


@register("egrr", dataset="cifar100", seed_doc="EGRR: Entropy-Gated Recursive Residual Network")
class EGRRNet(nn.Module):
    """Entropy-gated recursive residual net: symmetric shared 1x1, per-pixel dilation gate."""

    def __init__(self, num_classes=100, stem_channels=32, stages=STAGES, dropout=0.1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU6(),
        )
        in_channels, blocks = stem_channels, []
        for channels, steps, stride in stages:
            blocks.append(EGRRStage(in_channels, channels, steps, stride))
            in_channels = channels
        self.stages = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        self.depth = None  # None: every stage runs all of its steps
        self.record_gates = False
        self.gate_maps = []

    def set_depth(self, max_steps):
        """Depth warm-up: every stage runs at most `max_steps` (>= 1) steps; None runs them all."""
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        self.depth = max_steps

    def set_tau(self, tau):
        """Temperature of every entropy gate (Gumbel-softmax in training, softmax in eval)."""
        for module in self.modules():
            if isinstance(module, EntropyGate):
                module.tau = tau

    def on_progress(self, epoch, recipe):
        """The trainer's hook, before every training batch (cnnscope.core.hooks): the depth ramps
        linearly from 1 to full over recipe.depth_warmup_epochs, the temperature decays
        exponentially from recipe.tau_start at epoch 0 to recipe.tau_end at the start of the last
        epoch (the whole last epoch of a one-epoch run); a field of 0 leaves its setting alone.
        `epoch` counts fractions too, so a warm-up shorter than one epoch still ramps; at whole
        epochs the values are the seed's per-epoch ones. -> {"depth": ..., "tau": ...} as set."""
        settings = {}
        if recipe.depth_warmup_epochs > 0:
            warmup = recipe.depth_warmup_epochs
            settings["depth"] = None if epoch >= warmup else 1 + int((self.full_depth() - 1) * epoch / warmup)
        if recipe.tau_start > 0:
            progress = min(1.0, epoch / max(1, recipe.epochs - 1))
            settings["tau"] = recipe.tau_start * (recipe.tau_end / recipe.tau_start) ** progress
        self.load_settings(settings)
        return settings

    def load_settings(self, settings):
        """Depth and temperature as on_progress returned them (a checkpoint's)."""
        if "depth" in settings:
            self.set_depth(settings["depth"])
        if "tau" in settings:
            self.set_tau(settings["tau"])

    def skips_weights(self):
        """Whether some stage runs fewer steps than it has (its later steps' norms go unused)."""
        return self.depth is not None and self.depth < self.full_depth()

    def full_depth(self):
        return max(stage.steps for stage in self.stages)

    def forward(self, x):
        self.gate_maps = []
        x = self.stem(x)
        for index, stage in enumerate(self.stages):
            steps = [] if self.record_gates else None
            x = stage(x, self.depth, steps)
            self.gate_maps += [{"stage": index, **step} for step in steps or []]
        return self.fc(self.dropout(self.pool(x).flatten(1)))
