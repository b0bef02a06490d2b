"""The named datasets that ship as files, read from a data folder: CIFAR-10/100 (python pickles),
MNIST, KMNIST and Fashion-MNIST (IDX files), SVHN (MATLAB files, read with scipy).

Each loader returns the classes and the train and test images and labels: uint8 (N, 3, 32, 32) images: the 28x28
grey IDX images are zero-padded by 2 to 32x32 and repeated over 3 channels, so that every zoo
model takes them. Files in data_dir are checked before use: CIFAR's pickled batches are read by a
restricted unpickler (_CifarUnpickler) that builds only plain data and numpy arrays, so a planted
file cannot run code; IDX headers, image sizes and labels are checked. Only CIFAR and Fashion-MNIST
are downloaded when missing (as before); MNIST, KMNIST and SVHN are read from files placed by hand,
and a missing file is an error naming the files and the folders searched.
"""
import codecs
import gzip
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnscope.errors import DataError

NATIVE_SIZE = 32  # the side of every named dataset's images as loaded (before --image-size resizes them)
IDX_SIZE = 28  # the side of the IDX datasets' own images, zero-padded to NATIVE_SIZE

# Debian's dataset-fashion-mnist package puts the original gzipped IDX files here.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class IdxDataset:
    """One of the IDX datasets: its class names and the folders of data_dir it is looked for in
    (cnnscope's own name first, then torchvision's layout)."""
    classes: tuple
    folders: tuple


