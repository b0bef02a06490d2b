"""`cnnscope train` against the seeds' loop (benchmarks/seed_style.py), and the speed recipe's time to
accuracy: every figure of benchmarks/README.md's comparison in one command, with the load of each run.

1. `cnnscope bench MODEL --format json` (the fractions of the machine's peak and memory roofline).
2. For each --seeds S, a pair: `cnnscope train MODEL --val-split 0 --seed S` and `seed_style.py --seed S`
   take turns, one epoch at a time. While one trains, every process of the other is stopped
   (SIGSTOP): its whole process tree, found through /proc and followed across sessions and process
   groups (torch's elastic agent starts cnnscope's training ranks in sessions of their own; the
   seeds' DataLoader workers are children too). So the two never compete for the cores and both see
   the same machine: on a shared computer whose load drifts over an hour, back-to-back runs would
   compare different machines. The kernel's accounting says whether the pause held: per turn, the
   CPU seconds the stopped side used (utime + stime of its tree, children that ended included, from
   /proc/PID/stat, before and after the turn) are recorded as `paused_cpu_s`; where a stopped side
   used more than 1 s, no ratio is reported: the runs are ended and the command exits 1.
3. For each --speed-seeds S, `cnnscope train MODEL --speed --val-split 0 --seed S` alone: the time
   from its start to the line of the first epoch at or above --target, and to its end.

An epoch's time is measured here, from resuming a loop to the line it prints at the end of that
epoch (training, the full test-set evaluation and checkpointing; the first epoch also includes the
start-up: imports and loading the dataset). The loops' own timers would count the pauses.
cnnscope's --val-split 0 selects on the test set, so the val_acc column of its train_log.csv is the
test accuracy after each epoch; the seeds' loop prints one JSON line per epoch with test_acc.

Prints the tables (each run with the load average before it) and writes OUT/compare.json and
OUT/compare.md.

    python benchmarks/compare_training.py                    # basic, fashion-mnist, 5 epochs, seeds 0 1 2
    python benchmarks/compare_training.py --dataset fake --epochs 1 --seeds 0 --speed-seeds 0 --bench-steps 1
    python benchmarks/compare_training.py --dataset fake --epochs 1 --train-subset 128 --seeds 0 --speed-seeds \
        --bench-steps 0                                      # the least with a pause (tests/test_compare_training.py)
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
PAUSED_CPU_LIMIT_S = 1.0  # a stopped side that used more than this in a turn was not stopped
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOPPED_STATES = "TtZX"  # /proc/PID/stat states of a process that runs no more
# an epoch line of `cnnscope train`: epoch/epochs, train loss, train acc, selection loss, selection acc, ...
EPOCH_ACC = re.compile(r"^\s*(\d+)/\d+\s+[\d.]+\s+[\d.]+%\s+[\d.]+\s+([\d.]+)%")


# ---- a process tree through /proc -------------------------------------------------------------

def proc_stat(pid: int) -> dict | None:
    """{ppid, state, session, start, cpu_s} of a process from /proc/PID/stat (None if it is gone). cpu_s is its
    user + system time and that of its children it has waited for (the kernel adds an ended child's
    time to its parent's when the parent reaps it), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    # fields[0] is stat's 3rd field (state): utime, stime, cutime, cstime are its 14th-17th, start its 22nd
    ticks = sum(int(fields[i]) for i in range(11, 15))
    return {"ppid": int(fields[1]), "state": fields[0], "session": int(fields[3]), "start": int(fields[19]),
            "cpu_s": ticks / CLOCK_TICKS}


def all_processes() -> dict:
    """{pid: proc_stat} of every process on the machine."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat is not None:
                found[int(name)] = stat
    return found


class ProcessTree:
    """A process and every process it started, whatever session or process group they moved to: the
    descendants of the root by parent pid, plus any process once found in the tree that still runs
    (same pid and start time) after its parent ended and it was handed to another."""

    def __init__(self, root: int):
        self.root = root
        self.known = {}  # pid -> start time, of every process found in the tree so far

    def members(self) -> dict:
        """{pid: proc_stat} of the tree now."""
        everything = all_processes()
        children = {}
        for pid, stat in everything.items():
            children.setdefault(stat["ppid"], []).append(pid)
        tree, todo = {}, [self.root] + [p for p, start in self.known.items()
                                        if p in everything and everything[p]["start"] == start]
        while todo:
            pid = todo.pop()
            if pid in everything and pid not in tree:
                tree[pid] = everything[pid]
                todo += children.get(pid, [])
        self.known.update({pid: stat["start"] for pid, stat in tree.items()})
        return tree

    def send(self, sig) -> None:
        """`sig` to every process of the tree, again until no process appears that has not had it
        (one may start another between the look and the signal)."""
        sent = set()
        while new := [pid for pid in self.members() if pid not in sent]:
            for pid in new:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                sent.add(pid)

    def stop(self, timeout=10.0) -> None:
        """SIGSTOP to the whole tree; returns once every process of it is stopped (or ended). A stop
        is only delivered when the process next leaves the kernel, so a process may still fork (a
        DataLoader starting its workers) after the signal: whatever still runs gets it again."""
        self.send(signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while running := [pid for pid, stat in self.members().items() if stat["state"] not in STOPPED_STATES]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the processes {running} of {self.root}'s tree did not stop within {timeout:g} s")
            for pid in running:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
            time.sleep(0.001)

    def usage(self) -> dict:
        """{cpu_s: the CPU seconds the tree has used so far (see proc_stat), processes, sessions: how
        many it has now}."""
        members = self.members().values()
        return {"cpu_s": sum(stat["cpu_s"] for stat in members), "processes": len(members),
                "sessions": len({stat["session"] for stat in members})}


# ---- a training loop run one epoch at a time ----------------------------------------------------

class Loop:
    """A training command run one epoch at a time, its whole process tree stopped in between."""

    def __init__(self, name, command, epoch_line: str, log_path: Path):
        self.name, self.command, self.log_path = name, command, log_path
        self.epoch_line = re.compile(epoch_line)
        self.proc = self.tree = None
        self.lines = []  # everything it printed on stdout
        self.epoch_seconds = []

    def run_epoch(self):
        """Start or resume the process, wait for the line that ends its next epoch, stop its tree."""
        started = time.perf_counter()
        if self.proc is None:
            print("$", " ".join(map(str, self.command)), flush=True)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}  # whole lines, at once
            self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=open(self.log_path, "w"),
                                         text=True, cwd=ROOT, env=env, start_new_session=True)
            self.tree = ProcessTree(self.proc.pid)
        else:
            self.tree.send(signal.SIGCONT)
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.epoch_line.search(line):
                self.tree.stop()
                self.epoch_seconds.append(time.perf_counter() - started)
                print(f"{self.name}: epoch {len(self.epoch_seconds)} in {self.epoch_seconds[-1]:.1f} s", flush=True)
                return
        self.finish()
        raise SystemExit(f"{self.name} ended before its epoch {len(self.epoch_seconds) + 1}; its stderr is in "
                         f"{self.log_path}")

    def usage(self) -> dict:
        """The tree's ProcessTree.usage (all 0 before it started)."""
        return self.tree.usage() if self.tree is not None else {"cpu_s": 0.0, "processes": 0, "sessions": 0}

    def kill(self):
        """End whatever is left of the tree (SIGKILL also ends stopped processes)."""
        if self.proc is not None:
            self.tree.send(signal.SIGKILL)
            self.proc.wait()

    def finish(self):
        """Let the process run to its end (cnnscope evaluates best.pth and writes its report)."""
        self.tree.send(signal.SIGCONT)
        self.lines += self.proc.stdout.readlines()
        if self.proc.wait():
            raise SystemExit(f"{self.name} failed with exit code {self.proc.returncode}; its stderr is in "
                             f"{self.log_path}")


class PauseFailed(Exception):
    """A stopped side used CPU during the other's turn: the ratio would be wrong."""


def take_turns(loops: list, epochs: int) -> list[dict]:
    """Each loop trains an epoch in turn while the others are stopped, `epochs` rounds; then each
    runs to its end, one after the other. -> one record per turn and stopped loop: {turn, running,
    epoch, seconds, paused, paused_cpu_s, paused_processes, paused_sessions} (the CPU seconds the
    stopped loop's processes used during the turn; how many processes, in how many sessions, it had).
    A turn where a stopped loop used more than PAUSED_CPU_LIMIT_S raises PauseFailed with the
    records so far (the last ones that turn's)."""
    turns = []
    for epoch in range(1, epochs + 1):
        for loop in loops:
            others = [other for other in loops if other is not loop]
            before = [other.usage() for other in others]
            loop.run_epoch()
            for other, start in zip(others, before):
                end = other.usage()
                turns.append({"turn": len(turns) + 1, "running": loop.name, "epoch": epoch,
                              "seconds": round(loop.epoch_seconds[-1], 3), "paused": other.name,
                              "paused_cpu_s": round(end["cpu_s"] - start["cpu_s"], 3),
                              "paused_processes": end["processes"], "paused_sessions": end["sessions"]})
            if any(t["paused_cpu_s"] > PAUSED_CPU_LIMIT_S for t in turns[-len(others):]):
                raise PauseFailed(turns)
    for loop in loops:
        loop.finish()
    return turns


# ---- one pair of runs, the speed recipe, the bench ------------------------------------------------

def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def pair_loops(args, seed: int, out: Path) -> list[Loop]:
    """cnnscope's loop and the seeds' loop for one seed (on the same --train-subset, if any),
    writing into `out`."""
    python = sys.executable
    subset = ["--train-subset", str(args.train_subset)] if args.train_subset else []
    fast = Loop("cnnscope", [python, "-m", "cnnscope", "train", args.model, "--dataset", args.dataset,
                             "--data-dir", args.data_dir, "--epochs", str(args.epochs), "--val-split", "0",
                             "--seed", str(seed), *subset, "--out", str(out), "--name", "cnnscope", "--overwrite"],
                EPOCH_ACC.pattern, out / "cnnscope.stderr.log")
    seed_loop = Loop("seed_style", [python, str(HERE / "seed_style.py"), "--model", args.model, "--dataset",
                                    args.dataset, "--data-dir", args.data_dir, "--epochs", str(args.epochs),
                                    "--seed", str(seed), *subset],
                     r'^\{"loop": "seed_style"', out / "seed_style.stderr.log")
    return [fast, seed_loop]


def run_pair(args, seed: int, out: Path) -> dict:
    """The two loops of one seed taking turns: their epoch times, accuracies, the pause record and
    the ratios; with "refused" (and no ratio) where a pause did not hold."""
    out.mkdir(parents=True, exist_ok=True)
    loops = pair_loops(args, seed, out)
    record = {"seed": seed, "load_before": load_average()}
    try:
        record["turns"] = take_turns(loops, args.epochs)
    except PauseFailed as failed:
        record["turns"] = failed.args[0]
        worst = max(failed.args[0], key=lambda t: t["paused_cpu_s"])
        record["refused"] = (f"{worst['paused']} used {worst['paused_cpu_s']:.2f} s of CPU while stopped during "
                             f"turn {worst['turn']} ({worst['running']}'s epoch {worst['epoch']}), more than "
                             f"{PAUSED_CPU_LIMIT_S:g} s: its processes were not all stopped, so no ratio is reported")
    finally:  # never leave a stopped process behind
        for loop in loops:
            loop.kill()
            (out / f"{loop.name}.stdout.log").write_text("".join(loop.lines))
    record["load_after"] = load_average()
    if "refused" in record:
        record["epoch_ratio"] = record["time_to_target_ratio"] = None
        return record
    fast, seed_loop = loops
    with open(out / "cnnscope" / "train_log.csv") as f:
        fast_acc = [float(r["val_acc"]) for r in csv.DictReader(f)]
    seed_acc = [json.loads(line)["test_acc"] for line in seed_loop.lines if line.startswith('{"loop"')]
    for loop, accs in ((fast, fast_acc), (seed_loop, seed_acc)):
        record[loop.name] = summarize(loop.epoch_seconds, accs, args.target)
    record["epoch_ratio"] = record["seed_style"]["median_epoch_time_s"] / record["cnnscope"]["median_epoch_time_s"]
    t_fast, t_seed = record["cnnscope"]["time_to_target_s"], record["seed_style"]["time_to_target_s"]
    record["time_to_target_ratio"] = t_seed / t_fast if t_fast and t_seed else None
    return record


def time_to_target(seconds: list, accs: list, target: float):
    """(seconds, epoch) at the end of the first epoch whose test accuracy is >= target, else (None, None)."""
    elapsed = 0.0
    for epoch, (s, acc) in enumerate(zip(seconds, accs), 1):
        elapsed += s
        if acc >= target:
            return elapsed, epoch
    return None, None


def summarize(seconds: list, accs: list, target: float) -> dict:
    reached, epoch = time_to_target(seconds, accs, target)
    return {"epoch_time_s": [round(s, 1) for s in seconds], "median_epoch_time_s": statistics.median(seconds),
            "test_acc": [round(a, 2) for a in accs], "time_to_target_s": reached, "epoch_at_target": epoch}


def run_speed(args, seed: int, out: Path) -> dict:
    """`cnnscope train MODEL --speed` alone: test accuracy per epoch, the time from the start to the
    line of the first epoch at or above the target, the whole command's time."""
    command = [sys.executable, "-m", "cnnscope", "train", args.model, "--speed", "--dataset", args.dataset,
               "--data-dir", args.data_dir, "--val-split", "0", "--seed", str(seed), "--out", str(out),
               "--name", f"speed-seed{seed}", "--overwrite"]
    print("$", " ".join(command), flush=True)
    record = {"seed": seed, "load_before": load_average(), "test_acc": [], "time_to_target_s": None}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    started = time.perf_counter()
    with open(out / f"speed-seed{seed}.stderr.log", "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
        for line in proc.stdout:
            match = EPOCH_ACC.search(line)
            if match:
                record["test_acc"].append(float(match.group(2)))
                if record["time_to_target_s"] is None and float(match.group(2)) >= args.target:
                    record["time_to_target_s"] = time.perf_counter() - started
        if proc.wait():
            raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}; see "
                             f"{out / f'speed-seed{seed}.stderr.log'}")
    record["whole_s"] = time.perf_counter() - started
    record["load_after"] = load_average()
    return record


