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

The cache: <TREE>/.cnnscope-cache/<H>x<W>-<key>.u8 holds every image resized to HxW (bilinear,
antialiased; the aspect ratio is not kept) as uint8 (C, H, W) rows, C = 1 when every image is
grayscale and 3 otherwise; <...>.json beside it (written last) holds the rows' labels, the classes and
the splits' sizes. The key hashes the relative paths, sizes and modification times of the files, so
a changed tree (a file added, removed or modified) is decoded again and replaces its old cache. A
tree that cannot be written to caches in <data_dir>/.cnnscope-cache instead.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnscope.errors import CnnscopeError
from cnnscope.files import atomic_write_bytes, atomic_write_text, make_dirs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_FOLDERS = ("train", "val", "test")
TEST_SHARE = 0.1  # of a tree without test/: held out as the test split
FILE_ORDER_SEED = 0  # the fixed permutation of the training files
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
CACHE_FOLDER = ".cnnscope-cache"
CACHE_FORMAT = 1


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
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for lo, hi in zip([0, *breaks], [*breaks, len(ordered)]):
                want = (hi - lo) * row_bytes
                if os.preadv(fd, [rows[lo:hi]], (self.start + int(ordered[lo])) * row_bytes) != want:
                    raise CnnscopeError(f"{self.path} is shorter than its header says. Delete it; the next run "
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
    path stem). `images` is a view of the memory-mapped cache; val is None without val images."""
    tree = scan(Path(root).resolve())
    stem = _cache_stem(tree, tuple(image_size), Path(data_dir))
    header = _read_header(stem)
    if header is None:
        header = _decode(tree, tuple(image_size), stem)
    shape, labels = tuple(header["shape"]), torch.tensor(header["labels"], dtype=torch.int64)
    n = len(labels)
    mapped = torch.from_numpy(np.memmap(stem.with_suffix(".u8"), np.uint8, mode="c", shape=(n, *shape)))
    splits = {}
    for name, (lo, hi) in split_ranges(header["sections"], val_split).items():
        splits[name] = None if hi == lo else (mapped[lo:hi], labels[lo:hi], Rows(stem.with_suffix(".u8"), lo,
                                                                                 hi - lo, shape))
    return tree.classes, splits, stem


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
        raise CnnscopeError(f"The tree has {sum(sections.values())} images: too few to hold out a test split "
                            "and still train. Add images, or give it test/ and train/ folders.")
    return {"train": (lo, hi), "val": ranges.get("val", starts.get("val")),
            "test": ranges.get("test", starts.get("test"))}


# ---- scanning ---------------------------------------------------------------------------------

def scan(root: Path) -> Tree:
    """The classes and files of the tree at `root`; a tree cnnscope cannot train on is a CnnscopeError."""
    if not root.is_dir():
        raise CnnscopeError(f"The dataset folder {root} does not exist. Give an image-folder tree (one subfolder "
                            "per class) or a dataset name.", arguments=("dataset",))
    folders = _subfolders(root)
    split_folders = [f for f in folders if f in SPLIT_FOLDERS]
    if split_folders and "train" not in split_folders:
        raise CnnscopeError(f"{root} has {'/ and '.join(split_folders)}/ but no train/ folder. Add train/<class>/ "
                            "folders, or give one tree of class folders.", arguments=("dataset",))
    if "train" in split_folders:
        others = sorted(set(folders) - set(SPLIT_FOLDERS))
        if others:
            raise CnnscopeError(f"{root} has split folders (train/) and also {', '.join(others)}/: put every class "
                                "folder inside train/, val/ or test/.", arguments=("dataset",))
        classes = _subfolders(root / "train")
        parts = {part: root / part for part in SPLIT_FOLDERS if part in split_folders}
    else:
        classes, parts = folders, {"all": root}
    if not classes:
        raise CnnscopeError(f"{parts.get('train', root)} has no class folders: an image-folder tree holds one "
                            "subfolder per class, each with its images (e.g. cats/001.png, dogs/001.jpg).",
                            arguments=("dataset",))
    if len(classes) == 1:
        raise CnnscopeError(f"{parts.get('train', root)} has one class folder, {classes[0]}/: a classifier needs "
                            "two classes or more, one subfolder each. Give the folder that holds the class folders, "
                            "or add a folder for each other class.", arguments=("dataset",))
    sections = {}
    for part, folder in parts.items():
        unknown = sorted(set(_subfolders(folder)) - set(classes))
        if unknown:
            raise CnnscopeError(f"{folder} has class folders that train/ lacks: {', '.join(unknown)}. The classes "
                                "are train/'s folders.", arguments=("dataset",))
        files = [(path, label) for label, name in enumerate(classes) if (folder / name).is_dir()
                 for path in _class_files(str(folder / name))]
        if part in ("train", "all"):
            order = torch.randperm(len(files), generator=torch.Generator().manual_seed(FILE_ORDER_SEED))
            files = [files[i] for i in order.tolist()]
        sections[part] = files
    return Tree(root, classes, sections)


def _subfolders(folder: Path) -> list:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _class_files(folder: str) -> list:
    """The paths of the image files under a class folder, sorted; an empty class is a CnnscopeError."""
    found = sorted(os.path.join(top, name) for top, dirs, names in os.walk(folder)
                   for name in names if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."))
    if not found:
        raise CnnscopeError(f"The class folder {folder} has no images (.png, .jpg or .jpeg). Add images or "
                            "remove the folder.", arguments=("dataset",))
    return found


# ---- the cache --------------------------------------------------------------------------------

def _cache_stem(tree: Tree, image_size, data_dir: Path) -> Path:
    """<cache folder>/<H>x<W>-<key of the files' names, sizes and modification times>."""
    listing, skip = [], len(str(tree.root)) + 1
    for part, files in tree.sections.items():
        for path, label in files:
            st = os.stat(path)
            listing.append([part, path[skip:], label, st.st_size, st.st_mtime_ns])
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, list(image_size), tree.classes, listing]).encode()).hexdigest()
    folder = tree.root / CACHE_FOLDER
    try:
        make_dirs(folder)
        writable = os.access(folder, os.W_OK)
    except CnnscopeError:
        writable = False
    if not writable:  # a read-only tree: its cache goes to the data folder, under the tree's path
        folder = data_dir.resolve() / CACHE_FOLDER / hashlib.sha256(str(tree.root).encode()).hexdigest()[:16]
    return folder / f"{image_size[0]}x{image_size[1]}-{key[:32]}"


