"""An image-folder tree as a dataset: one subfolder per class of PNG or JPEG images, grayscale or
RGB, of any size, decoded once into a uint8 cache file that later runs memory-map.

Layouts (the class names are the folder names, sorted; files other than .png/.jpg/.jpeg and names
starting with a dot are ignored; class folders may hold subfolders):
  TREE/<class>/<image>                                one tree
  TREE/train/<class>/... [TREE/val/<class>/...] [TREE/test/<class>/...]   split folders

The split rule: test is test/ if there is one, else the first TEST_SHARE of the training images
(train/, or the whole tree) in a fixed permutation of their files; val is val/ if there is one,
else the next `val_split` share of the rest; train is what remains. The permutation depends on the
files only (not on the run's seed), so every split is one contiguous range of rows of the cache.

An entry that is not a regular file (a FIFO, a device, a broken symbolic link) is skipped with
one warning: reading it could block for ever.

The cache: <TREE>/.cnnscope-cache/<H>x<W>-<key>.u8 holds every image resized to HxW (bilinear,
antialiased; the aspect ratio is not kept) as uint8 (C, H, W) rows, C = 1 when every image is
grayscale and 3 otherwise; <...>.json beside it (written last) holds the rows' labels, the classes,
the splits' sizes and the SHA-256 of the .u8 file, checked whenever the cache is opened (a cache
that does not match is decoded again, with a warning). The key hashes the relative paths, sizes
and modification times of the files, so a changed tree (a file added, removed or modified) is
decoded again and replaces its old cache. A tree that cannot be written to caches in
<data_dir>/.cnnscope-cache instead. The cache folder and its files are cnnscope's: a symbolic link
there is refused, never followed.
"""
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnscope import files
from cnnscope.errors import CnnscopeWarning, DataError
from cnnscope.files import atomic_write_bytes, atomic_write_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_FOLDERS = ("train", "val", "test")
TEST_SHARE = 0.1  # of a tree without test/: held out as the test split
FILE_ORDER_SEED = 0  # the fixed permutation of the training files
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
CACHE_FOLDER = ".cnnscope-cache"
CACHE_FORMAT = 2  # 2: the header holds the SHA-256 of the rows
HASH_CHUNK = 1 << 24


@dataclass(frozen=True)
class Tree:
    """The files of an image-folder tree: classes, and per section ("train", "val", "test", or "all"
    for one tree) its (path, label) pairs in cache order, paths as strings (a Path per file costs
    seconds over 100,000 files)."""
    root: Path
    classes: list
    sections: dict


@dataclass(frozen=True)
class Rows:
    """Rows [start, start + count) of a cache file of uint8 (C, H, W) images, read with pread, so
    reading a batch never maps more than the batch (a memory map keeps what it read resident)."""
    path: Path
    start: int
    count: int
    shape: tuple

    def read(self, index) -> torch.Tensor:
        """uint8 (len(index), C, H, W): the rows `index` (relative to start), one read per run of
        consecutive rows."""
        index = torch.as_tensor(index).reshape(-1).numpy()
        if len(index) == 0:  # an empty selection (no misclassified image, say) reads nothing
            return torch.empty((0, *self.shape), dtype=torch.uint8)
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        rows = np.empty((len(index), *self.shape), np.uint8)
        row_bytes = rows[0].nbytes if len(rows) else 0
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise DataError(f"The image cache {self.path} was deleted while this command read it. Run the "
                                "command again: the images are decoded into a new cache.") from None
        try:
            for lo, hi in zip([0, *breaks], [*breaks, len(ordered)]):
                want = (hi - lo) * row_bytes
                if os.preadv(fd, [rows[lo:hi]], (self.start + int(ordered[lo])) * row_bytes) != want:
                    raise DataError(f"{self.path} is shorter than its header says. Delete it; the next run "
                                        "decodes the images again.")
        finally:
            os.close(fd)
        if (order[1:] > order[:-1]).all():  # read in the order asked (a test or statistics pass)
            return torch.from_numpy(rows)
        batch = torch.empty((len(index), *self.shape), dtype=torch.uint8)
        batch[torch.from_numpy(order)] = torch.from_numpy(rows)
        return batch