def run_bench(args, out: Path) -> dict:
    command = [sys.executable, "-m", "cnnscope", "bench", args.model, "--steps", str(args.bench_steps),
               "--format", "json", "--quiet"]
    print("$", " ".join(command), flush=True)
    load = load_average()
    bench = json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, check=True).stdout)
    (out / "bench.json").write_text(json.dumps(bench, indent=1) + "\n")
    return {**bench, "load_before": load}


# ---- the report ---------------------------------------------------------------------------------

def equal_epoch_accuracy(pairs: list) -> list[dict]:
    """Per epoch, each loop's test accuracy over the seeds: {epoch, <loop>: {mean, min, max}}."""
    rows = []
    for epoch in range(len(pairs[0]["cnnscope"]["test_acc"]) if pairs else 0):
        row = {"epoch": epoch + 1}
        for loop in ("cnnscope", "seed_style"):
            accs = [p[loop]["test_acc"][epoch] for p in pairs]
            row[loop] = {"mean": round(statistics.mean(accs), 2), "min": min(accs), "max": max(accs)}
        rows.append(row)
    return rows


def seconds(value) -> str:
    return f"{value:.0f} s" if value is not None else "not reached"


def pair_table(report: dict) -> list[str]:
    target = report["target"]
    lines = [f"| seed | loop | epoch times (s) | median epoch (s) | test acc after each epoch (%) | time to {target:g}% "
             "| load before / after | its CPU while stopped, most in a turn |", "|---|---|---|---:|---|---:|---|---:|"]
    for pair in report["pairs"]:
        for loop in ("cnnscope", "seed_style"):
            s = pair.get(loop)
            if s is None:
                continue
            cpu = max((t["paused_cpu_s"] for t in pair["turns"] if t["running"] != loop), default=0.0)
            lines.append(f"| {pair['seed']} | {loop} | {', '.join(f'{t:.0f}' for t in s['epoch_time_s'])} | "
                         f"{s['median_epoch_time_s']:.1f} | {', '.join(f'{a:.2f}' for a in s['test_acc'])} | "
                         f"{seconds(s['time_to_target_s'])} | {pair['load_before']:g} / {pair['load_after']:g} | "
                         f"{cpu:.2f} s |")
    lines += ["", f"| seed | epoch time, seed_style / cnnscope | time to {target:g}%, seed_style / cnnscope |",
              "|---|---:|---:|"]
    for pair in report["pairs"]:
        ratio, reach = pair["epoch_ratio"], pair["time_to_target_ratio"]
        lines.append(f"| {pair['seed']} | " + (f"**{ratio:.2f}x**" if ratio else "refused") + " | "
                     + (f"{reach:.2f}x" if reach else "n/a") + " |")
    return lines


