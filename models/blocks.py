"""Layers shared by several model families."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU; padding keeps the spatial size at stride 1."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class DWSeparable(nn.Module):
    """Depthwise 3x3 -> pointwise 1x1 -> BatchNorm -> ReLU.

    `dw_norm=True` adds BatchNorm -> ReLU after the depthwise conv too (the tiny seed's variant,
    two BN/ReLU pairs); the default has ONE BN/ReLU after the pointwise conv (basic, dilated).
    The stride and dilation apply to the depthwise conv.
    """

    def __init__(self, in_channels, out_channels, stride=1, dilation=1, dw_norm=False):
        super().__init__()
        self.dw = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=dilation,
                            dilation=dilation, groups=in_channels, bias=False)
        self.dw_norm = dw_norm
        if dw_norm:
            self.dw_bn = nn.BatchNorm2d(in_channels)
            self.dw_act = nn.ReLU()
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.dw(x)
        if self.dw_norm:
            x = self.dw_act(self.dw_bn(x))
        return self.act(self.bn(self.pw(x)))


class BlurPool2d(nn.Module):
    """Anti-aliased downsampling (Zhang 2019): fixed binomial [1,2,1]x[1,2,1]/16 blur per channel,
    then stride. No parameters."""

    def __init__(self, channels, stride=2):
        super().__init__()
        self.stride = stride
        k1d = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(k1d, k1d) / 16
        # A constant derived from `channels`: kept out of the state_dict.
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x):
        return F.conv2d(x, self.kernel, stride=self.stride, padding=1, groups=x.shape[1])


class DivisiveNorm(nn.Module):
    """Divisive normalisation (cortical gain control): y = x / (mean_3x3(|x|) + eps). No parameters.
    The plain forward calls its `pool` module, so that analyses see it as a layer; a trainer may run
    `fusable_chain` fused instead (cnnscope.core.hooks)."""
    fused_chain = None

    def __init__(self, eps=1e-3):
        super().__init__()
        self.eps = eps
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)

    @staticmethod
    def fusable_chain(x, eps: float):
        return x / (F.avg_pool2d(x.abs(), 3, stride=1, padding=1) + eps)

    def forward(self, x):
        if self.fused_chain is not None:
            return self.fused_chain(x, self.eps)
        return x / (self.pool(x.abs()) + self.eps)