def load(root, image_size, val_split: float, data_dir):
    """The tree at `root` at `image_size` (H, W): (classes, {split: (images, labels, Rows)}, cache
    path stem, the folder the cache folder lies in). `images` is a view of the memory-mapped cache;
    val is None without val images."""
    tree = scan(Path(root).resolve())
    owner, stem = _cache_stem(tree, tuple(image_size), Path(data_dir))
    with files.writing_into(owner):
        header = _read_header(stem)
        if header is None:
            _check_disk(tree, tuple(image_size), stem.parent)
            header = _decode(tree, tuple(image_size), stem)
    shape, labels = tuple(header["shape"]), torch.tensor(header["labels"], dtype=torch.int64)
    n = len(labels)
    with _open_regular(stem.with_suffix(".u8")) as f:
        mapped = torch.from_numpy(np.memmap(f, np.uint8, mode="c", shape=(n, *shape)))
    splits = {}
    for name, (lo, hi) in split_ranges(header["sections"], val_split).items():
        splits[name] = None if hi == lo else (mapped[lo:hi], labels[lo:hi], Rows(stem.with_suffix(".u8"), lo,
                                                                                 hi - lo, shape))
    return tree.classes, splits, stem, owner


def split_sizes(root, val_split: float) -> dict:
    """{train|val|test: images} of the tree at `root` by the split rule, from its file listing alone
    (nothing decoded): what a run's recipe is fitted to before the data is loaded."""
    tree = scan(Path(root).resolve())
    ranges = split_ranges({part: len(files) for part, files in tree.sections.items()}, val_split)
    return {name: 0 if bounds is None else bounds[1] - bounds[0] for name, bounds in ranges.items()}


def split_ranges(sections: dict, val_split: float) -> dict:
    """{train|val|test: (first row, end row)} by the split rule (module doc); `sections` are the
    row counts of the cache's sections in order."""
    starts, at = {}, 0
    for name, count in sections.items():
        starts[name] = (at, at + count)
        at += count
    lo, hi = starts.get("train", starts.get("all"))
    ranges = {}
    if "test" not in starts:
        n_test = max(1, round((hi - lo) * TEST_SHARE))
        ranges["test"], lo = (lo, lo + n_test), lo + n_test
    if "val" not in starts:
        n_val = round((hi - lo) * val_split)
        ranges["val"], lo = (lo, lo + n_val), lo + n_val
    if hi <= lo:
        raise DataError(f"The tree has {sum(sections.values())} images: too few to hold out a test split "
                            "and still train. Add images, or give it test/ and train/ folders.")
    return {"train": (lo, hi), "val": ranges.get("val", starts.get("val")),
            "test": ranges.get("test", starts.get("test"))}


# ---- scanning ---------------------------------------------------------------------------------

