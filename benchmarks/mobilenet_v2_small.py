"""A small MobileNetV2 (Sandler et al., 2018) for 32x32 images: the file model of
benchmarks/small_data.py, written the way a user's repository writes one (a class with a
`num_classes` argument), to check that cnnscope trains a network it has never seen.

Inverted residual blocks: a 1x1 expansion (ReLU6), a 3x3 depthwise convolution (ReLU6), a linear
1x1 projection; a residual connection where the block keeps its shape. The stem keeps the input's
resolution (stride 1, as CIFAR versions of MobileNetV2 do), so 32x32 inputs end at 8x8.
"""
import torch.nn as nn


def conv_bn(in_ch, out_ch, kernel, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_ch)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_ch, out_ch, stride, expand):
        super().__init__()
        hidden = in_ch * expand
        layers = [conv_bn(in_ch, hidden, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, out_ch, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


# (expansion, output channels, blocks, stride of the first block)
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))


class MobileNetV2Small(nn.Module):
    def __init__(self, num_classes=10, width=32, last=384):
        super().__init__()
        layers, ch = [conv_bn(3, width, 3)], width
        for expand, out_ch, blocks, stride in STAGES:
            for i in range(blocks):
                layers.append(InvertedResidual(ch, out_ch, stride if i == 0 else 1, expand))
                ch = out_ch
        layers.append(conv_bn(ch, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
