"""Datasets, augmentation and loaders.

Every split is held as ONE uint8 tensor (N, 3, 32, 32) plus int64 labels. Loaders turn it into
float32 normalized NCHW batches in channels_last memory format. Two augmentation backends draw from
the same distribution:

- "batch" (the default): whole batches augmented in-process on the uint8 tensor (on the GPU when
  training there), per-sample randomness from a torch.Generator, no worker processes;
- "albumentations": the seeds' pipeline, per-sample albumentations in DataLoader workers.

Both apply, in this order: random crop after zero padding, horizontal flip, AutoAugment (CIFAR10
policy, on uint8), affine (translate/scale/rotate about the centre, zero border), cutout (one square
hole inside the image), normalization. Batch order and augmentation randomness are a pure function of
(seed, epoch, rank), so a resumed run replays its batches exactly.

Files in --data-dir are checked before use: CIFAR's pickled batches are read by a restricted
unpickler (_CifarUnpickler) that builds only plain data and numpy arrays, so a planted file cannot
run code; IDX headers, image sizes and labels are checked, and a corrupt stats cache is recomputed.
"""
import codecs
import gzip
import json
import math
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from cnnscope.runs.checkpoint import atomic_write_bytes
from cnnscope.errors import CnnscopeError
from cnnscope.core.fields import Choice, Flag, Number, Numbers, check_fields

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "fake")
BACKENDS = ("batch", "albumentations")
IMAGE_SIZE = 32

# Debian's dataset-fashion-mnist package puts the original gzipped IDX files here.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ---- data types ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self):
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    classes: list
    train: Split
    val: Optional[Split]  # None when val_split == 0: the trainer then selects on test
    test: Split
    mean: tuple  # per channel, [0, 1] units, computed on the train split
    std: tuple


@dataclass(frozen=True)
class AugmentSpec:
    hflip: float = 0.0  # probability of a horizontal flip
    crop_pad: int = 0  # random 32x32 crop after zero padding by this many pixels
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
    "crop_pad": Number(int, 0, IMAGE_SIZE),
    "affine_p": _PROBABILITY,
    "translate": Number(float, 0, 1),
    "scale": Numbers(Number(float, 0, lo_open=True), count=2, ascending=True, example="scale=(0.9,1.1)"),
    "rotate": Number(float, 0, 180),
    "cutout": Number(int, 0, IMAGE_SIZE),
    "cutout_p": _PROBABILITY,
    "cutout_fill": Choice(("mean", "zero")),
    "autoaugment": Flag(),
}


# ---- datasets -----------------------------------------------------------------------------------

def load_dataset(name, data_dir="data", *, val_split=0.1, seed=0, fake_size=(512, 128)) -> Dataset:
    """Load `name` (cifar10 | cifar100 | fashion-mnist | fake) with a validation split held out of
    the training set (a fixed permutation by `seed`; val_split=0 -> no validation split).

    Mean/std come from the train split and are cached in <data_dir>/stats/ (not for `fake`, which
    is generated in memory and never touches data_dir). `fake_size` = (train, test) image counts.
    """
    if name not in DATASETS:
        raise CnnscopeError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    if not 0.0 <= val_split < 1.0:
        raise CnnscopeError(f"--val-split is a fraction of the training set in [0, 1), got {val_split}.")
    data_dir = Path(data_dir)
    if name == "fake":
        classes, train, test = _make_fake(*fake_size)
    elif name == "fashion-mnist":
        classes, train, test = _load_fashion_mnist(data_dir)
    else:
        classes, train, test = _load_cifar(name, data_dir)

    for part, split in (("training", train), ("test", test)):
        _check_labels(split, classes, f"{name}'s {part} split in {data_dir}")
    train, val = _hold_out(train, val_split, seed)
    if name == "fake":
        mean, std = channel_stats(train.images)
    else:
        mean, std = _cached_stats(data_dir / "stats" / f"{name}_{val_split:g}_{seed}.json", train.images)
    return Dataset(name=name, classes=classes, train=train, val=val, test=test, mean=mean, std=std)


