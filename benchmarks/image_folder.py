"""The image-folder path: images/s of a first epoch (decoding the PNGs into the cache included) and of
a cached epoch, and the peak memory of each. Not a test: it writes --images PNG files.

Generates --images (default 100,000) --size x --size (default 64x64) RGB PNGs in 10 class folders
under --root (default: a temporary folder, removed afterwards), then runs two epochs, each in a
fresh process so that its peak RSS (resource.getrusage ru_maxrss) is its own:

  first   load_dataset(root) decodes every image into root/.cnnscope-cache/ and computes the
          statistics, then one epoch of the training loader (basic's augmentation, batch 128);
  cached  the same on the cache the first epoch left: no decoding.

An epoch's images/s counts the training split (90% of the images less the validation share) over
the whole time, loading included. Prints a table (and --json, one object per epoch).

    python benchmarks/image_folder.py                  # 100,000 images of 64x64 (minutes; ~1 GB of PNGs)
    python benchmarks/image_folder.py --images 5000    # a quick look
"""
import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 10


def generate(root: Path, n: int, size: int, seed: int = 0) -> None:
    """n PNGs in CLASSES folders: a class colour, a random gradient and a random bright square."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % CLASSES
        colour = np.array([(c * 53) % 256, (c * 97) % 256, (c * 151) % 256], np.float32)
        image = colour * (0.6 + 0.4 * (ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]))
        image = np.broadcast_to(image, (size, size, 3)).copy()
        top, left, side = rng.integers(0, size // 2, 3)
        image[top:top + side + 2, left:left + side + 2] = 255
        Image.fromarray(image.astype(np.uint8)).save(root / f"class{c}" / f"{i:06d}.png")


def epoch(root: str, size: int, batch_size: int) -> dict:
    """One epoch in this process: load the tree (decode or cache), then the training loader's batches."""
    from cnnscope.runs.datasets import load_dataset
    from cnnscope.runs.loaders import make_loader
    from cnnscope.runs.recipes import get_recipe

    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    ds = load_dataset(root, Path(root) / "data", image_size=(size, size))
    loaded = time.perf_counter()
    loader = make_loader(ds.train, ds, batch_size=batch_size, train=True, augment=get_recipe("basic").augment)
    images = sum(len(y) for _, y in loader)
    seconds = time.perf_counter() - started
    return {"images": images, "load_s": loaded - started, "epoch_s": seconds, "images_per_s": images / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_imports_mb": baseline_mb}


def run_epoch(root: Path, args) -> dict:
    """epoch() in a fresh process: its own peak RSS."""
    out = subprocess.run([sys.executable, __file__, "--epoch-of", str(root), "--size", str(args.size),
                          "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="PNG files to generate [100000]")
    parser.add_argument("--size", type=int, default=64, help="side of the images (generated and trained) [64]")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--root", type=Path, help="folder for the tree [a temporary folder, removed after]")
    parser.add_argument("--json", action="store_true", help="one JSON object per epoch instead of the table")
    parser.add_argument("--epoch-of", help=argparse.SUPPRESS)  # the child process: one epoch of this tree
    args = parser.parse_args()
    if args.epoch_of:
        print(json.dumps(epoch(args.epoch_of, args.size, args.batch_size)))
        return
    root = args.root or Path(tempfile.mkdtemp(prefix="cnnscope-image-folder-")) / "tree"
    try:
        started = time.perf_counter()
        generate(root, args.images, args.size)
        print(f"generated {args.images:,} {args.size}x{args.size} PNGs in {root} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        rows = {"first (decode + cache)": run_epoch(root, args), "cached": run_epoch(root, args)}
        cache_mb = sum(p.stat().st_size for p in (root / ".cnnscope-cache").glob("*.u8")) / 2**20
    finally:
        if args.root is None:
            shutil.rmtree(root.parent, ignore_errors=True)
    if args.json:
        for name, row in rows.items():
            print(json.dumps({"epoch": name, **row, "cache_mb": cache_mb}))
        return
    print(f"| epoch | train images | load (s) | epoch (s) | images/s | peak RSS (MB) |  (cache file {cache_mb:.0f} MB; "
          f"RSS after imports {rows['cached']['rss_after_imports_mb']:.0f} MB)")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['images']:,} | {r['load_s']:.1f} | {r['epoch_s']:.1f} | {r['images_per_s']:,.0f} | "
              f"{r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
