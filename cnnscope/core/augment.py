"""Batch augmentation over uint8 image tensors: what an augmentation is (AugmentSpec, its field rules)
and how a whole batch is augmented at once with per-sample randomness (BatchAugment).

The order: random crop after zero padding, horizontal flip, AutoAugment (CIFAR10 policy, on uint8),
affine (translate/scale/rotate about the centre, zero border), cutout (one square hole inside the
image). The per-sample albumentations pipeline of the runs layer (loaders.AlbumentationsDataset)
draws from the same distributions.
"""
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnscope.core.fields import Choice, Flag, Number, Numbers, check_fields
from cnnscope.errors import CnnscopeError


@dataclass(frozen=True)
class AugmentSpec:
    hflip: float = 0.0  # probability of a horizontal flip
    crop_pad: int = 0  # random crop of the image's size after zero padding by this many pixels
    affine_p: float = 0.0  # probability of the affine transform below
    translate: float = 0.0  # fraction of the size, uniform in [-t, t] per axis
    scale: tuple = (1.0, 1.0)  # uniform in [lo, hi], same for both axes
    rotate: float = 0.0  # degrees, uniform in [-r, r]
    cutout: int = 0  # side of one square hole (0: off)
    cutout_p: float = 0.0
    cutout_fill: str = "mean"  # "mean" (the dataset mean) | "zero"
    autoaugment: bool = False  # torchvision's AutoAugment, CIFAR10 policy

    def __post_init__(self):
        check_fields(self, AUGMENT_RULES, "Augmentation field")

    def describe(self) -> str:
        """One line for plot titles and logs, e.g. 'hflip 0.5 · affine p0.5 (...) · cutout 16 p0.5'."""
        parts = []
        if self.crop_pad:
            parts.append(f"crop pad {self.crop_pad}")
        if self.hflip:
            parts.append(f"hflip {self.hflip:g}")
        if self.autoaugment:
            parts.append("AutoAugment (CIFAR10)")
        if self.affine_p:
            parts.append(f"affine p{self.affine_p:g} (translate ±{self.translate * 100:g}%, "
                         f"scale {self.scale[0]:g}-{self.scale[1]:g}, rotate ±{self.rotate:g}°)")
        if self.cutout and self.cutout_p:
            parts.append(f"cutout {self.cutout}x{self.cutout} p{self.cutout_p:g} ({self.cutout_fill})")
        return " · ".join(parts) or "no augmentation"


_PROBABILITY = Number(float, 0, 1)
AUGMENT_RULES = {
    "hflip": _PROBABILITY,
    "crop_pad": Number(int, 0),
    "affine_p": _PROBABILITY,
    "translate": Number(float, 0, 1),
    "scale": Numbers(Number(float, 0, lo_open=True), count=2, ascending=True, example="scale=(0.9,1.1)"),
    "rotate": Number(float, 0, 180),
    "cutout": Number(int, 0),  # at most the image's side: check_fits
    "cutout_p": _PROBABILITY,
    "cutout_fill": Choice(("mean", "zero")),
    "autoaugment": Flag(),
}


def check_fits(spec: AugmentSpec, image_size) -> None:
    """The cutout hole lies inside the image, so it cannot be larger than the image's (H, W)."""
    if spec.cutout and spec.cutout_p and spec.cutout > min(image_size):
        raise CnnscopeError(
            f"Augmentation field cutout={spec.cutout} does not fit {image_size[0]}x{image_size[1]} images: the hole "
            f"lies inside the image. Give cutout={min(image_size)} or less (or cutout=0 to turn it off).",
            arguments=("augment",))


@dataclass
class AugmentResult:
    """A preview of an augmentation: which model's pipeline, on what data, and the grid figure."""
    target: str
    model: str
    dataset: str
    backend: str
    augment: AugmentSpec
    n: int  # images shown
    figure: str  # path of the grid

    def to_json(self) -> dict:
        return {"target": self.target, "model": self.model, "dataset": self.dataset, "backend": self.backend,
                "augment": dataclasses.asdict(self.augment), "pipeline": self.augment.describe(), "n": self.n,
                "figure": self.figure}


