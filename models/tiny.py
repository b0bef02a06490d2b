"""NetCIFAR10_Tiny (seed 003): a 36,170-parameter CIFAR-10 CNN, RF 45 before the head.

Depthwise-separable blocks with BN/ReLU after both the depthwise and the pointwise conv, one
stride-2 downsample (on the first C4 depthwise conv), dilations 2 and 3, no pooling, no dropout.
"""
import torch.nn as nn

from .registry import register
from .blocks import ConvBlock, DWSeparable


def _dws(in_channels, out_channels, stride=1, dilation=1):
    return DWSeparable(in_channels, out_channels, stride=stride, dilation=dilation, dw_norm=True)


@register("tiny", dataset="cifar10", seed_doc="Tuning CNN for CIFAR10 with Depthwise & Dilated Convolutions")
class NetCIFAR10_Tiny(nn.Module):
    """Tiny DW-separable + dilated CNN, 1x1-conv head (36,170 params)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = nn.Sequential(ConvBlock(3, 16), ConvBlock(16, 24))
        self.c2 = nn.Sequential(_dws(24, 36), _dws(36, 36, dilation=2))
        self.c3 = nn.Sequential(_dws(36, 48), _dws(48, 48))
        self.c4 = nn.Sequential(
            _dws(48, 64, stride=2),  # 32 -> 16
            _dws(64, 64, dilation=2),
            _dws(64, 64, dilation=3),
            _dws(64, 64),
            _dws(64, 64),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(64, num_classes, kernel_size=1)  # with bias: no BN follows

    def forward(self, x):
        x = self.c4(self.c3(self.c2(self.c1(x))))
        return self.head(self.gap(x)).flatten(1)
