"""Data-parallel training on the CPU without torchrun: `cnnscope train --procs N`.

N processes (gloo), each with cores/N threads, each taking 1/N of every batch. On 2 cores two
1-thread processes train basic about 1.3x faster than one 2-thread process: batch norm, ReLU and
the depthwise convs on 4x4 maps are too small to split well over threads, while the gradient
all-reduce of a compact model costs next to nothing (benchmarks/README.md).

--procs auto is one process per 64 images of the batch (dividing it, at most 8), whatever the
machine: batch norm normalises over each process's share of the batch, so the process count is
part of the result (--procs 1 and 2 train to different weights), and the same command and seed
must train the same model on 2 cores and on 16: 2 processes for a batch of 128, 1 for a batch
under 128. Only the threads per process (cores/N) follow the machine, which changes no more than
the rounding of float sums.

The parent starts the processes and waits; rank 0 prints, ranks > 0 write to a log that is shown
if they fail. The ranks run in a session of their own, so a Ctrl-C in the terminal reaches the
parent alone, which passes it on once (as it passes on SIGINT or SIGTERM sent to its pid), and
they die with the parent, however it ends (`die_with_parent`). A rank that dies (killed, or
crashed) ends the others at once, and the parent says in one line which and how.
"""
import ctypes
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from cnnscope.core.runtime import cpu_cores, free_port, split_batch
from cnnscope.errors import CnnscopeError

MIN_BATCH_PER_PROCESS = 64  # below this, batch-norm statistics get noisy and the kernels slow per image
MAX_AUTO_PROCS = 8  # --procs auto never starts more (a batch of 4096 is not 64 processes)
USER_ERROR_EXIT = 2  # a CnnscopeError: every rank meets it and rank 0 says why
LOST_PEER_EXIT = 3  # a rank whose collective failed because another rank died: not the cause
STOPPED_EXIT = 130  # Ctrl-C: an orderly stop, rank 0 saves and prints the resume command
GRACE_S = 10.0  # after one rank fails with a user error, how long the others get to end by themselves
PARENT_PID_VAR = "CNNSCOPE_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 1.0


def launched() -> bool:
    """Whether this process is one rank of a group (this launcher's or torchrun's)."""
    return "WORLD_SIZE" in os.environ


