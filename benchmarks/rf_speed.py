"""Benchmark (not a test): the speed of `cnnscope rf`.

1. `cnnscope rf torchvision.models:resnet50 --input 3 224 224` wall time, start-up included, each run
   in a fresh interpreter, beside a bare `python -c "import torch"` (the floor of any command that
   uses torch) and `import torch, torchvision.models` (the floor of this SPEC, which imports
   torchvision) timed the same way, taking turns, with their ratios and the load average; and the
   RF work alone in-process (building the model, the analysis).
2. `--verify` on densenet121 at 224x224 in-process: the gradient probe of verify_receptive_field.

    python benchmarks/rf_speed.py [--runs 5] [--skip-cli]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMAND = [sys.executable, "-m", "cnnscope", "rf", "torchvision.models:resnet50", "--input", "3", "224", "224",
           "--format", "json"]
TORCH = [sys.executable, "-c", "import torch"]
IMPORTS = [sys.executable, "-c", "import torch, torchvision.models"]


def timed(command):
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def cli_runs(runs):
    timed(COMMAND)  # warm the file cache
    load = os.getloadavg()
    totals, torch_only, imports = [], [], []
    for _ in range(runs):  # in turns, so that a change in the machine's load hits all three alike
        seconds, out = timed(COMMAND)
        totals.append(seconds)
        torch_only.append(timed(TORCH)[0])
        imports.append(timed(IMPORTS)[0])
    result = json.loads(out)
    rf, floor = statistics.median(totals), statistics.median(torch_only)
    print(f"cnnscope rf torchvision.models:resnet50 --input 3 224 224: final RF {result['final_rf']}, "
          f"jump {result['final_jump']}, {len(result['layers'])} layers")
    print(f"  wall time   best {min(totals):.2f} s, median {rf:.2f} s ({runs} runs)")
    print(f"  import torch: best {min(torch_only):.2f} s, median {floor:.2f} s; "
          f"import torch, torchvision.models: best {min(imports):.2f} s, median {statistics.median(imports):.2f} s")
    print(f"  ratio rf / import torch (medians) {rf / floor:.2f}, rf / import torch+torchvision "
          f"{rf / statistics.median(imports):.2f}; load average {load[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")


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
    from cnnscope.core.runtime import tune_cpu_runtime
    from cnnscope.runs import rf

    tune_cpu_runtime()  # as the command does (the allocator keeps freed memory)

    best, median, result = best_of(runs, lambda: rf.report("torchvision.models:resnet50", input_shape=(3, 224, 224)))
    print(f"RF work in-process (resnet50 built, analysed): best {best:.3f} s, median {median:.3f} s "
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
