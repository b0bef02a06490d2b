"""Small real data with the defaults: scikit-learn's 1,797 8x8 digits as an image tree, trained by
`cnnscope train` with no flag but --dataset (and --out/--name), for `basic` and for a
MobileNetV2-style file model (benchmarks/mobilenet_v2_small.py). Not a test: it trains two models.

The tree: OUT/digits/{train,test}/<digit>/<n>.png, 8x8 grey PNGs (the 0..16 pixel values scaled to
0..255). test/ is a stratified quarter of the images (450; scikit-learn's train_test_split default
share), drawn with a fixed seed: a larger test split than the tree rule's 10% (180 images, where one
image is 0.56 points), so the accuracy is measured to about +-0.8 points (one standard error at 97%).
The validation split is the tree rule's, from train/.

Prints a table (model, params, test accuracy, best validation accuracy, training time, wall time)
and writes OUT/small_data.json. Needs scikit-learn: pip install "cnnscope[dev]".

    python benchmarks/small_data.py                      # both models (a few minutes on 2 cores)
    python benchmarks/small_data.py --models basic --out /tmp/digits
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = {"basic": "basic", "mobilenet_v2": f"{HERE / 'mobilenet_v2_small.py'}:MobileNetV2Small"}
TEST_SHARE = 0.25


def write_digits(root: Path, seed: int = 0) -> dict:
    """scikit-learn's digits as root/{train,test}/<digit>/<n>.png; -> images per split."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    index = np.arange(len(pixels))
    train, test = train_test_split(index, test_size=TEST_SHARE, stratify=digits.target, random_state=seed)
    for split, rows in (("train", train), ("test", test)):
        for i in rows:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i], mode="L").save(folder / f"{i:04d}.png")
    return {"train": len(train), "test": len(test)}


def train(model: str, tree: Path, out: Path, name: str) -> dict:
    """`cnnscope train MODEL --dataset TREE` in a fresh process: its metrics and wall time."""
    command = [sys.executable, "-m", "cnnscope", "train", model, "--dataset", str(tree), "--out", str(out),
               "--name", name, "--overwrite"]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - started
    metrics = json.loads((out / name / "metrics.json").read_text())
    return {"model": name, "spec": model, "params": metrics["params"], "test_acc": metrics["test_acc"],
            "best_val_acc": metrics["best_val_acc"], "epochs": metrics["epochs"],
            "train_time_s": metrics["train_time_s"], "wall_s": round(wall, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("reports/small_data"), help="tree and run folders")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    tree = args.out / "digits"
    if not tree.is_dir():
        print(f"writing the digits to {tree}: {write_digits(tree)}", flush=True)
    rows = [train(MODELS[name], tree, args.out, name) for name in args.models]
    load = os.getloadavg()
    print("\n| model | params | test acc | best val acc | epochs | train time | wall time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['test_acc']:.2f}% | {r['best_val_acc']:.2f}% | {r['epochs']} "
              f"| {r['train_time_s']:.0f} s | {r['wall_s']:.0f} s |")
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    (args.out / "small_data.json").write_text(json.dumps({"runs": rows, "load_average": load}, indent=2) + "\n")


if __name__ == "__main__":
    main()