def _check_labels(split: Split, classes, where: str):
    """Every label names one of the classes (a label out of range would fail in the middle of training)."""
    bad = split.labels[(split.labels < 0) | (split.labels >= len(classes))]
    if len(bad):
        raise CnnscopeError(f"{where} has labels {bad.min().item()}..{bad.max().item()} outside the "
                            f"{len(classes)} classes (labels 0..{len(classes) - 1}). Replace the dataset's files with "
                            "the original ones.")


def _hold_out(train: Split, val_split, seed):
    """A fixed random `val_split` share of the training set becomes the validation split."""
    n_val = round(len(train) * val_split)
    if n_val == 0:
        return train, None
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return (Split(train.images[train_idx], train.labels[train_idx]),
            Split(train.images[val_idx], train.labels[val_idx]))


def channel_stats(images: torch.Tensor):
    """Per-channel mean and std of uint8 (N, 3, H, W) images in [0, 1] units, exact: from a
    256-bin histogram per channel, so 50,000 images never become a float copy."""
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        m = (counts * values).sum() / counts.sum()
        var = (counts * (values - m) ** 2).sum() / counts.sum()
        mean.append(m.item() / 255)
        std.append(var.sqrt().item() / 255)
    return tuple(mean), tuple(std)


def _cached_stats(path: Path, images: torch.Tensor):
    """channel_stats of the train split, cached in `path`; a cache that is unreadable, corrupt or for
    another split is computed again and replaced (atomically: ranks may write it at once)."""
    cached = _read_stats(path, len(images), images.shape[1])
    if cached is not None:
        return cached
    mean, std = channel_stats(images)
    text = json.dumps({"n_train": len(images), "mean": mean, "std": std}, indent=2)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
    return mean, std


def _read_stats(path: Path, n_train: int, channels: int):
    """(mean, std) from a stats cache of this split, or None."""
    try:
        cached = json.loads(path.read_text())
        stats = tuple(float(v) for v in cached["mean"]), tuple(float(v) for v in cached["std"])
        fits = cached["n_train"] == n_train and all(len(s) == channels for s in stats)
    except (OSError, ValueError, KeyError, TypeError):  # missing, not JSON, or not the cache's layout
        return None
    return stats if fits and all(math.isfinite(v) for s in stats for v in s) else None


# fake: 10 classes = 5 colours x 2 stripe orientations, so a model must see colour AND texture.
_FAKE_COLOURS = {"red": (0.85, 0.2, 0.2), "green": (0.2, 0.75, 0.25), "blue": (0.2, 0.3, 0.85),
                 "yellow": (0.85, 0.8, 0.2), "purple": (0.6, 0.25, 0.75)}
_FAKE_SEED = 1234