def accuracy_table(report: dict) -> list[str]:
    lines = ["| epoch | cnnscope: mean (min-max) | seed_style: mean (min-max) |", "|---:|---|---|"]
    for row in report["accuracy"]:
        cells = [f"{row[loop]['mean']:.2f} ({row[loop]['min']:.2f}-{row[loop]['max']:.2f})"
                 for loop in ("cnnscope", "seed_style")]
        lines.append(f"| {row['epoch']} | {' | '.join(cells)} |")
    return lines


def speed_table(report: dict) -> list[str]:
    lines = [f"| seed | test acc after each epoch (%) | time to {report['target']:g}% | whole command | "
             "load before / after |", "|---|---|---:|---:|---|"]
    for run in report["speed"]:
        lines.append(f"| {run['seed']} | {', '.join(f'{a:.2f}' for a in run['test_acc'])} | "
                     f"{seconds(run['time_to_target_s'])} | {run['whole_s']:.0f} s | "
                     f"{run['load_before']:g} / {run['load_after']:g} |")
    return lines


def bench_line(b: dict) -> str:
    return (f"`cnnscope bench {b['model']}` ({b['procs']} processes x {b['threads']} threads, load {b['load_before']:g} "
            f"before): training {b['train_images_per_s']:.0f} images/s = {b['train_gflop_per_s']:.1f} GFLOP/s, "
            f"**{100 * b['peak_fraction']:.1f}% of the peak** ({b['peak_gflop_per_s']:.0f} GFLOP/s, measured "
            f"{b['peak_measured_at']} at load {b['peak_load_average']:g}), **{100 * b['roofline_fraction']:.1f}% of "
            f"the memory roofline** ({b['roofline_images_per_s']:.0f} images/s at {b['bandwidth_gb_per_s']:.1f} GB/s); "
            f"the matmul under this run's load {b['matmul_now_gflop_per_s']:.0f} GFLOP/s; inference "
            f"{b['infer_images_per_s']:.0f} images/s")