IDX_DATASETS = {
    "mnist": IdxDataset(tuple(f"{i} - {w}" for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))), ("mnist", "MNIST/raw")),
    "kmnist": IdxDataset(("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), ("kmnist", "KMNIST/raw")),
    "fashion-mnist": IdxDataset(("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                 "Sneaker", "Bag", "Ankle boot"), ("fashion-mnist", "FashionMNIST/raw")),
}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
NAMES = ("cifar10", "cifar100", *IDX_DATASETS, "svhn")


def load_named(name, data_dir: Path):
    """(classes, (train images, labels), (test images, labels)) of the named dataset `name` (one of
    NAMES) in `data_dir`: uint8 (N, 3, 32, 32) and int64 (N,) tensors."""
    if name in IDX_DATASETS:
        return _load_idx(name, data_dir)
    if name == "svhn":
        return _load_svhn(data_dir)
    return _load_cifar(name, data_dir)


def on_disk(name, data_dir: Path) -> bool:
    """Whether loading the named dataset `name` reads files only (nothing is downloaded or extracted),
    so that several processes may load it at once."""
    if name in ("cifar10", "cifar100"):
        from torchvision.datasets import CIFAR10, CIFAR100

        return (data_dir / (CIFAR10 if name == "cifar10" else CIFAR100).base_folder).is_dir()
    if name == "fashion-mnist":
        return _idx_folder(name, data_dir) is not None
    return True  # the others are never downloaded


def source(name, data_dir: Path) -> str:
    """Where loading the named dataset `name` reads it from (the folder that has its files), or that
    it is downloaded first, in words: what the line announcing the load says."""
    if name in IDX_DATASETS:
        folder = _idx_folder(name, data_dir)
        if folder is None and name == "fashion-mnist":
            return f"{data_dir / 'FashionMNIST' / 'raw'}/ after downloading it"
        return f"{folder or data_dir}/"
    if name == "svhn":
        return f"{_svhn_folder(data_dir) or data_dir}/"
    from torchvision.datasets import CIFAR10, CIFAR100

    folder = data_dir / (CIFAR10 if name == "cifar10" else CIFAR100).base_folder
    return f"{folder}/" if folder.is_dir() else f"{folder}/ after downloading or extracting it"


def _split(images: np.ndarray, labels: np.ndarray):
    """(uint8 image tensor, int64 label tensor) of one split."""
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


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
            images = images.reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE)
            if labels.shape != images.shape[:1]:
                raise ValueError(f"{len(images)} images but {labels.size} labels")
            splits.append(_split(images, labels))
    except DataError:  # a missing or unreadable batch file, said as such
        raise
    except (KeyError, ValueError, TypeError, IndexError, OverflowError) as e:
        raise DataError(f"{folder} does not hold {name} batches in the python format "
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
        raise DataError(f"{path} is missing: the dataset folder {path.parent} is incomplete. {redo}")
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as e:  # a garbage file fails in any of pickle's ways
        raise DataError(f"{path} is not a CIFAR batch: {type(e).__name__}: {str(e)[:200]}. cnnscope only "
                            f"unpickles numpy arrays and plain data from a dataset folder. {redo}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR batch: it holds a {type(batch).__name__}, not a dict. {redo}")
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
        raise DataError(
            f"Could not get {name}: {type(e).__name__}: {e}. Without internet access, place {filename} "
            f"(from {url}) or its extracted folder {folder_name}/ in {data_dir}/ by hand and run again; "
            f"or train offline on real data with the dataset fashion-mnist."
        ) from None
    if not (data_dir / folder_name).is_dir():
        raise DataError(f"{archive} did not contain the folder {folder_name}/. Replace it with the "
                            f"original archive from {url}.")


def _load_idx(name, data_dir: Path):
    """The four IDX files of MNIST, KMNIST or Fashion-MNIST (gzipped or not) from data_dir (or, for
    Fashion-MNIST, Debian's package, else torchvision's download). 28x28 grey images are zero-padded
    by 2 to 32x32 and repeated over 3 channels."""
    info = IDX_DATASETS[name]
    candidates = _idx_candidates(name, data_dir)
    folder = _idx_folder(name, data_dir)
    if folder is None and name == "fashion-mnist":
        folder = _download_fashion_mnist(data_dir, candidates)
    if folder is None:
        raise DataError(
            f"{name} is not in {data_dir}: cnnscope reads it from files and never downloads it. Place "
            f"{', '.join(stem + '.gz' for stem in IDX_FILES.values())} (gzipped or not) in "
            f"{candidates[0]}/ (or torchvision's {candidates[1]}/).", arguments=("data_dir",))
    files = _idx_files(folder)
    splits = []
    for part in ("train", "test"):
        images = read_idx(files[f"{part}_images"])
        labels = read_idx(files[f"{part}_labels"])
        if images.shape[1:] != (IDX_SIZE, IDX_SIZE) or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{files[f'{part}_images']} and its labels file are not {name}: it needs "
                                f"28x28 images and one label each, they hold images {tuple(images.shape)} and labels "
                                f"{tuple(labels.shape)}. Replace them with the original files.")
        pad = (NATIVE_SIZE - IDX_SIZE) // 2
        padded = np.zeros((len(images), 3, NATIVE_SIZE, NATIVE_SIZE), np.uint8)
        padded[:, :, pad:NATIVE_SIZE - pad, pad:NATIVE_SIZE - pad] = images[:, None]
        splits.append(_split(padded, labels))
    return list(info.classes), splits[0], splits[1]


def _idx_candidates(name, data_dir: Path) -> list:
    """The folders an IDX dataset is looked for in, in order (Fashion-MNIST's last: Debian's)."""
    candidates = [data_dir / folder for folder in IDX_DATASETS[name].folders]
    return candidates + [FASHION_MNIST_SYSTEM_DIR] if name == "fashion-mnist" else candidates


def _idx_folder(name, data_dir: Path):
    """The first of _idx_candidates that holds the four IDX files, or None."""
    return next((d for d in _idx_candidates(name, data_dir) if _idx_files(d)), None)


def _download_fashion_mnist(data_dir: Path, candidates):
    """torchvision's download of Fashion-MNIST into data_dir/FashionMNIST/raw (what cnnscope did
    before reading files by hand was the rule); the folder, or a clear error offline."""
    from torchvision.datasets import FashionMNIST

    try:
        for train in (True, False):
            FashionMNIST(str(data_dir), train=train, download=True)
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"Could not get fashion-mnist: no IDX files in {', '.join(map(str, candidates))} and the download "
            f"failed ({type(e).__name__}: {str(e).splitlines()[0]}). Install Debian's dataset-fashion-mnist "
            f"package, or place train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in {data_dir / 'fashion-mnist'}/."
        ) from None
    return data_dir / "FashionMNIST" / "raw"


def _idx_files(folder: Path):
    """{key: path} of the four IDX files in `folder` (gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in IDX_FILES.items():
        path = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def _load_svhn(data_dir: Path):
    """SVHN's train_32x32.mat and test_32x32.mat (MATLAB files: X (32, 32, 3, N), y (N, 1) with 10
    for the digit 0), read with scipy.io.loadmat, which builds arrays only."""
    candidates = _svhn_candidates(data_dir)
    folder = _svhn_folder(data_dir)
    if folder is None:
        raise DataError(
            f"svhn is not in {data_dir}: cnnscope reads it from files and never downloads it. Place "
            f"{' and '.join(SVHN_FILES.values())} (from http://ufldl.stanford.edu/housenumbers/) in "
            f"{candidates[0]}/ (or {data_dir}/).", arguments=("data_dir",))
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("Reading SVHN's .mat files needs scipy, which is not installed: pip install scipy.") from None
    splits = []
    for file_name in SVHN_FILES.values():
        path = folder / file_name
        try:
            mat = loadmat(path, variable_names=("X", "y"))
            images, labels = np.asarray(mat["X"], np.uint8), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
            if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
                raise ValueError(f"X has the shape {images.shape} for {len(labels)} labels, not (32, 32, 3, N)")
        except Exception as e:  # a garbage file fails in any of scipy's ways
            raise DataError(f"{path} is not SVHN's {file_name}: {type(e).__name__}: {str(e)[:200]}. "
                                "Replace it with the original file.") from None
        splits.append(_split(images.transpose(3, 2, 0, 1), labels % 10))  # label 10 is the digit 0
    return [str(i) for i in range(10)], splits[0], splits[1]


def _svhn_candidates(data_dir: Path) -> list:
    return [data_dir / "svhn", data_dir / "SVHN", data_dir]


def _svhn_folder(data_dir: Path):
    """The first of _svhn_candidates that holds both SVHN files, or None."""
    return next((d for d in _svhn_candidates(data_dir) if all((d / f).is_file() for f in SVHN_FILES.values())), None)


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (the MNIST format), gzipped or not, as a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"Cannot read {path}: {e}. Replace it with the original file.") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: its header needs {4 + 4 * ndim} bytes, the file has {len(raw)}. "
                            "Replace it with the original file.")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise DataError(f"{path} is truncated: header says {dims}, found {data.size} bytes of data.")
    return data.reshape(dims)
