"""Soft parameter sharing (Savarese & Maire, ICLR 2019; seed 004) and the SWRN built with it.

`TemplateBank` holds T weight templates; every `SConv2d` that uses the bank owns only T mixing
coefficients, its weight being sum_t coefficients[t] * templates[t]. Both are plug-and-play in any
CNN: create a bank, then replace nn.Conv2d layers of matching shape by SConv2d(bank).

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 10, kernel_size=3)
            self.bank = TemplateBank(num_templates=3, in_planes=10, out_planes=10, kernel_size=3)
            self.conv2 = SConv2d(self.bank)
            self.conv3 = SConv2d(self.bank)

Give the coefficients no weight decay: `torch.optim.SGD(coefficient_param_groups(model, 5e-4), ...)`
(cnnscope's trainer does, for any model holding SConv2d layers: they declare it in no_weight_decay()).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register


class TemplateBank(nn.Module):
    """T convolution weight templates of shape (out_planes, in_planes, k, k), each kaiming-normal."""

    def __init__(self, num_templates, in_planes, out_planes, kernel_size):
        super().__init__()
        self.num_templates = num_templates
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.kernel_size = kernel_size
        self.templates = nn.Parameter(
            torch.empty(num_templates, out_planes, in_planes, kernel_size, kernel_size))
        for template in self.templates.data:  # per template: fan-in of one conv weight
            nn.init.kaiming_normal_(template)

    def forward(self, coefficients):
        """The weight mixed by `coefficients` (T,): sum_t coefficients[t] * templates[t]."""
        return torch.tensordot(coefficients, self.templates, dims=1)


class SConv2d(nn.Module):
    """A conv (no bias) whose weight is a learned mix of a TemplateBank's templates."""

    def __init__(self, bank, stride=1, padding=1):
        super().__init__()
        self.bank = bank
        self.stride = stride
        self.padding = padding
        # A random unit vector keeps the mixed weight at the templates' kaiming scale (zeros, as
        # in the authors' layers.py, would silence a stand-alone SConv2d until it is trained).
        # SWRN re-initialises the coefficients of each stage orthogonally.
        coefficients = torch.randn(bank.num_templates)
        self.coefficients = nn.Parameter(coefficients / coefficients.norm())

    @property
    def weight(self):
        return self.bank(self.coefficients)

    def no_weight_decay(self):
        """The trainer's hook (cnnscope.core.hooks): the coefficients take no weight decay (the paper's recipe)."""
        return {"coefficients"}

    def forward(self, x):
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        b = self.bank
        return (f"{b.in_planes}, {b.out_planes}, kernel_size={b.kernel_size}, "
                f"templates={b.num_templates}, stride={self.stride}, padding={self.padding}")


def orthogonal_coefficients_(sconvs):
    """Initialise the (layers x T) coefficient matrix of `sconvs` (which share one bank) orthogonally,
    row j going to the j-th layer: layers start as different, decorrelated mixes."""
    if not sconvs:
        return
    matrix = torch.empty(len(sconvs), sconvs[0].coefficients.numel())
    nn.init.orthogonal_(matrix)
    with torch.no_grad():
        for sconv, row in zip(sconvs, matrix):
            sconv.coefficients.copy_(row)


def coefficient_param_groups(model, weight_decay):
    """Optimizer parameter groups: `weight_decay` on every parameter except the SConv2d
    coefficients, which get none (the paper's recipe)."""
    coefficients = [m.coefficients for m in model.modules() if isinstance(m, SConv2d)]
    coefficient_ids = {id(p) for p in coefficients}
    others = [p for p in model.parameters() if id(p) not in coefficient_ids]
    return [{"params": others, "weight_decay": weight_decay},
            {"params": coefficients, "weight_decay": 0.0}]


class WideBlock(nn.Module):
    """Pre-activation wide-ResNet block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the input, through a
    1x1 conv (on the pre-activated input) when the shape changes. Given a `bank`, both convs are
    SConv2d from it."""

    def __init__(self, in_planes, out_planes, stride=1, bank=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        if bank is None:
            self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        else:
            self.conv1 = SConv2d(bank, stride=stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        if bank is None:
            self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        else:
            self.conv2 = SConv2d(bank)
        if in_planes != out_planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        else:
            self.shortcut = None

    def forward(self, x):
        out = self.relu1(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return out + residual


class SWRNStage(nn.Module):
    """An ordinary first block, then n-1 blocks whose 2(n-1) convs all mix ONE TemplateBank."""

    def __init__(self, in_planes, out_planes, num_blocks, stride, num_templates):
        super().__init__()
        # With a single block no conv would use the bank, so there is none.
        self.bank = (TemplateBank(num_templates, out_planes, out_planes, 3)
                     if num_blocks > 1 else None)
        self.blocks = nn.Sequential(
            WideBlock(in_planes, out_planes, stride),
            *(WideBlock(out_planes, out_planes, 1, self.bank) for _ in range(num_blocks - 1)),
        )

    def forward(self, x):
        return self.blocks(x)


@register("swrn", dataset="cifar10", seed_doc="Learning Implicitly Recurrent CNNs Through Parameter Sharing (ICLR 2019)")
class SWRN(nn.Module):
    """Wide ResNet with soft parameter sharing, SWRN-depth-width-templates (default 28-10-6)."""

    def __init__(self, depth=28, width=10, num_templates=6, num_classes=10):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"SWRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        num_blocks = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(3, channels[0], 3, padding=1, bias=False)
        self.stage1 = SWRNStage(channels[0], channels[1], num_blocks, 1, num_templates)
        self.stage2 = SWRNStage(channels[1], channels[2], num_blocks, 2, num_templates)
        self.stage3 = SWRNStage(channels[2], channels[3], num_blocks, 2, num_templates)
        self.bn = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)

        # The authors' initialisation.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        for stage in (self.stage1, self.stage2, self.stage3):
            orthogonal_coefficients_([m for m in stage.modules() if isinstance(m, SConv2d)])

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.conv(x))))
        return self.fc(self.pool(self.relu(self.bn(x))).flatten(1))
