"""Layers shared by several model families, and `fusable`, the mark of a module whose forward holds a
chain of elementwise and stencil operations that a trainer may run fused."""
import torch
import torch.nn as nn
import torch.nn.functional as F

FUSABLE = []  # the classes marked by `fusable`, in the order they were defined


def fusable(cls):
    """Marks a module class whose forward computes what `cls.chain` computes (a static function of
    tensors and numbers: the plain operations), or calls `cls.fused` instead where a trainer has set
    it to a function computing the same numbers in fewer passes over memory. cnnscope's CPU training
    step sets it while it trains; otherwise it is None and the analyses see the operations one by
    one."""
    cls.fused = None
    FUSABLE.append(cls)
    return cls


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


@fusable
class DivisiveNorm(nn.Module):
    """Divisive normalisation (cortical gain control): y = x / (mean_3x3(|x|) + eps). No parameters.
    The plain forward calls its `pool` module, so that analyses see it as a layer."""

    def __init__(self, eps=1e-3):
        super().__init__()
        self.eps = eps
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)

    @staticmethod
    def chain(x, eps: float):
        return x / (F.avg_pool2d(x.abs(), 3, stride=1, padding=1) + eps)

    def forward(self, x):
        if DivisiveNorm.fused is not None:
            return DivisiveNorm.fused(x, self.eps)
        return x / (self.pool(x.abs()) + self.eps)
