"""The datasets cnnscope trains on, by name or as an image-folder tree: Splits of uint8 images.

- named: cifar10, cifar100, mnist, kmnist, fashion-mnist, svhn, read from files in a data folder
  (cnnscope.runs.file_datasets), and `fake`, generated in memory; held in memory, at their native
  32x32 or resized once to `image_size`; the validation split is held out of the training set by a
  fixed permutation (by seed);
- a folder: an image-folder tree (cnnscope.runs.image_folder), decoded once into a cache file that
  is memory-mapped: its splits are views of that file (Split.take reads batches from it), and its
  test and validation images are held out by the tree's own rule.

Every split is uint8 images (N, C, H, W) plus int64 labels. Mean and std come from the train split,
computed in chunks, and are cached in <data_dir>/stats/ (named datasets) or beside the tree's cache.
"""
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from cnnscope import files
from cnnscope.errors import DataError, RunError
from cnnscope.files import atomic_write_bytes
from cnnscope.runs import file_datasets, image_folder

DATASETS = (*file_datasets.NAMES, "fake")
DEFAULT_IMAGE_SIZE = (file_datasets.NATIVE_SIZE, file_datasets.NATIVE_SIZE)
CHUNK = 512  # images per step of the statistics and resizing passes
FAKE_BYTES_PER_VALUE = 13  # `fake` is made as float32 (its stripes, colours and noise at once), then uint8


# ---- data types ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W): in memory, or a view of a tree's memory-mapped cache
    labels: torch.Tensor  # int64 (N,)
    rows: Optional[image_folder.Rows] = None  # where take() reads a cached tree's images from

    def __len__(self):
        return len(self.labels)

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of its images."""
        return tuple(self.images.shape[1:])

    def take(self, index) -> torch.Tensor:
        """images[index] for a 1-D index tensor, as a new uint8 tensor. A cached tree's images are read
        from the file (pread), so an epoch over a large tree leaves no more than a batch in memory."""
        if self.rows is None:
            return self.images[index]
        batch = self.rows.read(index)
        return batch.expand(-1, self.images.shape[1], -1, -1).contiguous()  # grey repeated: fit_channels


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str  # a named dataset's name, or a tree's absolute path
    classes: list
    train: Split
    val: Optional[Split]  # None when val_split == 0: the trainer then selects on test
    test: Split
    mean: tuple  # per channel, [0, 1] units, computed on the train split
    std: tuple

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of its images."""
        return self.train.input_shape


# ---- datasets -----------------------------------------------------------------------------------

def is_folder(name: str) -> bool:
    """Whether --dataset `name` means an image-folder tree rather than a named dataset."""
    return name not in DATASETS and ("/" in name or os.sep in name or Path(name).is_dir())


def load_dataset(name, data_dir="data", *, val_split=0.1, seed=0, image_size=None,
                 fake_size=(512, 128)) -> Dataset:
    """Load `name` (one of DATASETS, or the path of an image-folder tree) at `image_size` (H, W;
    default 32x32), with a validation split held out of the training set (val_split=0 -> none).

    A named dataset's validation split is a fixed permutation by `seed`; a tree's follows its own
    rule (cnnscope.runs.image_folder). Mean/std come from the train split and are cached (not for
    `fake`, which is generated in memory). `fake_size` = (train, test) image counts.
    """
    if not 0.0 <= val_split < 1.0:
        raise DataError(f"val_split is a fraction of the training set in [0, 1), got {val_split}.")
    size = tuple(image_size or DEFAULT_IMAGE_SIZE)
    if is_folder(str(name)):
        return _load_folder(Path(name), Path(data_dir), val_split, size)
    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or give the path of "
                            "an image-folder tree (one subfolder per class).", arguments=("dataset",))
    data_dir = Path(data_dir)
    if name == "fake":
        image_folder.check_fits(name, sum(fake_size), 3, size, FAKE_BYTES_PER_VALUE)
        classes, train, test = _make_fake(*fake_size, size)
    else:
        classes, train, test = file_datasets.load_named(name, data_dir)
        train, test = Split(*train), Split(*test)
        image_folder.check_fits(name, len(train) + len(test), train.input_shape[0], size, 1)
        for part, split in (("training", train), ("test", test)):
            _check_labels(split, classes, f"{name}'s {part} split in {data_dir}")
        train, test = _resize(train, size, name), _resize(test, size, name)
    train, val = _hold_out(train, val_split, seed)
    if name == "fake":
        mean, std = channel_stats(train)
    else:
        at = "" if size == DEFAULT_IMAGE_SIZE else f"_{size[0]}x{size[1]}"
        at += "-unpadded" if _unpads(name, size) else ""
        mean, std = _cached_stats(data_dir / "stats" / f"{name}_{val_split:g}_{seed}{at}.json", train, data_dir)
    return Dataset(name=name, classes=classes, train=train, val=val, test=test, mean=mean, std=std)