def _read_header(stem: Path):
    """The cache's header, or None when there is no complete cache of this key."""
    try:
        header = json.loads(stem.with_suffix(".json").read_text())
        rows = len(header["labels"])
        complete = (header["format"] == CACHE_FORMAT and sum(header["sections"].values()) == rows
                    and stem.with_suffix(".u8").stat().st_size == rows * int(np.prod(header["shape"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return header if complete else None


def _decode(tree: Tree, image_size, stem: Path) -> dict:
    """Decode, resize and write every image (one pass for the modes, one for the pixels), after
    removing the older caches of this tree at this size; returns the header."""
    from cnnscope.render.progress import progress_bar

    files = [f for part in tree.sections.values() for f in part]
    channels = 1 if all(_mode(path) in GREY_MODES for path, _ in files) else 3
    mode, (height, width) = ("L" if channels == 1 else "RGB"), image_size

    def write(f):
        with progress_bar() as progress:
            task = progress.add_task(f"decoding {tree.root.name} ({height}x{width})", total=len(files))
            for path, _ in files:
                f.write(read_pixels(path, mode, image_size).tobytes())
                progress.advance(task)

    for old in stem.parent.glob(f"{stem.name.split('-')[0]}-*"):
        old.unlink(missing_ok=True)
    atomic_write_bytes(stem.with_suffix(".u8"), write)
    header = {"format": CACHE_FORMAT, "root": str(tree.root), "classes": tree.classes,
              "shape": [channels, height, width], "sections": {k: len(v) for k, v in tree.sections.items()},
              "labels": [label for _, label in files]}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(header))
    return header


def _open(path: Path, argument="dataset"):
    """PIL's lazy open (the header only); a file PIL cannot read is a CnnscopeError naming it."""
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


def _unreadable(path: Path, e: Exception, argument: str) -> CnnscopeError:
    return CnnscopeError(f"The image {path} cannot be read: {type(e).__name__}: {str(e)[:200]}. Replace or remove "
                         "the file (cnnscope reads PNG and JPEG images).", arguments=(argument,))
