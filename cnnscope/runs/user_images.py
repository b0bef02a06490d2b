"""The user's own image files as probe images: resized and normalised the way the run was trained.

A path is an image file (PNG, JPEG, BMP, GIF, WebP, TIFF: whatever Pillow reads) or a folder, whose
image files are taken in sorted order (subfolders included). Each image is converted to the model's
channel count (1: grayscale, 3: RGB), resized to the model's input size (bilinear; the aspect ratio
is not kept, as the training images were resized too) and normalised with the run's mean and std.
Their labels are unknown (-1): attributions explain the predicted class.
"""
from pathlib import Path

import numpy as np
import torch

from cnnscope.errors import DataError
from cnnscope.files import kind_of
from cnnscope.runs.image_folder import read_pixels
from cnnscope.runs.loaders import normalize

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
UNKNOWN_LABEL = -1


def image_files(paths) -> list[Path]:
    """Every image file named by `paths` (files, or folders searched recursively), in order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())  # regular
            if not inside:
                raise DataError(f"The folder {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}). "
                                    "Point image to image files or a folder of them.", arguments=("image_paths",))
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            kind = kind_of(path)
            what = "does not exist" if kind == "missing" else f"is a {kind}, not an image file"
            raise DataError(f"Image {path} {what}. Give an image file or a folder of images.",
                                arguments=("image_paths",))
    return found


def load_images(paths, input_shape, mean, std) -> tuple[torch.Tensor, np.ndarray, list[Path]]:
    """(normalised float32 batch (N, C, H, W), pixels (N, H, W, 3) in [0, 1], the files) of the
    images at `paths` for a model of `input_shape` (C, H, W) trained with `mean` and `std`."""
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise DataError(f"The model takes {channels}-channel images; image files can be given to models of 1 "
                            "(grayscale) or 3 (RGB) channels only.", arguments=("image_paths",))
    files = image_files(paths)
    mode = "L" if channels == 1 else "RGB"
    pixels = np.stack([read_pixels(p, mode, (height, width), "image_paths").transpose(1, 2, 0) for p in files])
    pixels = pixels.astype(np.float32) / 255
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    x = normalize(images, mean, std)
    return x.contiguous(), np.repeat(pixels, 3 // channels, axis=3), files