def autoaugment(images: torch.Tensor, seed: int) -> torch.Tensor:
    """torchvision's AutoAugment (CIFAR10 policy) per uint8 image, its randomness from `seed`.

    torchvision draws from the global torch RNG; forking it keeps the caller's stream untouched.
    """
    from torchvision.transforms import v2

    policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([policy(img) for img in images])


class BatchAugment:
    """Whole-batch augmentation with per-sample randomness: uint8 (B, C, H, W) in, float in [0, 1] out.

    Draws from the same distributions as the albumentations pipeline (see AlbumentationsDataset),
    including albumentations' translation in whole pixels (truncated toward zero).
    """

    def __init__(self, spec: AugmentSpec, mean):
        self.spec = spec
        self.fill = torch.tensor(mean if spec.cutout_fill == "mean" else (0.0,) * len(mean))

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = self.spec
        if s.crop_pad:
            x = self._crop(x, s.crop_pad, g)
        if s.hflip:
            flip = self._chance(len(x), s.hflip, g)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if s.autoaugment:
            x = autoaugment(x, int(torch.randint(2**62, (1,), generator=g, device=g.device)))
        x = x.float().div_(255)
        if s.affine_p:
            x = self._affine(x, g)
        if s.cutout and s.cutout_p:
            x = self._cutout(x, g)
        return x

    @staticmethod
    def _chance(n, p, g):
        return torch.rand(n, generator=g, device=g.device) < p

    @staticmethod
    def _uniform(n, lo, hi, g):
        return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)

    def _crop(self, x, pad, g):
        n, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        top = torch.randint(2 * pad + 1, (n, 1), generator=g, device=g.device)
        left = torch.randint(2 * pad + 1, (n, 1), generator=g, device=g.device)
        rows = (top + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (left + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        return padded[batch, channel, rows, cols]

    def _affine(self, x, g):
        """Rotate, scale and translate the chosen images about their centre in one grid_sample."""
        s = self.spec
        n, _, h, w = x.shape
        chosen = self._chance(n, s.affine_p, g).nonzero().squeeze(1)
        k = len(chosen)
        if k == 0:
            return x
        angle = torch.deg2rad(self._uniform(k, -s.rotate, s.rotate, g))
        scale = self._uniform(k, s.scale[0], s.scale[1], g)
        shift_x = torch.trunc(self._uniform(k, -s.translate, s.translate, g) * w)
        shift_y = torch.trunc(self._uniform(k, -s.translate, s.translate, g) * h)
        # affine_grid maps output to input coordinates (normalized, centre 0): the inverse transform
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        dx, dy = 2 * shift_x / w, 2 * shift_y / h
        theta = torch.stack([
            torch.stack([cos, sin, -(cos * dx + sin * dy)], dim=1),
            torch.stack([-sin, cos, -(-sin * dx + cos * dy)], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, (k, x.shape[1], h, w), align_corners=False)
        x = x.clone()
        x[chosen] = F.grid_sample(x[chosen], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return x

    def _cutout(self, x, g):
        """One size x size hole inside the image (albumentations' placement), with probability p."""
        s = self.spec
        n, _, h, w = x.shape
        top = torch.randint(h - s.cutout + 1, (n, 1), generator=g, device=g.device)
        left = torch.randint(w - s.cutout + 1, (n, 1), generator=g, device=g.device)
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_rows = (rows >= top) & (rows < top + s.cutout)  # (n, h)
        in_cols = (cols >= left) & (cols < left + s.cutout)
        hole = in_rows.view(n, h, 1) & in_cols.view(n, 1, w) & self._chance(n, s.cutout_p, g).view(n, 1, 1)
        return torch.where(hole.unsqueeze(1), self.fill.to(x.device).view(1, -1, 1, 1), x)