def markdown(report: dict) -> str:
    lines = [f"{report['model']} on {report['dataset']}, {report['epochs']} epochs per loop, the loops taking turns "
             f"epoch by epoch (the waiting one stopped), seeds {', '.join(str(p['seed']) for p in report['pairs'])}",
             ""]
    if report["pairs"]:
        lines += ["### Per epoch, cnnscope against the seeds' loop", "", *pair_table(report), ""]
    if report["accuracy"]:
        lines += ["### Test accuracy at equal epochs", "", *accuracy_table(report), ""]
    if report["speed"]:
        lines += [f"### Time to {report['target']:g}%: `cnnscope train {report['model']} --speed`", "",
                  *speed_table(report), ""]
    if report["bench"]:
        lines += [bench_line(report["bench"]), ""]
    if report.get("refused"):
        lines += [f"**Refused**: {report['refused']}.", ""]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> str:
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "compare.md").write_text(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="basic")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=5, help="Epochs of each loop in a pair.")
    parser.add_argument("--train-subset", type=int, default=0, metavar="N",
                        help="Both loops of a pair train on the same random N training images (0: all).")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="One pair of loops per seed.")
    parser.add_argument("--speed-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="One `cnnscope train --speed` run per seed (none: no speed runs).")
    parser.add_argument("--target", type=float, default=91.0, help="Test accuracy (percent) to time.")
    parser.add_argument("--bench-steps", type=int, default=20, help="0: no bench.")
    parser.add_argument("--out", default="reports/compare-training")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs, "train_subset": args.train_subset,
              "target": args.target,
              "paused_cpu_limit_s": PAUSED_CPU_LIMIT_S, "bench": None, "pairs": [], "accuracy": [], "speed": []}
    if args.bench_steps:
        report["bench"] = run_bench(args, out)
    for seed in args.seeds:
        pair = run_pair(args, seed, out / f"seed{seed}")
        report["pairs"].append(pair)
        if "refused" in pair:
            report["refused"] = f"seed {seed}: {pair['refused']}"
            print(write_report(report, out))
            return 1
    report["accuracy"] = equal_epoch_accuracy(report["pairs"])
    for seed in args.speed_seeds:
        report["speed"].append(run_speed(args, seed, out))
    print(write_report(report, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
