"""The named datasets (cifar10, cifar100, fashion-mnist, fake), loaded from a data folder.

Every split is held as ONE uint8 tensor (N, 3, 32, 32) plus int64 labels; a validation split is held
out of the training set by a fixed permutation (by seed). Mean and std come from the train split and
are cached in <data_dir>/stats/.

Files in data_dir are checked before use: CIFAR's pickled batches are read by a restricted
unpickler (_CifarUnpickler) that builds only plain data and numpy arrays, so a planted file cannot
run code; IDX headers, image sizes and labels are checked, and a corrupt stats cache is recomputed.
"""
import codecs
import gzip
import json
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cnnscope.core.augment import IMAGE_SIZE
from cnnscope.errors import CnnscopeError
from cnnscope.files import atomic_write_bytes

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "fake")

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
        raise CnnscopeError(f"val_split is a fraction of the training set in [0, 1), got {val_split}.")
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
    data folder cannot run code."""

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
            f"or train offline on real data with the dataset fashion-mnist."
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
