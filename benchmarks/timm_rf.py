"""Conformance at scale (not a test): the RF analysis against its gradient probe on one model of every
architecture family timm registers.

A family is the timm module a model is defined in (resnet, efficientnet, vision_transformer, ...);
its model is the one with the fewest parameters (counted on the meta device), with random weights,
as a feature extractor of its last stage where timm builds one (features_only) and the whole
classifier otherwise, at the smallest input of 64, 96, 128, 160, 224 or its default size that it
accepts (`img_size` passed where the constructor takes it). Each model runs in its own process (a time limit, and the
memory comes back), the analysis (`receptive_field`) and then `--verify`'s probe
(`verify_receptive_field`), and is counted as:

  exact     the analysis gives a number and the probe agrees unit by unit
  global    the analysis says every unit sees the whole input, and the probe agrees
  unknown   the analysis stops at an operation it does not know ("unknown from layer X on"), named
  mismatch  the probe disagrees with the analysis
  crash     the analysis or the probe raised, or ran past the time limit
  not run   timm could not build the model or run it at any of the sizes (not cnnscope's doing)

Results are cached per model in a JSON file (--cache), written after every model: an interrupted
run resumes where it stopped. The analysis's sources are hashed; --stale reruns the models measured
with other sources, --rerun STATUS the models of that status.

    pip install -e .[benchmark]
    python benchmarks/timm_rf.py                        # everything not measured yet (hours on 2 cores)
    python benchmarks/timm_rf.py --stale --rerun crash  # after a change
    python benchmarks/timm_rf.py --table                # the markdown table of the cache
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
RF_SOURCES = HERE.parent / "cnnscope" / "core" / "rf"
SIZES = (64, 96, 128, 160, 224)
STATUSES = ("exact", "global", "unknown", "mismatch", "crash", "not run")


def sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(RF_SOURCES.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# ---- choosing the models (in this process) ------------------------------------------------------------

def smallest_per_family(progress) -> dict:
    """{family: {"model", "params"}}: the model of each timm module with the fewest parameters."""
    import timm
    from timm.models import _registry

    families = {}
    names = timm.list_models()
    for i, name in enumerate(names):
        progress(f"counting parameters {i + 1}/{len(names)}: {name}")
        try:
            with torch.device("meta"):
                params = sum(p.numel() for p in timm.create_model(name).parameters())
        except Exception:  # a model that cannot be built on meta is left out of its family's choice
            continue
        family = _registry._model_to_module[name]
        if family not in families or params < families[family]["params"]:
            families[family] = {"model": name, "params": params}
    return families


# ---- one model (in a worker process) --------------------------------------------------------------------

class LastStage(nn.Module):
    """A features_only model that returns its last feature map only."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, x):
        return self.features(x)[-1]


def _build(name, size, features):
    import timm

    kwargs = {"features_only": True} if features else {}
    for extra in ({"img_size": size}, {}):
        try:
            model = timm.create_model(name, pretrained=False, **kwargs, **extra)
        except TypeError:  # no img_size keyword
            continue
        return LastStage(model) if features else model
    raise RuntimeError(f"timm.create_model({name!r}) takes neither img_size nor the defaults")


def _runnable(name):
    """(model, size, features) of the first variant and size that runs a forward pass."""
    import timm

    cfg = timm.get_pretrained_cfg(name)
    default = cfg.input_size[-1] if cfg is not None and getattr(cfg, "input_size", None) else 224
    errors = []
    for features in (True, False):
        for size in sorted({*SIZES, default}):
            try:
                torch.manual_seed(0)
                model = _build(name, size, features).eval()
                with torch.no_grad():
                    model(torch.zeros(1, 3, size, size))
                return model, size, features
            except Exception as e:  # noqa: BLE001 - any failure of timm's own: try the next variant
                errors.append(f"{'features' if features else 'classifier'}@{size}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}")
                if features and ("features_only" in str(e) or "feature" in str(e).lower()):
                    break  # no feature extractor: the classifier next
    raise RuntimeError("; ".join(errors[-3:]))


def measure(name) -> dict:
    from cnnscope.core.rf import receptive_field, verify_receptive_field

    torch.set_num_threads(1)
    record = {"model": name}
    try:
        model, size, features = _runnable(name)
    except Exception as e:  # noqa: BLE001
        return {**record, "status": "not run", "error": str(e)[:600]}
    record.update(input=size, features=features, params=sum(p.numel() for p in model.parameters()))
    start = time.perf_counter()
    try:
        result = receptive_field(model, (3, size, size))
        record["analysis_s"] = round(time.perf_counter() - start, 3)
        record.update(final_rf=result.final_rf, final_jump=result.final_jump, warnings=result.warnings[:5])
        unknown = getattr(result, "unknown", None)
        if unknown is not None:
            return {**record, "status": "unknown", "unknown": unknown.describe()}
        start = time.perf_counter()
        result.probe = verify_receptive_field(model, result)
        record["probe_s"] = round(time.perf_counter() - start, 3)
    except Exception as e:  # noqa: BLE001
        return {**record, "status": "crash", "error": f"{type(e).__name__}: {str(e)[:600]}"}
    record.update(probe_rf=result.probe_rf, probe_input=list(result.probe.input_size), clipped=result.probe.clipped)
    if not result.verified:
        return {**record, "status": "mismatch",
                "units": [[c.axis, c.unit, list(c.analysis), list(c.probe)] for c in result.probe.units if not c.match]}
    return {**record, "status": "global" if result.final_rf == "global" else "exact"}


