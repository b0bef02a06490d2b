"""Benchmark (not a test): wall time of `cnnscope rf` on torchvision's ResNet-50 at 224x224, start-up
included, each run in a fresh interpreter. The bare `import torch, torchvision.models` is timed
the same way: that much of the total no RF code can remove.

    python benchmarks/rf_resnet50.py [--runs 5]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

COMMAND = [sys.executable, "-m", "cnnscope", "rf", "torchvision.models:resnet50", "--input", "3", "224", "224",
           "--format", "json"]
IMPORTS = [sys.executable, "-c", "import torch, torchvision.models"]


def timed(command):
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    timed(COMMAND)  # warm the file cache
    totals, imports = [], []
    for _ in range(runs):
        seconds, out = timed(COMMAND)
        totals.append(seconds)
        imports.append(timed(IMPORTS)[0])
    result = json.loads(out)
    print(f"cnnscope rf torchvision.models:resnet50 --input 3 224 224: final RF {result['final_rf']}, "
          f"jump {result['final_jump']}, {len(result['layers'])} layers")
    print(f"  wall time   best {min(totals):.2f} s, median {statistics.median(totals):.2f} s ({runs} runs)")
    print(f"  of which import torch, torchvision: best {min(imports):.2f} s, median {statistics.median(imports):.2f} s")


if __name__ == "__main__":
    main()
