"""Benchmark (not a test): the speed of `cnnscope rf`.

1. `cnnscope rf torchvision.models:resnet50 --input 3 224 224` wall time, start-up included, each run
   in a fresh interpreter, beside a bare `import torch, torchvision.models` timed the same way (the
   import floor no RF code can remove); and the RF work alone in-process (build on meta + analysis).
2. `--verify` on densenet121 at 224x224 in-process: the gradient probe of verify_receptive_field.

    python benchmarks/rf_speed.py [--runs 5] [--skip-cli]
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


def cli_runs(runs):
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


def best_of(runs, work):
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        out = work()
        seconds.append(time.perf_counter() - start)
    return min(seconds), statistics.median(seconds), out


def in_process(runs):
    import torch
    import torchvision.models

    from cnnscope.core.rf import receptive_field, verify_receptive_field
    from cnnscope.runs import rf

    best, median, result = best_of(runs, lambda: rf.report("torchvision.models:resnet50", input_shape=(3, 224, 224)))
    print(f"RF work in-process (resnet50 built on meta, analysed): best {best:.3f} s, median {median:.3f} s "
          f"(RF {result.final_rf})")
    model = torchvision.models.densenet121()
    result = receptive_field(model, (3, 224, 224))
    best, median, probe = best_of(max(1, runs // 2), lambda: verify_receptive_field(model, result))
    print(f"--verify densenet121 at 224x224 ({torch.get_num_threads()} threads): best {best:.2f} s, "
          f"median {median:.2f} s (probe RF {probe.rf}, input {probe.input_size}, {probe.dtype})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-cli", action="store_true", help="only the in-process timings")
    args = parser.parse_args()
    if not args.skip_cli:
        cli_runs(args.runs)
    in_process(args.runs)


if __name__ == "__main__":
    main()
