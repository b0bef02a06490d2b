"""Data-parallel training on the CPU without torchrun: `cnnscope train --procs N`.

N processes (gloo), each with cores/N threads, each taking 1/N of every batch. On 2 cores two
1-thread processes train basic about 1.3x faster than one 2-thread process: batch norm, ReLU and
the depthwise convs on 4x4 maps are too small to split well over threads, while the gradient
all-reduce of a compact model costs next to nothing (benchmarks/README.md). The parent only
starts the processes and waits; rank 0 prints, ranks > 0 write to a log that is shown if they fail.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnscope.errors import CnnscopeError

MIN_BATCH_PER_PROCESS = 64  # below this, batch-norm statistics get noisy and the kernels slow per image
USER_ERROR_EXIT = 2  # a CnnscopeError: every rank meets it and rank 0 says why
STOPPED_EXIT = 130  # Ctrl-C: an orderly stop, rank 0 saves and prints the resume command
GRACE_S = 10.0  # after one rank fails with a user error, how long the others get to end by themselves


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def launched() -> bool:
    """Whether this process is one rank of a group (this launcher's or torchrun's)."""
    return "WORLD_SIZE" in os.environ


def auto_procs(batch_size: int, cores: int | None = None) -> int:
    """CPU processes for a batch: one per core while each keeps at least 64 images, dividing the
    batch evenly; 1 for a batch under 128."""
    n = max(1, min(cores or cpu_cores(), batch_size // MIN_BATCH_PER_PROCESS))
    while batch_size % n:
        n -= 1
    return n


def resolve_procs(procs: str, batch_size: int, device_type: str, saved_world_size: int | None = None) -> int:
    """--procs (N or "auto") -> a process count. auto: the resumed run's count, else auto_procs on
    the CPU, else 1 (several GPUs: torchrun)."""
    if procs == "auto":
        if saved_world_size is not None:
            return saved_world_size if device_type == "cpu" else 1
        return auto_procs(batch_size) if device_type == "cpu" else 1
    try:
        n = int(procs)
    except ValueError:
        n = 0
    if n < 1:
        raise CnnscopeError(f"--procs takes a whole number of processes (1 or more) or 'auto', not {procs!r}.")
    if n > 1 and device_type != "cpu":
        raise CnnscopeError(f"--procs {n} runs data-parallel processes on the CPU; on {device_type} drop --procs "
                            f"and use one process per GPU: torchrun --nproc_per_node=GPUS -m cnnscope train ...")
    split_batch(batch_size, n)
    return n


def split_batch(batch_size: int, procs: int) -> int:
    """Each process's share of the (global) batch; a clear error where it does not split evenly."""
    if batch_size % procs:
        raise CnnscopeError(f"The batch of {batch_size} does not split evenly over {procs} processes; choose a "
                            f"process count (--procs, or torchrun's --nproc_per_node) that divides it, or change "
                            f"--batch-size.")
    return batch_size // procs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(job: dict, procs: int) -> int:
    """Run `job` (see `worker`) in `procs` processes of cores/procs threads each; their exit code.

    Ctrl-C reaches every process from the terminal (each stops after its batch, rank 0 saves), so
    the parent ignores it; a SIGTERM to the parent is passed on to them.
    """
    threads = max(1, cpu_cores() // procs)
    with tempfile.TemporaryDirectory(prefix="cnnscope-procs-") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        base = {**os.environ, "WORLD_SIZE": str(procs), "LOCAL_WORLD_SIZE": str(procs), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": str(threads), "CNNSCOPE_PROCS": str(procs)}
        logs, children = [], []
        for rank in range(procs):
            log = None if rank == 0 else open(Path(tmp) / f"rank{rank}.log", "w")
            logs.append(log)
            children.append(subprocess.Popen(
                [sys.executable, "-m", "cnnscope.launch", str(job_file)],
                env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=log, stderr=log))
        previous = {signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: None),
                    signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: _signal_all(children, signal.SIGTERM))}
        try:
            failed = _wait(children)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for log in logs:
                if log is not None:
                    log.close()
        codes = [p.returncode for p in children]
        if failed is None or failed == 0 or codes[0] == USER_ERROR_EXIT:
            return codes[0]  # rank 0 printed what happened
        output = (Path(tmp) / f"rank{failed}.log").read_text(errors="replace").strip()
        print(f"Process {failed} of {procs} failed (exit code {codes[failed]}); its output:\n{output[-4000:]}",
              file=sys.stderr)
        return codes[failed] if codes[failed] > 0 else 1


def _signal_all(children, signum):
    for p in children:
        if p.poll() is None:
            p.send_signal(signum)


def _wait(children) -> int | None:
    """Wait for every child; the rank that failed first (None: none did). When rank 0 fails it has
    said why, and the others are ended at once (they would block on it, or fail on the lost
    connection with a traceback), as after a crash of any rank. A user error of a rank > 0 gives
    rank 0 GRACE_S to meet the same error and say it."""
    failed, deadline = None, None
    while [p.poll() for p in children].count(None):  # poll every child: any() would stop at the first
        if failed is None:
            for rank, p in enumerate(children):
                if p.returncode not in (None, 0, STOPPED_EXIT):
                    failed = rank
                    wait_for_rank0 = rank > 0 and p.returncode == USER_ERROR_EXIT
                    deadline = time.monotonic() + (GRACE_S if wait_for_rank0 else 0)
                    break
        if deadline is not None and time.monotonic() >= deadline:
            _signal_all(children, signal.SIGKILL)
        time.sleep(0.05)
    if failed is None:
        failed = next((r for r, p in enumerate(children) if p.returncode not in (0, STOPPED_EXIT)), None)
    return failed


def worker(job_file: str) -> int:
    """One rank: the job's training run (`cnnscope.train.train`), with the CLI's exit codes."""
    from cnnscope.cli import tune_cpu_runtime

    tune_cpu_runtime()
    import torch

    from cnnscope import train
    from cnnscope.checkpoint import load_checkpoint

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    job = json.loads(Path(job_file).read_text())
    try:
        opts = train.TrainOptions.from_json(job["options"])
        ckpt = load_checkpoint(job["resume"]) if job["resume"] else None
        result = train.train(opts, resume_ckpt=ckpt, run_dir=job["run_dir"], overwrite=job["overwrite"])
    except CnnscopeError as e:
        print(f"Error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    return STOPPED_EXIT if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))