def auto_procs(batch_size: int) -> int:
    """CPU processes for a batch, the same on every machine: one per 64 images, dividing the batch
    evenly, at most MAX_AUTO_PROCS; 1 for a batch under 128."""
    n = max(1, min(MAX_AUTO_PROCS, batch_size // MIN_BATCH_PER_PROCESS))
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


def run_processes(job: dict, procs: int, after_loss=lambda: "") -> int:
    """Run `job` in `procs` processes of cores/procs threads each; their exit code. `job` is
    {"target": "package.module:function", "args": {...}}: each rank calls function(**args), which
    returns the rank's exit code (see `worker`).

    SIGINT (Ctrl-C) and SIGTERM to the parent are passed on to every process: each stops after its
    batch, rank 0 saves and prints the resume command. `after_loss()` says what the user can do
    when a rank was killed or crashed (e.g. the resume command); it is called after the others ended.
    """
    threads = max(1, cpu_cores() // procs)
    with tempfile.TemporaryDirectory(prefix="cnnscope-procs-") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        base = {**os.environ, "WORLD_SIZE": str(procs), "LOCAL_WORLD_SIZE": str(procs), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": str(threads), "CNNSCOPE_PROCS": str(procs),
                PARENT_PID_VAR: str(os.getpid())}
        logs, children = [], []

        def forward(signum, frame):
            _signal_all(children, signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for rank in range(procs):
                log = None if rank == 0 else open(Path(tmp) / f"rank{rank}.log", "w")
                logs.append(log)
                # a session of their own: the terminal's Ctrl-C reaches this process alone, which
                # passes it on once (twice would be a second Ctrl-C: stop at once, unsaved)
                children.append(subprocess.Popen(
                    [sys.executable, "-m", "cnnscope.runs.launch", str(job_file)], start_new_session=True,
                    env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=log, stderr=log))
            failed = _wait(children)
        finally:
            _signal_all(children, signal.SIGKILL)  # none left after _wait; some if this process fails
            for s, handler in previous.items():
                signal.signal(s, handler)
            for log in logs:
                if log is not None:
                    log.close()
        return _outcome(children, failed, Path(tmp), after_loss)


def _outcome(children, failed, logs: Path, after_loss) -> int:
    """The exit code of the group, and what the user is told where rank 0 could not say it."""
    codes = [p.returncode for p in children]
    procs = len(children)
    if failed is None or codes[0] == USER_ERROR_EXIT:
        return codes[0]  # rank 0 printed what happened
    code = codes[failed]
    if code < 0:  # killed by a signal: its log holds nothing useful, the others' only a lost connection
        print(f"Process {failed} of {procs} was killed by {_signal_name(-code)}; the others were stopped. "
              f"{after_loss()}".strip(), file=sys.stderr)
        return 128 - code  # the shell's convention for a death by signal
    if code == LOST_PEER_EXIT:  # no rank failed by itself: one ended early (e.g. a Ctrl-C before training)
        print(f"Process {failed} of {procs} lost its connection to the others. {after_loss()}".strip(),
              file=sys.stderr)
        return code
    if failed == 0:
        return code  # its traceback is on the terminal
    output = (logs / f"rank{failed}.log").read_text(errors="replace").strip()
    print(f"Process {failed} of {procs} failed (exit code {code}); its output:\n{output[-4000:]}\n{after_loss()}"
          .strip(), file=sys.stderr)
    return code


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _signal_all(children, signum):
    for p in children:
        if p.poll() is None:
            p.send_signal(signum)


def _first_failure(children, stopped=()) -> int | None:
    """The rank that failed (the lowest, if several are seen at once). Not the cause: a rank that
    only lost its connection to a dead one (unless no other rank failed), nor one that `_wait`
    stopped itself (`stopped`)."""
    ended = [(rank, p.returncode) for rank, p in enumerate(children)
             if rank not in stopped and p.returncode not in (None, 0, STOPPED_EXIT)]
    causes = [rank for rank, code in ended if code != LOST_PEER_EXIT]
    return (causes or [rank for rank, _ in ended] or [None])[0]


def _wait(children) -> int | None:
    """Wait for every child; the rank that failed first (None: none did). When rank 0 fails it has
    said why, and the others are ended at once (they would block on it, or fail on the lost
    connection), as after a crash of any rank. A user error of a rank > 0 gives rank 0 GRACE_S to
    meet the same error and say it."""
    failed, deadline, stopped = None, None, set()
    while [p.poll() for p in children].count(None):  # poll every child: any() would stop at the first
        if failed is None:
            failed = _first_failure(children)
            if failed is not None:
                code = children[failed].returncode
                deadline = time.monotonic() + (GRACE_S if failed > 0 and code == USER_ERROR_EXIT else 0)
        if deadline is not None and time.monotonic() >= deadline:
            stopped |= {rank for rank, p in enumerate(children) if p.poll() is None}
            _signal_all(children, signal.SIGKILL)
        time.sleep(0.05)
    if failed is None or children[failed].returncode == LOST_PEER_EXIT:
        failed = _first_failure(children, stopped)  # the rank that died may be seen after the one it left
    return failed


def die_with_parent(parent_pid: int) -> None:
    """End this process at once when `parent_pid` (the launcher) ends, however it ends: a rank left
    training on would write the run folder next to a later --resume. On Linux the kernel sends
    SIGKILL at the parent's death (PR_SET_PDEATHSIG; the parent starts the ranks from its main
    thread, whose end is what counts); elsewhere a thread polls the parent."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
                os._exit(1)
            return

    def poll():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=poll, name="cnnscope-parent-watch", daemon=True).start()


def lost_connection(error: RuntimeError) -> bool:
    """Whether a collective failed because the connection to another rank broke (gloo's transport
    errors, e.g. "[.../gloo/transport/tcp/pair.cc:545] Read error ...: Connection reset by peer"):
    the other rank died, and this one is not the cause."""
    return "gloo/transport/" in str(error)


def worker(job_file: str) -> int:
    """One rank: the job's function (e.g. `cnnscope.runs.train.train_job`), with the CLI's exit codes."""
    die_with_parent(int(os.environ[PARENT_PID_VAR]))
    from cnnscope.core.runtime import tune_cpu_runtime

    tune_cpu_runtime()
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    job = json.loads(Path(job_file).read_text())
    module, function = job["target"].split(":")
    try:
        return getattr(importlib.import_module(module), function)(**job["args"])
    except CnnscopeError as e:
        print(f"Error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    except RuntimeError as e:
        if not lost_connection(e):
            raise
        return LOST_PEER_EXIT  # another rank died: the parent says which, in one line
    except KeyboardInterrupt:  # Ctrl-C before the training loop or after it: nothing to save
        if os.environ["RANK"] == "0":
            print("Aborted!", file=sys.stderr)  # as click says it for a single process
        return STOPPED_EXIT


def exit_rank(code: int):
    """End a rank after its last collective and destroy_process_group, without the interpreter's
    finalization. DDP keeps the gloo group alive past destroy_process_group (its C++ threads run
    until the process ends), and a gloo thread that still releases a finished collective's tensor
    while the interpreter finalizes must take the GIL, which ends the thread by pthread_exit and the
    process by std::terminate ("terminate called without an active exception", exit -6). No rank
    waits on this one any more, and what it writes is written (and renamed into place) before."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(job_file: str):
    try:
        code = worker(job_file)
    except Exception:  # a bug: its traceback, as Python would print it
        traceback.print_exc()
        code = 1
    exit_rank(code)


if __name__ == "__main__":
    main(sys.argv[1])
