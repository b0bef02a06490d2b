"""Training throughput of every zoo model, this checkout against an earlier revision, in one run.

For each model, `cnnscope bench MODEL --format json` runs from the earlier revision (checked out
into a temporary git worktree, imported from there) and then from this checkout, one after the
other, so that both see the machine in the same state; the table gives both, their ratio and the
fractions of the machine's matmul peak and of the memory roofline (`cnnscope bench`'s yardsticks,
cached per machine: `cnnscope bench basic --measure-peak` on a quiet machine first). Without
--before, only this checkout is measured. --compile: this checkout's bench with --compile (on the
CPU the training step's compiled fused passes, cnnscope.core.fused).

    python benchmarks/zoo_speed.py --before 2e3a232          # before/after table (~10 min on 2 cores)
    python benchmarks/zoo_speed.py --models tiny egrr --steps 3 --compile
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"basic": [], "tiny": [], "dilated": [], "ectied": [], "egrr": [],
          "swrn": ["--ctor", "depth=16", "--ctor", "width=4"]}  # swrn at a size whose step fits the bench


def bench(checkout: Path, model: str, steps: int, *options) -> dict:
    """`cnnscope bench MODEL` (with `options`) run with the code of `checkout`."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    command = [sys.executable, "-m", "cnnscope", "bench", model, *MODELS[model], "--steps", str(steps),
               "--format", "json", "--quiet", *options]
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench {model} failed in {checkout}:\n{done.stderr}")
    return json.loads(done.stdout)


def row(model: str, before: dict | None, after: dict, load: float) -> str:
    """A table row: images/s (before and after, their ratio), after's fractions of the machine's peak
    and of the memory roofline (an earlier revision's bench may have neither), the load average
    before the model's bench runs."""
    rate = after["train_images_per_s"]
    fractions = (f"{100 * after['peak_fraction']:.1f}% | {after['roofline_images_per_s']:,.0f} | "
                 f"{100 * after['roofline_fraction']:.1f}% | {load:.2f} |")
    if before is None:
        return f"| {model} | {rate:,.0f} | {fractions}"
    old_rate = before["train_images_per_s"]
    return f"| {model} | {old_rate:,.0f} | {rate:,.0f} | **{rate / old_rate:.2f}x** | {fractions}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="git revision to compare against (a temporary worktree)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--json", type=Path, help="also write every bench result here")
    parser.add_argument("--compile", action="store_true", help="this checkout's bench with --compile")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="cnnscope-before-") as tmp:
        old = Path(tmp) / "before"
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.before],
                           check=True, capture_output=True)
        try:
            for model in args.models:
                model_load = os.getloadavg()[0]
                before = bench(old, model, args.steps) if args.before else None
                after = bench(ROOT, model, args.steps, *(["--compile"] if args.compile else []))
                results[model] = {"before": before, "after": after, "load": model_load}
                print(row(model, before, results[model]["after"], model_load), flush=True)
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)
    fractions = "% of peak | roofline (images/s) | % of roofline | load before |\n"
    header = ("| model | before (images/s) | after (images/s) | after / before | " + fractions +
              "|---|---:|---:|---:|---:|---:|---:|---:|" if args.before else
              "| model | training images/s | " + fractions + "|---|---:|---:|---:|---:|---:|")
    print(f"\n{header}")
    for model, r in results.items():
        print(row(model, r["before"], r["after"], r["load"]))
    after = next(iter(results.values()))["after"]
    print(f"\nload average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}; the peak "
          f"({after['peak_gflop_per_s']:.0f} GFLOP/s) and bandwidth ({after['bandwidth_gb_per_s']:.1f} GB/s) measured "
          f"{after['peak_measured_at']} at load {after['peak_load_average']:g}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
