"""This machine's yardsticks for `cnnscope bench`: its float32 multiply-add peak and its memory bandwidth
(cnnscope.core.bench), measured once, with the load average the machine had then, and cached per
machine and device in cnnscope's cache folder, so that a bench run under load is still measured
against what the machine does when nothing else runs. Measuring again keeps the higher peak.

The cache folder is $CNNSCOPE_CACHE_DIR, else $XDG_CACHE_HOME/cnnscope, else ~/.cache/cnnscope; its
file machine.json maps a machine key (host, processor or GPU, cores, torch version) to a record.
"""
import datetime
import json
import os
import platform
import warnings
from pathlib import Path

import torch

from cnnscope.core.bench import fma_peak_flops, triad_bytes_per_s
from cnnscope.core.runtime import cpu_cores
from cnnscope.errors import CnnscopeWarning
from cnnscope.files import atomic_write_text

CACHE_ENV = "CNNSCOPE_CACHE_DIR"
CACHE_FILE = "machine.json"


def cache_dir() -> Path:
    """cnnscope's cache folder (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnscope"


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def machine_key(device: torch.device) -> str:
    """What the yardsticks depend on: the host, the processor or GPU, the cores this process may use,
    the torch version (its BLAS)."""
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else _processor() or platform.machine()
    return f"{platform.node()} | {device.type}: {what} | {cpu_cores()} cores | torch {torch.__version__}"


def measure(device: torch.device) -> dict:
    """The yardsticks measured now: {peak_flops_per_s, peak_kernel, bandwidth_bytes_per_s, load_average
    (1 minute, just before), threads, measured_at (ISO time, seconds)}."""
    load = os.getloadavg()[0]
    peak, kernel = fma_peak_flops(device)
    return {
        "peak_flops_per_s": peak,
        "peak_kernel": kernel,
        "bandwidth_bytes_per_s": triad_bytes_per_s(device),
        "load_average": round(load, 2),
        "threads": torch.get_num_threads(),
        "measured_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _read_cache(path: Path) -> dict:
    """The cache's records, or {} where there is no readable one (a damaged file is measured again)."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def yardsticks(device: torch.device, measure_again: bool = False) -> dict:
    """This machine's record (see `measure`) from the cache, with "cached": True; else, or with
    `measure_again`, measured now, cached, and "cached": False. A measurement again that reads a
    lower peak than the cached one leaves the cached one (load only ever slows a measurement down),
    with a warning."""
    path = cache_dir() / CACHE_FILE
    key = machine_key(device)
    if path.is_symlink():  # never read or write through a link
        warnings.warn(f"{path} is a symbolic link, so the machine's peak is measured now and not cached; "
                      "remove the link to keep the measurement.", CnnscopeWarning, stacklevel=2)
        return {**measure(device), "cached": False}
    records = _read_cache(path)
    cached = records.get(key) if _complete(records.get(key)) else None
    if cached is not None and not measure_again:
        return {**cached, "cached": True}
    record = measure(device)
    if cached is not None and cached["peak_flops_per_s"] > record["peak_flops_per_s"]:
        warnings.warn(f"The peak measured now ({record['peak_flops_per_s'] / 1e9:,.1f} GFLOP/s, load average "
                      f"{record['load_average']:g}) is below the cached one ({cached['peak_flops_per_s'] / 1e9:,.1f} "
                      f"GFLOP/s, load average {cached['load_average']:g}), which is kept: load only slows a "
                      "measurement down. Measure again when the machine is quiet.", CnnscopeWarning, stacklevel=2)
        return {**cached, "cached": True}
    records[key] = record
    atomic_write_text(path, json.dumps(records, indent=1) + "\n")
    return {**record, "cached": False}


def _complete(record) -> bool:
    """Whether a cached record has every yardstick (one without peak_kernel was a matmul's alone, which
    may read half the peak: measured again)."""
    keys = ("peak_flops_per_s", "peak_kernel", "bandwidth_bytes_per_s", "load_average", "measured_at")
    return isinstance(record, dict) and all(k in record for k in keys) and record["peak_flops_per_s"] > 0 and \
        record["bandwidth_bytes_per_s"] > 0