def loads_from_files(name, data_dir) -> bool:
    """Whether loading `name` only reads files that are there (no download, no decoding of a tree
    into its cache), so that several processes may load it at once."""
    if is_folder(str(name)):
        return False
    return name == "fake" or (name in DATASETS and file_datasets.on_disk(name, Path(data_dir)))


def loading_line(name, data_dir, image_size=None) -> str:
    """What loading `name` (at `image_size`, when given) reads, in one line: the folder that holds its
    files (a named dataset's may be Debian's), an image-folder tree's own folder, or none: `fake` is
    generated."""
    if is_folder(str(name)):
        at = f" at {image_size[0]}x{image_size[1]}" if image_size else ""
        return (f"loading the image-folder tree {Path(name).expanduser().resolve()}/{at} (the first time at this "
                "size: decoding it into its cache, and its mean/std)")
    if name == "fake":
        return "generating fake: synthetic images, in memory"
    if name not in file_datasets.NAMES:
        return f"loading {name}"
    return f"loading {name} from {file_datasets.source(name, Path(data_dir))} (and its mean/std, the first time)"


def describe(ds: Dataset) -> dict:
    """What a run records of its data (config.json's "data")."""
    channels, height, width = ds.input_shape
    return {"dataset": ds.name, "image_size": [height, width], "channels": channels, "classes": list(ds.classes),
            "mean": list(ds.mean), "std": list(ds.std)}


def run_dataset(ckpt: dict, data_dir=None) -> Dataset:
    """The dataset a checkpoint was trained on, at its size and channels, normalised exactly as in
    training; `data_dir` replaces the run's data folder."""
    options = (ckpt.get("config") or {}).get("options", {})
    if "dataset" not in ckpt:
        raise RunError(
            "This checkpoint does not say which dataset it was trained on (no 'dataset' entry); "
            "evaluate a checkpoint written by `cnnscope train`."
        )
    channels, *image_size = ckpt.get("input_shape") or (3, *DEFAULT_IMAGE_SIZE)
    ds = load_dataset(ckpt["dataset"], data_dir or options.get("data_dir", "data"), image_size=image_size,
                      val_split=options.get("val_split", 0.1), seed=options.get("seed", 0))
    return dataclasses.replace(fit_channels(ds, channels), mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]))


def _load_folder(root: Path, data_dir: Path, val_split, size) -> Dataset:
    """An image-folder tree (cnnscope.runs.image_folder), its splits views of the cache file."""
    classes, splits, stem, owner = image_folder.load(root, size, val_split, data_dir)
    train, val, test = (None if splits[k] is None else Split(*splits[k]) for k in ("train", "val", "test"))
    mean, std = _cached_stats(stem.parent / f"{stem.name}.stats-{val_split:g}.json", train, owner)
    return Dataset(name=str(root.resolve()), classes=classes, train=train, val=val, test=test, mean=mean, std=std)


def fit_channels(ds: Dataset, channels: int) -> Dataset:
    """`ds` for a model that takes `channels`-channel images: grey (1-channel) images are repeated over
    3 channels for a 3-channel model, as Fashion-MNIST's are (a view: nothing is copied)."""
    have = ds.input_shape[0]
    if channels == have:
        return ds
    if have != 1 or channels != 3:
        raise DataError(
            f"The model takes {channels}-channel images but {ds.name} has {have}-channel images. Train a model whose "
            f"first convolution takes {have} channels (e.g. the ctor keyword in_channels={have}), or convert the "
            "images.", arguments=("dataset", "ctor"))

    def grown(split):
        return None if split is None else Split(split.images.expand(-1, 3, -1, -1), split.labels, split.rows)

    return dataclasses.replace(ds, train=grown(ds.train), val=grown(ds.val), test=grown(ds.test),
                               mean=ds.mean * 3, std=ds.std * 3)