def scan(root: Path) -> Tree:
    """The classes and files of the tree at `root`; a tree cnnscope cannot train on is a DataError."""
    if not root.is_dir():
        raise DataError(f"The dataset folder {root} does not exist. Give an image-folder tree (one subfolder "
                            "per class) or a dataset name.", arguments=("dataset",))
    folders = _subfolders(root)
    split_folders = [f for f in folders if f in SPLIT_FOLDERS]
    if split_folders and "train" not in split_folders:
        raise DataError(f"{root} has {'/ and '.join(split_folders)}/ but no train/ folder. Add train/<class>/ "
                            "folders, or give one tree of class folders.", arguments=("dataset",))
    if "train" in split_folders:
        others = sorted(set(folders) - set(SPLIT_FOLDERS))
        if others:
            raise DataError(f"{root} has split folders (train/) and also {', '.join(others)}/: put every class "
                                "folder inside train/, val/ or test/.", arguments=("dataset",))
        classes = _subfolders(root / "train")
        parts = {part: root / part for part in SPLIT_FOLDERS if part in split_folders}
    else:
        classes, parts = folders, {"all": root}
    if not classes:
        raise DataError(f"{parts.get('train', root)} has no class folders: an image-folder tree holds one "
                            "subfolder per class, each with its images (e.g. cats/001.png, dogs/001.jpg).",
                            arguments=("dataset",))
    if len(classes) == 1:
        raise DataError(f"{parts.get('train', root)} has one class folder, {classes[0]}/: a classifier needs "
                        "two classes or more, one subfolder each. Give the folder that holds the class folders, "
                        "or add a folder for each other class.", arguments=("dataset",))
    sections, skipped = {}, []  # skipped: (path, what it is) of names that are not regular files
    for part, folder in parts.items():
        unknown = sorted(set(_subfolders(folder)) - set(classes))
        if unknown:
            raise DataError(f"{folder} has class folders that train/ lacks: {', '.join(unknown)}. The classes "
                                "are train/'s folders.", arguments=("dataset",))
        found = [(path, label) for label, name in enumerate(classes) if (folder / name).is_dir()
                 for path in _class_files(str(folder / name), skipped)]
        if part in ("train", "all"):
            order = torch.randperm(len(found), generator=torch.Generator().manual_seed(FILE_ORDER_SEED))
            found = [found[i] for i in order.tolist()]
        sections[part] = found
    if skipped:
        shown = ", ".join(f"{path} ({kind})" for path, kind in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warnings.warn(f"{root}: skipped {len(skipped)} image name(s) that are not regular files: {shown}{more}.",
                      CnnscopeWarning, stacklevel=2)
    return Tree(root, classes, sections)


def _subfolders(folder: Path) -> list:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _class_files(folder: str, skipped: list) -> list:
    """The paths of the image files under a class folder, sorted; names that are not regular files
    go to `skipped` as (path, what it is); an empty class is a DataError."""
    named = sorted(os.path.join(top, name) for top, dirs, names in os.walk(folder)
                   for name in names if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."))
    found = []
    for path in named:
        kind = files.kind_of(path)
        if kind == "file":
            found.append(path)
        else:
            skipped.append((path, kind))
    if not found:
        raise DataError(f"The class folder {folder} has no images (.png, .jpg or .jpeg). Add images or "
                            "remove the folder.", arguments=("dataset",))
    return found


# ---- the cache --------------------------------------------------------------------------------

def _cache_stem(tree: Tree, image_size, data_dir: Path) -> tuple[Path, Path]:
    """(the folder the cache folder lies in, <cache folder>/<H>x<W>-<key of the files' names, sizes
    and modification times>)."""
    listing, skip = [], len(str(tree.root)) + 1
    for part, found in tree.sections.items():
        for path, label in found:
            st = os.stat(path)
            listing.append([part, path[skip:], label, st.st_size, st.st_mtime_ns])
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, list(image_size), tree.classes, listing]).encode()).hexdigest()
    owner, folder = tree.root, tree.root / CACHE_FOLDER
    _refuse_link(folder)
    try:
        folder.mkdir(exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # a read-only tree: its cache goes to the data folder, under the tree's path
        owner = data_dir.resolve()
        folder = owner / CACHE_FOLDER / hashlib.sha256(str(tree.root).encode()).hexdigest()[:16]
        _refuse_link(folder.parent)
        _refuse_link(folder)
    return owner, folder / f"{image_size[0]}x{image_size[1]}-{key[:32]}"


def check_fits(name, images: int, channels: int, size, bytes_per_value: float, free=None) -> None:
    """Refuse a dataset of `images` images at `size` (H, W) that would not fit in memory (or on disk,
    with `free` bytes there), estimated before anything of that size is allocated (datasets.py asks
    it of the named datasets)."""
    from cnnscope.core.probe import available_memory

    need = images * channels * size[0] * size[1] * bytes_per_value
    free = available_memory() if free is None else free
    if need > free:
        raise DataError(
            f"{name} at {size[0]}x{size[1]} needs about {need / 1e9:,.1f} GB ({images:,} images of {channels}x"
            f"{size[0]}x{size[1]}, estimated before allocating), but {free / 1e9:,.1f} GB is available. Use a "
            "smaller image_size.", arguments=("image_size",))


def _check_disk(tree: Tree, image_size, folder: Path) -> None:
    """Refuse a cache that would not fit on its disk (at most 3 bytes a pixel), before decoding."""
    images = sum(len(found) for found in tree.sections.values())
    at = next(p for p in (folder, *folder.parents) if p.exists())
    check_fits(str(tree.root), images, 3, image_size, 1, free=shutil.disk_usage(at).free)


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise files.linked(path, path.parent)


def _open_regular(path: Path):
    """`path` opened for reading without following a link (a link is a DataError)."""
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except OSError:
        _refuse_link(path)
        raise


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with _open_regular(path) as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_header(stem: Path):
    """The cache's header, or None when there is no complete cache of this key, or one whose rows
    do not match their SHA-256 (a warning: it is decoded again). A link in its place is refused."""
    for path in (stem.with_suffix(".json"), stem.with_suffix(".u8")):
        _refuse_link(path)
    try:
        with _open_regular(stem.with_suffix(".json")) as f:
            header = json.loads(f.read())
        rows = len(header["labels"])
        complete = (header["format"] == CACHE_FORMAT and sum(header["sections"].values()) == rows
                    and stem.with_suffix(".u8").lstat().st_size == rows * int(np.prod(header["shape"])))
        intact = complete and _digest(stem.with_suffix(".u8")) == header["sha256"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if complete and not intact:
        warnings.warn(f"The image cache {stem.with_suffix('.u8')} does not match the SHA-256 it was written with "
                      "(it changed since): the images are decoded again.", CnnscopeWarning, stacklevel=2)
    return header if intact else None


def _decode(tree: Tree, image_size, stem: Path) -> dict:
    """Decode, resize and write every image (one pass for the modes, one for the pixels), after
    removing the older caches of this tree at this size; returns the header."""
    from cnnscope.render.progress import progress_bar

    images = [f for part in tree.sections.values() for f in part]
    channels = 1 if all(_mode(path) in GREY_MODES for path, _ in images) else 3
    mode, (height, width) = ("L" if channels == 1 else "RGB"), image_size
    digest = hashlib.sha256()

    def write(f):
        with progress_bar() as progress:
            task = progress.add_task(f"decoding {tree.root.name} ({height}x{width})", total=len(images))
            for path, _ in images:
                row = read_pixels(path, mode, image_size).tobytes()
                digest.update(row)
                f.write(row)
                progress.advance(task)

    for old in sorted(stem.parent.glob(f"{stem.name.split('-')[0]}-*")):
        files.remove(old)
    atomic_write_bytes(stem.with_suffix(".u8"), write)
    header = {"format": CACHE_FORMAT, "root": str(tree.root), "classes": tree.classes,
              "shape": [channels, height, width], "sections": {k: len(v) for k, v in tree.sections.items()},
              "labels": [label for _, label in images], "sha256": digest.hexdigest()}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(header))
    return header


def _open(path: Path, argument="dataset"):
    """PIL's lazy open (the header only); a file PIL cannot read is a DataError naming it."""
    from PIL import Image

    try:
        return Image.open(path)
    except Exception as e:  # not an image, or a format PIL does not know
        raise _unreadable(path, e, argument) from None


def _mode(path: Path) -> str:
    with _open(path) as image:
        return image.mode


def read_pixels(path: Path, mode: str, image_size, argument="dataset") -> np.ndarray:
    """The image at `path` in `mode` ("L" or "RGB") resized to (H, W): uint8 (C, H, W). `argument`:
    what named the file, for the error a file PIL cannot read becomes."""
    from PIL import Image

    height, width = image_size
    with _open(path, argument) as image:
        try:
            image.draft(mode, (width, height))  # JPEG: decode at a reduced scale when that is still large enough
            pixels = np.asarray(image.convert(mode).resize((width, height), resample=Image.BILINEAR), np.uint8)
        except Exception as e:  # a truncated or corrupt file fails in any of PIL's ways
            raise _unreadable(path, e, argument) from None
    return pixels.reshape(height, width, -1).transpose(2, 0, 1)


def _unreadable(path: Path, e: Exception, argument: str) -> DataError:
    return DataError(f"The image {path} cannot be read: {type(e).__name__}: {str(e)[:200]}. Replace or remove "
                         "the file (cnnscope reads PNG and JPEG images).", arguments=(argument,))