def _make_fake(n_train, n_test):
    """Deterministic synthetic images: class colour + horizontal or vertical stripes (random
    frequency and phase) + brightness jitter + noise. Survives flips, crops, small rotations."""
    g = torch.Generator().manual_seed(_FAKE_SEED)
    classes = [f"{colour}-{stripes}" for colour in _FAKE_COLOURS for stripes in ("horizontal", "vertical")]
    colours = torch.tensor(list(_FAKE_COLOURS.values())).repeat_interleave(2, dim=0)  # (10, 3)
    n = n_train + n_test
    labels = torch.arange(n) % len(classes)
    labels = labels[torch.randperm(n, generator=g)]

    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32)
    freq = 0.5 + 0.3 * torch.rand(n, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    vertical = (labels % 2 == 1).view(n, 1, 1)
    along = torch.where(vertical, coords.view(1, 1, -1), coords.view(1, -1, 1))  # (n, 32, 32)
    stripes = torch.sin(freq * along + phase)
    brightness = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    images = colours[labels].view(n, 3, 1, 1) * brightness * (0.6 + 0.4 * stripes.unsqueeze(1))
    images = images + 0.06 * torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return classes, Split(images[:n_train], labels[:n_train]), Split(images[n_train:], labels[n_train:])


def _load_cifar(name, data_dir: Path):
    """The python pickled batches of CIFAR-10/100 (torchvision's layout and download), read by
    _CifarUnpickler: a planted file cannot run code."""
    from torchvision.datasets import CIFAR10, CIFAR100

    info = CIFAR10 if name == "cifar10" else CIFAR100
    folder = data_dir / info.base_folder
    if not folder.is_dir():
        _fetch_archive(name, info.url, data_dir, info.filename, info.tgz_md5, info.base_folder)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    redo = f"Delete {folder} and place {info.filename} in {data_dir}/ again."
    try:
        classes = [str(c) for c in _read_pickle(folder / info.meta["filename"], redo)[info.meta["key"]]]
        splits = []
        for file_list in (info.train_list, info.test_list):
            batches = [_read_pickle(folder / file_name, redo) for file_name, _md5 in file_list]
            images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
            labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
            images = images.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
            if labels.shape != images.shape[:1]:
                raise ValueError(f"{len(images)} images but {labels.size} labels")
            splits.append(Split(torch.from_numpy(images), torch.from_numpy(labels)))
    except (KeyError, ValueError, TypeError, IndexError, OverflowError) as e:
        raise CnnscopeError(f"{folder} does not hold {name} batches in the python format "
                            f"({type(e).__name__}: {e}). {redo}") from None
    return classes, splits[0], splits[1]


def _numpy_array_globals() -> dict:
    """The globals a pickled numpy array refers to, under numpy 1's and numpy 2's module names."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray, numeric
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        found.update({(f"{core}.multiarray", "_reconstruct"): multiarray._reconstruct,
                      (f"{core}.multiarray", "scalar"): multiarray.scalar,
                      (f"{core}.numeric", "_frombuffer"): numeric._frombuffer})
    return found


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, strings, numbers and numpy arrays. A
    pickle that names any other global (the way a pickle runs code) is refused, so a planted
    --data-dir cannot run code."""

    ALLOWED = _numpy_array_globals()

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never does")


def _read_pickle(path: Path, redo: str) -> dict:
    if not path.is_file():
        raise CnnscopeError(f"{path} is missing: the dataset folder {path.parent} is incomplete. {redo}")
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as e:  # a garbage file fails in any of pickle's ways
        raise CnnscopeError(f"{path} is not a CIFAR batch: {type(e).__name__}: {str(e)[:200]}. cnnscope only "
                            f"unpickles numpy arrays and plain data from a dataset folder. {redo}") from None
    if not isinstance(batch, dict):
        raise CnnscopeError(f"{path} is not a CIFAR batch: it holds a {type(batch).__name__}, not a dict. {redo}")
    return batch


def _fetch_archive(name, url, data_dir: Path, filename, md5, folder_name):
    """Extract <data_dir>/<filename> if it was placed by hand, else download and extract it."""
    from torchvision.datasets.utils import download_and_extract_archive, extract_archive

    archive = data_dir / filename
    try:
        if archive.is_file():
            extract_archive(str(archive), str(data_dir))
        else:
            download_and_extract_archive(url, str(data_dir), filename=filename, md5=md5)
    except (OSError, RuntimeError, EOFError) as e:
        raise CnnscopeError(
            f"Could not get {name}: {type(e).__name__}: {e}. Without internet access, place {filename} "
            f"(from {url}) or its extracted folder {folder_name}/ in {data_dir}/ by hand and run again; "
            f"or train offline on real data with --dataset fashion-mnist."
        ) from None
    if not (data_dir / folder_name).is_dir():
        raise CnnscopeError(f"{archive} did not contain the folder {folder_name}/. Replace it with the "
                            f"original archive from {url}.")


def _load_fashion_mnist(data_dir: Path):
    """The original IDX files: from data_dir, Debian's package, else torchvision's download.
    28x28 grey images are zero-padded by 2 to 32x32 and repeated over 3 channels."""
    from torchvision.datasets import FashionMNIST

    candidates = [data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw", FASHION_MNIST_SYSTEM_DIR]
    folder = next((d for d in candidates if _idx_files(d)), None)
    if folder is None:
        try:
            for train in (True, False):
                FashionMNIST(str(data_dir), train=train, download=True)
        except (OSError, RuntimeError) as e:
            raise CnnscopeError(
                f"Could not get fashion-mnist: no IDX files in {', '.join(map(str, candidates))} and the download "
                f"failed ({type(e).__name__}: {str(e).splitlines()[0]}). Install Debian's dataset-fashion-mnist "
                f"package, or place train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in {data_dir / 'fashion-mnist'}/."
            ) from None
        folder = data_dir / "FashionMNIST" / "raw"
    files = _idx_files(folder)
    splits = []
    for part in ("train", "test"):
        images = torch.from_numpy(read_idx(files[f"{part}_images"]).copy())
        labels = torch.from_numpy(read_idx(files[f"{part}_labels"]).astype(np.int64))
        if images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
            raise CnnscopeError(f"{files[f'{part}_images']} and its labels file are not Fashion-MNIST: it needs "
                                f"28x28 images and one label each, they hold images {tuple(images.shape)} and labels "
                                f"{tuple(labels.shape)}. Replace them with the original files.")
        pad = (IMAGE_SIZE - images.shape[-1]) // 2
        padded = torch.zeros(len(images), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        padded[:, :, pad:IMAGE_SIZE - pad, pad:IMAGE_SIZE - pad] = images.unsqueeze(1)
        splits.append(Split(padded, labels))
    return list(FashionMNIST.classes), splits[0], splits[1]


def _idx_files(folder: Path):
    """{key: path} of the four IDX files in `folder` (gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in FASHION_MNIST_FILES.items():
        path = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (the MNIST format), gzipped or not, as a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise CnnscopeError(f"Cannot read {path}: {e}. Replace it with the original file.") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise CnnscopeError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise CnnscopeError(f"{path} is truncated: its header needs {4 + 4 * ndim} bytes, the file has {len(raw)}. "
                            "Replace it with the original file.")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise CnnscopeError(f"{path} is truncated: header says {dims}, found {data.size} bytes of data.")
    return data.reshape(dims)


# ---- augmentation -------------------------------------------------------------------------------

def _autoaugment(images: torch.Tensor, seed: int) -> torch.Tensor:
    """torchvision's AutoAugment (CIFAR10 policy) per uint8 image, its randomness from `seed`.

    torchvision draws from the global torch RNG; forking it keeps the caller's stream untouched.
    """
    from torchvision.transforms import v2

    policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([policy(img) for img in images])


class BatchAugment:
    """Whole-batch augmentation with per-sample randomness: uint8 (B, 3, H, W) in, float in [0, 1] out.

    Draws from the same distributions as the albumentations pipeline (see AlbumentationsDataset),
    including albumentations' translation in whole pixels (truncated toward zero).
    """

    def __init__(self, spec: AugmentSpec, mean):
        self.spec = spec
        self.fill = torch.tensor(mean if spec.cutout_fill == "mean" else (0.0, 0.0, 0.0))

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = self.spec
        if s.crop_pad:
            x = self._crop(x, s.crop_pad, g)
        if s.hflip:
            flip = self._chance(len(x), s.hflip, g)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if s.autoaugment:
            x = _autoaugment(x, int(torch.randint(2**62, (1,), generator=g, device=g.device)))
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


class AlbumentationsDataset(torch.utils.data.Dataset):
    """The seeds' per-sample pipeline over a uint8 split: returns (uint8 (3, H, W) tensor, label).

    Seeded per DataLoader worker by `_seed_worker` so that an epoch is a pure function of its seeds.
    """

    def __init__(self, split: Split, spec: AugmentSpec, mean):
        # albumentations checks PyPI for a newer version on import: up to 2 s offline, and a
        # training tool should not phone home
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A
        import cv2

        self.images = split.images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC for albumentations
        self.labels = split.labels
        self.spec = spec
        size = self.images.shape[1]
        before, after = [], []  # AutoAugment (torchvision) runs between the two, as in BatchAugment
        if spec.crop_pad:
            before += [A.PadIfNeeded(size + 2 * spec.crop_pad, size + 2 * spec.crop_pad,
                                     border_mode=cv2.BORDER_CONSTANT, fill=0),
                       A.RandomCrop(size, size)]
        if spec.hflip:
            before.append(A.HorizontalFlip(p=spec.hflip))
        if spec.affine_p:
            after.append(A.Affine(translate_percent={"x": (-spec.translate, spec.translate),
                                                     "y": (-spec.translate, spec.translate)},
                                  scale=tuple(spec.scale), rotate=(-spec.rotate, spec.rotate), keep_ratio=True,
                                  interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0,
                                  p=spec.affine_p))
        if spec.cutout and spec.cutout_p:
            fill = tuple(round(m * 255) for m in mean) if spec.cutout_fill == "mean" else 0
            after.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(spec.cutout, spec.cutout),
                                         hole_width_range=(spec.cutout, spec.cutout), fill=fill, p=spec.cutout_p))
        self.before, self.after = A.Compose(before), A.Compose(after)
        self.rng = np.random.default_rng(0)

    def seed(self, seed: int):
        self.before.set_random_seed(seed)
        self.after.set_random_seed(seed + 1)
        self.rng = np.random.default_rng(seed + 2)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.before(image=self.images[i])["image"]
        if self.spec.autoaugment:
            chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
            img = _autoaugment(chw.unsqueeze(0), int(self.rng.integers(2**62)))[0].permute(1, 2, 0).numpy()
        img = self.after(image=img)["image"]
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), self.labels[i]


def _seed_worker(worker_id):
    info = torch.utils.data.get_worker_info()
    # torch gives each worker initial_seed = base seed (from the loader's generator) + worker_id
    info.dataset.dataset.seed(torch.initial_seed() % 2**62)


# ---- loaders ------------------------------------------------------------------------------------

def _mix_seed(*parts) -> int:
    """A well-spread 62-bit seed from integers (seed, epoch, rank, stream)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 30) ^ int(state[1])


class Loader:
    """Batches of one split: `set_epoch(e)`, `len()`, iteration yields (x, y) on `device`.

    x is float32 normalized (N, 3, H, W) in channels_last memory format, y int64.
    Training loaders shuffle (one permutation per (seed, epoch), shared by all ranks) and augment
    (randomness per (seed, epoch, rank)). With world_size > 1, a training epoch is cut to a multiple
    of world_size and rank r takes every world_size-th sample from r (disjoint, equal sizes, as
    DistributedSampler with drop_last); an evaluation split is split the same way without the cut,
    so every sample is seen exactly once over all ranks.
    """

    def __init__(self, split: Split, dataset: Dataset, *, batch_size, train, augment, device, seed, rank,
                 world_size, drop_last):
        if not 0 <= rank < world_size:
            raise CnnscopeError(f"rank {rank} is outside world_size {world_size}.")
        self.split, self.batch_size, self.train = split, batch_size, train
        self.augment = augment if train and augment is not None and augment != AugmentSpec() else None
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.epoch = 0
        self.mean = torch.tensor(dataset.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(dataset.std, device=self.device).view(1, 3, 1, 1)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        n = len(self.split)
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self):
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in batch order."""
        n = len(self.split)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, 0))
        order = torch.randperm(n, generator=g)
        order = order[: n // self.world_size * self.world_size]
        return order[self.rank::self.world_size]

    def _batches_of(self, idx):
        if self.drop_last:
            idx = idx[: len(idx) // self.batch_size * self.batch_size]
        return idx.split(self.batch_size)

    def _finish(self, x, y):
        """float [0, 1] or uint8 images on device -> normalized float32 channels_last."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last), y


class BatchLoader(Loader):
    """The fast path: the split lives on `device` as one uint8 tensor; batches are augmented whole."""

    def __init__(self, split, dataset, **kw):
        super().__init__(split, dataset, **kw)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.transform = BatchAugment(self.augment, dataset.mean) if self.augment else None

    def __iter__(self):
        g = torch.Generator(device=self.device).manual_seed(_mix_seed(self.seed, self.epoch, self.rank, 1))
        for idx in self._batches_of(self.indices().to(self.device)):
            x = self.images[idx]
            if self.transform is not None:
                x = self.transform(x, g)
            yield self._finish(x, self.labels[idx])


class AlbumentationsLoader(Loader):
    """The seeds' path: per-sample albumentations in `workers` DataLoader processes."""

    def __init__(self, split, dataset, *, workers=2, **kw):
        super().__init__(split, dataset, **kw)
        self.workers = workers
        self.samples = AlbumentationsDataset(split, self.augment or AugmentSpec(), dataset.mean)

    def __iter__(self):
        epoch_seed = _mix_seed(self.seed, self.epoch, self.rank, 1)
        self.samples.seed(epoch_seed)  # used as is when workers == 0
        subset = torch.utils.data.Subset(self.samples, self.indices().tolist())
        loader = torch.utils.data.DataLoader(
            subset, batch_size=self.batch_size, shuffle=False, drop_last=self.drop_last,
            num_workers=self.workers, worker_init_fn=_seed_worker if self.workers else None,
            generator=torch.Generator().manual_seed(epoch_seed), pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield self._finish(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))


def make_loader(split, dataset, *, batch_size, train, augment=None, backend="batch", device="cpu",
                seed=0, rank=0, world_size=1, drop_last=False, workers=2):
    """A Loader over `split` (see Loader). `train` shuffles and applies `augment`; `backend` is
    "batch" (in-process, whole batches) or "albumentations" (per sample, `workers` processes)."""
    if backend not in BACKENDS:
        raise CnnscopeError(f"Unknown augmentation backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if split is None:
        raise CnnscopeError("This dataset has no such split (a validation split needs --val-split > 0).")
    kw = dict(batch_size=batch_size, train=train, augment=augment, device=device, seed=seed, rank=rank,
              world_size=world_size, drop_last=drop_last)
    if backend == "batch":
        return BatchLoader(split, dataset, **kw)
    return AlbumentationsLoader(split, dataset, workers=workers, **kw)


def subset(split: Split, n: int, seed: int = 0) -> Split:
    """A random n-image subset of `split`, fixed by `seed` (for quick experiments on big data)."""
    if n >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split(split.images[index], split.labels[index])


def denormalize(x, mean, std):
    """Normalized (N, 3, H, W) floats -> images in [0, 1] for plotting."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)


def augmented_samples(dataset: Dataset, spec: AugmentSpec, *, n, backend="batch", seed=0):
    """The first training batch of epoch 0 (n images) before and after the augmentation pipeline.

    Returns (originals, augmented, labels): (n, H, W, 3) float arrays in [0, 1] and a list of ints.
    """
    loader = make_loader(dataset.train, dataset, batch_size=n, train=True, augment=spec, backend=backend,
                         seed=seed, workers=0)
    idx = loader.indices()[:n]
    x, y = next(iter(loader))
    originals = dataset.train.images[idx].permute(0, 2, 3, 1).float().div(255)
    augmented = denormalize(x, dataset.mean, dataset.std).permute(0, 2, 3, 1)
    return originals.numpy(), augmented.cpu().numpy(), y.tolist()
