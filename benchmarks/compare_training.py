"""`cnnscope train` against the seeds' loop (benchmarks/seed_style.py), in one process tree.

First `cnnscope bench MODEL --format json` (achieved training FLOP/s against the matmul peak).
Then both training runs start, each in its own process group, and take turns one epoch at a time:
while one trains, the other is paused (SIGSTOP to its group, DataLoader workers included). So the
two never compete for the cores, and both see the same machine: on a shared computer whose load
drifts over an hour, back-to-back runs would compare different machines.

Each epoch's time is measured here, from resuming a loop to the line it prints at the end of
that epoch (training, the full test-set evaluation and checkpointing; the first epoch also
includes the start-up: imports and loading the dataset). The loops' own timers would count the
pauses, so they are not used.

- cnnscope: `cnnscope train MODEL --val-split 0` (it then selects on the test set, so the val_acc
  column of train_log.csv is the test accuracy after each epoch);
- seed_style: one JSON line per epoch with test_acc.

Prints both epoch times and their ratio, the time each needed to reach --target test accuracy
(the epoch times summed up to the first epoch at or above it), and the bench figures; the same
goes to OUT/compare.json and OUT/compare.md.

    python benchmarks/compare_training.py --epochs 5                   # basic on fashion-mnist
    python benchmarks/compare_training.py --epochs 1 --dataset fake    # a quick smoke run
"""
import argparse
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class Loop:
    """A training process run one epoch at a time, paused in between."""

    def __init__(self, name, command, epoch_line: str, log_path: Path):
        self.name, self.command, self.log_path = name, command, log_path
        self.epoch_line = re.compile(epoch_line)
        self.proc = None
        self.lines = []  # everything it printed on stdout
        self.epoch_seconds = []

    def _signal(self, sig):
        os.killpg(self.proc.pid, sig)

    def run_epoch(self):
        """Start or resume the process, wait for the line that ends its next epoch, pause it."""
        started = time.perf_counter()
        if self.proc is None:
            print("$", " ".join(map(str, self.command)), flush=True)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}  # whole lines, at once
            self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=open(self.log_path, "w"),
                                         text=True, cwd=ROOT, env=env, start_new_session=True)
        else:
            self._signal(signal.SIGCONT)
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.epoch_line.search(line):
                self._signal(signal.SIGSTOP)
                self.epoch_seconds.append(time.perf_counter() - started)
                print(f"{self.name}: epoch {len(self.epoch_seconds)} in {self.epoch_seconds[-1]:.1f} s", flush=True)
                return
        self.finish()
        sys.exit(f"{self.name} ended before its epoch {len(self.epoch_seconds) + 1}; its stderr is in {self.log_path}")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)  # also ends a paused process

    def finish(self):
        """Let the process run to its end (cnnscope evaluates best.pth and writes its report)."""
        self._signal(signal.SIGCONT)
        self.lines += self.proc.stdout.readlines()
        if self.proc.wait():
            sys.exit(f"{self.name} failed with exit code {self.proc.returncode}; its stderr is in {self.log_path}")


def time_to_target(epochs: list[dict], target: float):
    """(seconds, epoch) at the end of the first epoch whose test accuracy is >= target, else (None, None)."""
    elapsed = 0.0
    for row in epochs:
        elapsed += row["seconds"]
        if row["test_acc"] >= target:
            return elapsed, row["epoch"]
    return None, None


def summarize(name, epochs, target) -> dict:
    seconds, epoch = time_to_target(epochs, target)
    return {
        "loop": name,
        "epoch_time_s": [round(r["seconds"], 1) for r in epochs],
        "median_epoch_time_s": statistics.median(r["seconds"] for r in epochs),
        "test_acc": [round(r["test_acc"], 2) for r in epochs],
        "time_to_target_s": seconds, "epoch_at_target": epoch,
    }