# ---- the run (resumable) ----------------------------------------------------------------------------------

def load(cache: Path) -> dict:
    return json.loads(cache.read_text()) if cache.exists() else {}


def save(cache: Path, data: dict):
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, cache)


def run_one(name, timeout) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--one", name]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "crash", "error": f"ran past the time limit of {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"model": name, "status": "crash", "error": f"worker exit {done.returncode}: {' | '.join(tail)}"}
    record = json.loads(lines[-1])
    record["wall_s"] = round(time.perf_counter() - start, 1)
    return record


def todo(data, args, digest) -> list:
    chosen = []
    for family, pick in sorted(data["families"].items()):
        if args.only and family not in args.only and pick["model"] not in args.only:
            continue
        done = data.get("results", {}).get(pick["model"])
        if (done is None or (args.rerun and done["status"] in args.rerun)
                or (args.stale and done.get("sources") != digest)):
            chosen.append((family, pick["model"]))
    return chosen


def run(args):
    cache = Path(args.cache)
    data = load(cache)
    say = (lambda m: print(m, flush=True)) if not sys.stdout.isatty() else (lambda m: print("\r" + m[:100].ljust(100), end="", flush=True))
    if "families" not in data:
        data["families"] = smallest_per_family(say)
        save(cache, data)
        print()
    digest = sources_hash()
    work = todo(data, args, digest)
    start = time.perf_counter()
    for i, (family, name) in enumerate(work):
        eta = (time.perf_counter() - start) / i * (len(work) - i) if i else None
        print(f"[{i + 1}/{len(work)}] {family}: {name}" + (f" (ETA {eta / 60:.0f} min)" if eta else ""), flush=True)
        record = run_one(name, args.timeout)
        record.update(family=family, sources=digest)
        data.setdefault("results", {})[name] = record
        save(cache, data)
        print(f"    {record['status']}: RF {record.get('final_rf')} (probe {record.get('probe_rf')})"
              + (f" {record.get('unknown') or record.get('error', '')}"[:200] if record["status"] in
                 ("unknown", "crash", "not run") else ""), flush=True)
    print(table(data))


def table(data) -> str:
    """The counts, then a row per family."""
    results = [data.get("results", {}).get(pick["model"]) for pick in data["families"].values()]
    results = [r for r in results if r]
    counts = {s: sum(r["status"] == s for r in results) for s in STATUSES}
    clipped = sum(bool(r.get("clipped")) and r["status"] in ("exact", "global") for r in results)
    lines = ["| " + " | ".join(STATUSES) + " | families |", "|" + "---:|" * (len(STATUSES) + 1),
             "| " + " | ".join(str(counts[s]) for s in STATUSES) + f" | {len(results)} |", "",
             f"Clipped (exact or global on an input the RF does not fit in): {clipped}.", "",
             "| family | model | input | RF (analysis) | probe | status |", "|---|---|---:|---:|---:|---|"]
    for r in sorted(results, key=lambda r: r["family"]):
        note = r.get("unknown") or (r.get("error", "")[:90] if r["status"] in ("crash", "not run") else "")
        note = note or ("clipped" if r.get("clipped") else "")
        lines.append(f"| {r['family']} | {r['model']}{' (features)' if r.get('features') else ''} | "
                     f"{r.get('input', '')} | {r.get('final_rf', '')} | {r.get('probe_rf', '')} | "
                     f"{r['status']}{': ' + note.replace('|', '/') if note else ''} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(HERE / "timm_rf.json"), help="results, one record per model")
    parser.add_argument("--only", nargs="*", default=(), help="families or models to run")
    parser.add_argument("--rerun", nargs="*", default=(), choices=STATUSES, help="run the models of these statuses again")
    parser.add_argument("--stale", action="store_true", help="run again the models measured with other RF sources")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per model")
    parser.add_argument("--table", action="store_true", help="print the table of the cache and stop")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the worker: measure one model, print its record
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
    elif args.table:
        print(table(load(Path(args.cache))))
    else:
        run(args)


if __name__ == "__main__":
    main()