def _check_labels(split: Split, classes, where: str):
    """Every label names one of the classes (a label out of range would fail in the middle of training)."""
    bad = split.labels[(split.labels < 0) | (split.labels >= len(classes))]
    if len(bad):
        raise DataError(f"{where} has labels {bad.min().item()}..{bad.max().item()} outside the "
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


def _resize(split: Split, size, name) -> Split:
    """A named dataset's images resized (bilinear, antialiased) from their native size to `size`;
    the 28x28 IDX images (zero-padded to 32x32 by file_datasets) asked for at 28x28 are the
    original images, the padding cut off."""
    if split.input_shape[1:] == tuple(size):
        return split
    if _unpads(name, size):
        pad = (file_datasets.NATIVE_SIZE - file_datasets.IDX_SIZE) // 2
        return Split(split.images[:, :, pad:-pad, pad:-pad].contiguous(), split.labels)
    chunks = [F.interpolate(split.images[i:i + CHUNK].float(), size=size, mode="bilinear", antialias=True,
                            align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
              for i in range(0, len(split), CHUNK)]
    return Split(torch.cat(chunks), split.labels)


def _unpads(name, size) -> bool:
    """Whether `size` asks for the IDX dataset `name` at its own size: its images without the padding."""
    return name in file_datasets.IDX_DATASETS and tuple(size) == (file_datasets.IDX_SIZE,) * 2


def channel_stats(split: Split):
    """Per-channel mean and std of a split's uint8 images in [0, 1] units, exact: from a 256-bin
    histogram per channel, summed over chunks of CHUNK images, so a large split is never in
    memory at once, nor as floats."""
    channels = split.input_shape[0]
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    for lo in range(0, len(split), CHUNK):
        chunk = split.take(torch.arange(lo, min(lo + CHUNK, len(split))))
        for c in range(channels):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64)
    mean = (counts * values).sum(1) / counts.sum(1)
    var = (counts * (values - mean.view(-1, 1)) ** 2).sum(1) / counts.sum(1)
    return tuple((mean / 255).tolist()), tuple((var.sqrt() / 255).tolist())


def _cached_stats(path: Path, split: Split, owner: Path):
    """channel_stats of the train split, cached in `path` below the folder `owner` (written by
    files.writing_into it: never through a link); a cache that is unreadable, corrupt or for another
    split is computed again and replaced (atomically: ranks may write it at once)."""
    if path.is_symlink():  # the cache is cnnscope's: a link there is not read, nor written through
        raise files.linked(path, owner)
    cached = _read_stats(path, len(split), split.input_shape[0])
    if cached is not None:
        return cached
    mean, std = channel_stats(split)
    text = json.dumps({"n_train": len(split), "mean": mean, "std": std}, indent=2)
    with files.writing_into(owner):
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


def _make_fake(n_train, n_test, image_size):
    """Deterministic synthetic images: class colour + horizontal or vertical stripes (random
    frequency and phase) + brightness jitter + noise. Survives flips, crops, small rotations."""
    g = torch.Generator().manual_seed(_FAKE_SEED)
    classes = [f"{colour}-{stripes}" for colour in _FAKE_COLOURS for stripes in ("horizontal", "vertical")]
    colours = torch.tensor(list(_FAKE_COLOURS.values())).repeat_interleave(2, dim=0)  # (10, 3)
    n = n_train + n_test
    labels = torch.arange(n) % len(classes)
    labels = labels[torch.randperm(n, generator=g)]

    height, width = image_size
    freq = 0.5 + 0.3 * torch.rand(n, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    vertical = (labels % 2 == 1).view(n, 1, 1)
    along = torch.where(vertical, torch.arange(width, dtype=torch.float32).view(1, 1, -1),
                        torch.arange(height, dtype=torch.float32).view(1, -1, 1))  # (n, H, W)
    stripes = torch.sin(freq * along + phase)
    brightness = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    images = colours[labels].view(n, 3, 1, 1) * brightness * (0.6 + 0.4 * stripes.unsqueeze(1))
    images = images + 0.06 * torch.randn(n, 3, height, width, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return classes, Split(images[:n_train], labels[:n_train]), Split(images[n_train:], labels[n_train:])
