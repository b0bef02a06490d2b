"""Weight-tied ECNet (seed 000): ONE expansion-contraction block applied N times.

Each call of the block gets its own dilation from the schedule, so the same weights see several
spatial scales; the parameter count does not depend on the number of iterations. At the defaults
(C=64, N=6, E=4) the network has 38,475 parameters; the seed README's "~115K" does not match its
own configuration.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register
from .blocks import BlurPool2d, DivisiveNorm

MAX_ITERATIONS = 1000  # a bound: each iteration is a full-resolution block call (rf traces ~4 ms each)


def gn_groups(channels, max_groups=16):
    """The largest divisor of `channels` that is <= max_groups (GroupNorm's group count)."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


class ECBlock(nn.Module):
    """Expand 1x1 -> GN -> SiLU -> depthwise 3x3 (dilation given per call) -> DivisiveNorm
    -> contract 1x1 -> GN; out = x + gamma * branch."""

    def __init__(self, channels, expansion=4, layer_scale=1e-3):
        super().__init__()
        hidden = channels * expansion
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.gn1 = nn.GroupNorm(gn_groups(hidden), hidden)
        self.act = nn.SiLU()
        # A raw depthwise kernel rather than nn.Conv2d: its dilation changes from call to call.
        self.dw_weight = nn.Parameter(torch.empty(hidden, 1, 3, 3))
        self.dw_bias = nn.Parameter(torch.zeros(hidden))
        nn.init.kaiming_normal_(self.dw_weight, mode="fan_out", nonlinearity="relu")
        self.divnorm = DivisiveNorm()
        self.contract = nn.Conv2d(hidden, channels, 1, bias=False)
        self.gn2 = nn.GroupNorm(gn_groups(channels), channels)
        self.gamma = nn.Parameter(torch.full((1,), layer_scale))  # small residual scale at init

    def forward(self, x, dilation=1):
        out = self.act(self.gn1(self.expand(x)))
        out = F.conv2d(out, self.dw_weight, self.dw_bias, padding=dilation, dilation=dilation,
                       groups=out.shape[1])
        out = self.gn2(self.contract(self.divnorm(out)))
        return x + self.gamma * out


@register("ectied", dataset="cifar10", seed_doc="Weight-Tied ECNet")
class ECTiedNet(nn.Module):
    """One weight-tied ECBlock applied N times with a dilation schedule (38,475 params at defaults)."""

    def __init__(self, num_classes=10, channels=64, iterations=6, expansion=4,
                 dilations=(1, 1, 2, 1, 2, 3)):
        super().__init__()
        if iterations > MAX_ITERATIONS:
            raise ValueError(f"iterations={iterations} is more than the {MAX_ITERATIONS} this model allows: each "
                             "iteration calls the block once more at full resolution")
        self.iterations = iterations
        # The schedule is cycled when there are more iterations than entries.
        self.dilations = tuple(dilations[t % len(dilations)] for t in range(iterations))
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False),
            nn.GroupNorm(gn_groups(channels), channels),
            nn.SiLU(),
        )
        self.block = ECBlock(channels, expansion)
        self.blur = BlurPool2d(channels)  # applied once, after iteration N//2
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for t, dilation in enumerate(self.dilations):
            if t == self.iterations // 2:  # after N//2 iterations: 32 -> 16
                x = self.blur(x)
            x = self.block(x, dilation=dilation)
        return self.fc(x.mean(dim=(2, 3)))
