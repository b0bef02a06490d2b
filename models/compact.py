"""Compact CIFAR-10 CNNs with depthwise-separable and dilated convs (seed 002).

`Net`: three stride-2 downsamples, one dilated conv in the last block (84,322 params, RF 55).
`NetDilated`: no downsampling at all, receptive field grown by dilations 2 -> 4 -> 8
(197,858 params, RF 45). Layer names match the seed's receptive-field tables.
"""
import torch.nn as nn

from .registry import register
from .blocks import ConvBlock, DWSeparable

SEED_DOC = "Compact CNNs with DW-Separable + Dilation (No MaxPool)"


@register("basic", dataset="cifar10", seed_doc=SEED_DOC)
class Net(nn.Module):
    """Compact CNN: 3 stride-2 downsamples, DW-separable blocks, final dilated conv (84,322 params)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1a = ConvBlock(3, 24)
        self.c1b = ConvBlock(24, 32)
        self.c1c = ConvBlock(32, 48, stride=2)  # 32 -> 16
        self.c2a = DWSeparable(48, 64)
        self.c2b = DWSeparable(64, 80, stride=2)  # 16 -> 8
        self.c3a = ConvBlock(80, 96, kernel_size=1)
        self.c3b = DWSeparable(96, 112, stride=2)  # 8 -> 4
        self.c4a = DWSeparable(112, 128, dilation=2)
        self.c4b = ConvBlock(128, 128, kernel_size=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        for layer in (self.c1a, self.c1b, self.c1c, self.c2a, self.c2b,
                      self.c3a, self.c3b, self.c4a, self.c4b):
            x = layer(x)
        return self.fc(self.gap(x).flatten(1))


@register("dilated", dataset="cifar10", seed_doc=SEED_DOC)
class NetDilated(nn.Module):
    """Stride-free compact CNN: receptive field grown by dilations 2, 4, 8 (197,858 params)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1a = ConvBlock(3, 24)
        self.c1b = ConvBlock(24, 32)
        self.c2a_dw = DWSeparable(32, 48, dilation=2)
        self.c2b_pw = ConvBlock(48, 48, kernel_size=1)
        self.c2c = ConvBlock(48, 64, dilation=2)
        self.c3a_pw = ConvBlock(64, 80, kernel_size=1)
        self.c3b = ConvBlock(80, 80, dilation=4)
        self.c3c = ConvBlock(80, 96, dilation=4)
        self.c4a = DWSeparable(96, 112, dilation=8)
        self.c4b_pw = ConvBlock(112, 112, kernel_size=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(112, num_classes)

    def forward(self, x):
        for layer in (self.c1a, self.c1b, self.c2a_dw, self.c2b_pw, self.c2c, self.c3a_pw,
                      self.c3b, self.c3c, self.c4a, self.c4b_pw):
            x = layer(x)
        return self.fc(self.gap(x).flatten(1))