def markdown(report: dict) -> str:
    target = report["target"]
    bench = report["bench"]

    def reach(s):
        return f"{s['time_to_target_s']:.0f} s (epoch {s['epoch_at_target']})" if s["time_to_target_s"] else "not reached"

    lines = [
        f"{report['model']} on {report['dataset']}, {report['epochs']} epochs each, taking turns epoch by epoch; "
        f"cnnscope: {report['procs']} processes x {report['threads']} threads; "
        f"load average {report['load_before'][0]:g} before, "
        f"{report['load_after'][0]:g} after",
        "",
        f"| loop | epoch times (s) | median epoch (s) | test acc after each epoch (%) | time to {target:g}% test acc |",
        "|---|---|---:|---|---:|",
    ]
    for s in (report["cnnscope"], report["seed_style"]):
        lines.append(f"| {s['loop']} | {', '.join(f'{t:.0f}' for t in s['epoch_time_s'])} | "
                     f"{s['median_epoch_time_s']:.0f} | {', '.join(f'{a:.2f}' for a in s['test_acc'])} | {reach(s)} |")
    ratio = report["time_to_target_ratio"]
    lines += [
        "",
        f"- epoch time, seed_style / cnnscope: **{report['epoch_time_ratio']:.2f}x**",
        f"- time to {target:g}%, seed_style / cnnscope: " + (f"**{ratio:.2f}x**" if ratio else "n/a (not reached by both)"),
        f"- `cnnscope bench {report['model']}`: training {bench['train_images_per_s']:.0f} images/s = "
        f"{bench['train_gflop_per_s']:.1f} GFLOP/s against a {bench['peak_gflop_per_s']:.1f} GFLOP/s matmul: "
        f"**{100 * bench['peak_fraction']:.1f}% of peak**; inference {bench['infer_images_per_s']:.0f} images/s; "
        f"data path alone {bench['data_images_per_s']:.0f} images/s (batch backend) vs "
        f"{bench['data_albumentations_images_per_s']:.0f} (albumentations, 2 workers)",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="basic")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--target", type=float, default=91.0, help="Test accuracy (percent) to time.")
    parser.add_argument("--bench-steps", type=int, default=20)
    parser.add_argument("--out", default="reports/compare-training")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    load_before = [round(x, 2) for x in os.getloadavg()]

    bench_cmd = [python, "-m", "cnnscope", "bench", args.model, "--steps", str(args.bench_steps), "--format", "json"]
    print("$", " ".join(bench_cmd), flush=True)
    bench_out = subprocess.run(bench_cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, check=True).stdout
    (out / "bench.json").write_text(bench_out)
    bench = json.loads(bench_out)

    fast = Loop("cnnscope", [python, "-m", "cnnscope", "train", args.model, "--dataset", args.dataset,
                             "--data-dir", args.data_dir, "--epochs", str(args.epochs), "--val-split", "0",
                             "--out", str(out), "--name", "cnnscope", "--overwrite"],
                r"^\s*\d+/\d+\s+\d", out / "cnnscope.stderr.log")  # an epoch line: "  3/25  0.4120 ..."
    seed = Loop("seed_style", [python, str(HERE / "seed_style.py"), "--model", args.model, "--dataset", args.dataset,
                               "--data-dir", args.data_dir, "--epochs", str(args.epochs)],
                r'^\{"loop": "seed_style"', out / "seed_style.stderr.log")
    try:
        for _ in range(args.epochs):
            for loop in (fast, seed):
                loop.run_epoch()
        for loop in (fast, seed):
            loop.finish()
    finally:  # never leave a paused process behind
        for loop in (fast, seed):
            loop.kill()
            (out / f"{loop.name}.stdout.log").write_text("".join(loop.lines))

    with open(out / "cnnscope" / "train_log.csv") as f:
        fast_acc = [float(r["val_acc"]) for r in csv.DictReader(f)]
    seed_acc = [json.loads(line)["test_acc"] for line in seed.lines if line.startswith('{"loop"')]
    report = {
        "model": args.model, "dataset": args.dataset, "epochs": args.epochs, "target": args.target,
        "device": bench["device"], "procs": bench["procs"], "threads": bench["threads"], "bench": bench,
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    for loop, accs in ((fast, fast_acc), (seed, seed_acc)):
        rows = [{"epoch": i + 1, "seconds": s, "test_acc": a} for i, (s, a) in enumerate(zip(loop.epoch_seconds, accs))]
        report[loop.name] = summarize(loop.name, rows, args.target)
    report["epoch_time_ratio"] = report["seed_style"]["median_epoch_time_s"] / report["cnnscope"]["median_epoch_time_s"]
    t_fast, t_seed = report["cnnscope"]["time_to_target_s"], report["seed_style"]["time_to_target_s"]
    report["time_to_target_ratio"] = t_seed / t_fast if t_fast and t_seed else None
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "compare.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
