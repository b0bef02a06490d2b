"""Data-parallel processes on the CPU: `cnnscope train --procs N` and `cnnscope bench --procs N`.

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

The ranks are started by torchrun's elastic agent (`elastic_launch`, in this process), in its
command form (`python -m cnnscope.runs.launch JOB`): measured on a loaded 2-core machine it reaches
a first all-reduce as fast as the Popen launcher it replaced (6.0 s against 7.2-7.8 s), while its
function form (multiprocessing spawn) is about 4 s slower. The agent watches the ranks, ends the
others when one fails (SIGTERM, then SIGKILL after 30 s), passes SIGINT/SIGTERM sent to this
process on to them, and starts them in sessions of their own, so that a terminal's Ctrl-C reaches
this process alone and is passed on once. Rank 0 prints; ranks > 0 write logs that are shown if
they fail. What the agent does not do, this module adds: the ranks die with this process however
it ends (`die_with_parent`), a failure is said in one line (not the agent's log and banner), a rank
that only lost its connection to a dead one is never blamed, rank 0's user error is raised again in
this process (said once, by the caller), and ranks end without the interpreter's racy finalization
(`exit_rank`).
"""
import ctypes
import importlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from cnnscope.core.runtime import cpu_cores, split_batch
from cnnscope.errors import KINDS, CnnscopeError

MIN_BATCH_PER_PROCESS = 64  # below this, batch-norm statistics get noisy and the kernels slow per image
MAX_AUTO_PROCS = 8  # --procs auto never starts more (a batch of 4096 is not 64 processes)
USER_ERROR_EXIT = 2  # a CnnscopeError: every rank meets it and rank 0 says why
LOST_PEER_EXIT = 3  # a rank whose collective failed because another rank died: not the cause
STOPPED_EXIT = 130  # Ctrl-C: an orderly stop, rank 0 saves and prints the resume command
GRACE_S = 10.0  # how long a rank > 0 that met a user error waits for rank 0 to meet and say it
PARENT_PID_VAR = "CNNSCOPE_LAUNCHER_PID"
COMMAND_VAR = "CNNSCOPE_COMMAND"  # the command line the user typed (a rank's own argv is the job file)
STARTED_VAR = "CNNSCOPE_STARTED"  # when that command's process started (time.time(); a rank starts later)
ERROR_FILE = "error.json"  # beside the job file: rank 0's CnnscopeError, for the launcher to raise
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_IMPORTED = time.time()
PARENT_POLL_S = 1.0


def command_line() -> str:
    """The cnnscope command this process runs for the user, as a shell line: its own arguments, or
    in a rank that run_processes started, the launching command's."""
    import shlex

    return os.environ.get(COMMAND_VAR) or shlex.join(["cnnscope", *sys.argv[1:]])


def command_started() -> float:
    """When the command this process runs for the user started (time.time() units, the interpreter's
    start-up included): in a rank that run_processes started, the launching command's start."""
    if STARTED_VAR in os.environ:
        return float(os.environ[STARTED_VAR])
    try:  # Linux: the process's start in clock ticks after boot (field 22 of /proc/self/stat)
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED  # elsewhere: when this module was imported (torch's import, the bulk of start-up, is not in)


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
        raise CnnscopeError(f"procs takes a whole number of processes (1 or more) or 'auto', not {procs!r}.",
                            arguments=("procs",))
    if n > 1 and device_type != "cpu":
        raise CnnscopeError(f"procs={n} runs data-parallel processes on the CPU; on {device_type} leave procs at "
                            f"'auto' or 1 and use one process per GPU: torchrun --nproc_per_node=GPUS -m cnnscope "
                            f"train ...", arguments=("procs",))
    split_batch(batch_size, n)
    return n


def run_processes(job: dict, procs: int, after_loss=lambda: "") -> int:
    """Run `job` in `procs` processes of cores/procs threads each, under torchrun's elastic agent;
    their exit code. `job` is {"target": "package.module:function", "args": {...}}: each rank calls
    function(**args), which returns the rank's exit code (see `worker`). A CnnscopeError that rank 0
    meets is raised here, in the caller's process.

    SIGINT (Ctrl-C) and SIGTERM to this process are passed on by the agent to every rank: each stops
    after its batch, rank 0 saves and prints the resume command. `after_loss()` says what the user
    can do when a rank was killed or crashed (e.g. the resume command); it is called after the
    others ended.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    settings = {"OMP_NUM_THREADS": str(max(1, cpu_cores() // procs)), "CNNSCOPE_PROCS": str(procs),
                PARENT_PID_VAR: str(os.getpid()), COMMAND_VAR: command_line(), STARTED_VAR: repr(command_started())}
    with tempfile.TemporaryDirectory(prefix="cnnscope-procs-") as tmp, _environment(settings), _quiet_agent():
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        # rank 0 prints to the terminal; the others write logs, shown if one of them fails alone
        logs = DefaultLogsSpecs(log_dir=str(Path(tmp) / "logs"), redirects={r: Std.ALL for r in range(1, procs)})
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=procs, rdzv_backend="c10d",
                              rdzv_endpoint="127.0.0.1:0", run_id=f"cnnscope-{os.getpid()}", max_restarts=0,
                              monitor_interval=0.1, logs_specs=logs)
        try:
            elastic_launch(config, sys.executable)("-m", __name__, str(job_file))
        except ChildFailedError as e:
            return _outcome({rank: f.exitcode for rank, f in e.failures.items()}, procs, Path(tmp), after_loss)
        except SignalException:
            return STOPPED_EXIT  # the ranks stopped: rank 0 saved and said how to resume
    return 0


@contextmanager
def _environment(settings: dict):
    """os.environ with `settings` (what the agent passes on to the ranks), restored afterwards."""
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet_agent():
    """The agent logs every step and failure; the user gets one line from `_outcome` instead. Each
    of its modules sets its own logger's level (torch's elastic `get_logger`), so every one is
    silenced, not only the package's: Ctrl-C had printed "Received 2 death signal"."""
    prefixes = ("torch.distributed.elastic", "torch.distributed.launcher")
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith(prefixes)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _cause(codes: dict) -> int:
    """The rank that failed (the lowest, if several): not one that only lost its connection to a
    dead one, unless no other failed, nor one the agent stopped (SIGTERM)."""
    ranks = sorted(codes)
    causes = [r for r in ranks if codes[r] not in (LOST_PEER_EXIT, STOPPED_EXIT, -signal.SIGTERM)]
    return (causes or ranks)[0]


def _outcome(codes: dict, procs: int, tmp: Path, after_loss) -> int:
    """The exit code of the group from the failed ranks' codes ({rank: code}), and what the user is
    told where rank 0 could not say it; rank 0's CnnscopeError is raised."""
    if codes.get(0) == USER_ERROR_EXIT:
        said = tmp / ERROR_FILE  # rank 0's CnnscopeError, raised here for the caller to word
        if said.is_file():
            error = json.loads(said.read_text())
            kind = KINDS.get(error.get("kind"), CnnscopeError)
            raise kind(error["message"], arguments=error["arguments"]) from None
        return USER_ERROR_EXIT  # rank 0 said why
    if STOPPED_EXIT in codes.values() and set(codes.values()) <= {STOPPED_EXIT, -signal.SIGTERM}:
        return STOPPED_EXIT  # a stop, and the agent ended the ranks that had not yet ended by themselves
    failed = _cause(codes)
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
    output = "\n".join(p.read_text(errors="replace").strip()
                       for p in sorted(tmp.glob(f"logs/*/attempt_0/{failed}/std*.log"), reverse=True))
    print(f"Process {failed} of {procs} failed (exit code {code}); its output:\n{output.strip()[-4000:]}\n"
          f"{after_loss()}".strip(), file=sys.stderr)
    return code


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


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


def call(job: dict, *first):
    """{"target": "package.module:function", "args": {...}} (a job, or a training run's callback,
    which each rank makes with its runs.training_run.TrainingRun first) -> function(*first, **args)."""
    module, function = job["target"].split(":")
    return getattr(importlib.import_module(module), function)(*first, **job["args"])


def worker(job_file: str) -> int:
    """One rank: the job's function (e.g. `cnnscope.runs.train.train_job`), with the CLI's exit codes."""
    die_with_parent(int(os.environ[PARENT_PID_VAR]))
    from cnnscope.core.runtime import tune_cpu_runtime

    tune_cpu_runtime()
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    job = json.loads(Path(job_file).read_text())
    try:
        return call(job)
    except CnnscopeError as e:
        if os.environ["RANK"] != "0":  # rank 0 meets the same error and says it; the agent then ends this one
            print(f"Error: {e}", file=sys.stderr)
            time.sleep(GRACE_S)
        else:
            _hand_over(e, Path(job_file).with_name(ERROR_FILE))
        return USER_ERROR_EXIT
    except RuntimeError as e:
        if not lost_connection(e):
            raise
        return LOST_PEER_EXIT  # another rank died: the parent says which, in one line
    except KeyboardInterrupt:  # Ctrl-C before the training loop or after it: nothing to save
        if os.environ["RANK"] == "0":
            print("Aborted!", file=sys.stderr)  # as click says it for a single process
        return STOPPED_EXIT


def _hand_over(error: CnnscopeError, path: Path) -> None:
    """Rank 0's user error goes to the launcher, which raises it again in the caller's process (so that
    the caller words it, e.g. the CLI in terms of its flags); said here if it cannot be handed over."""
    try:
        path.write_text(json.dumps({"kind": type(error).__name__, "message": str(error),
                                    "arguments": list(error.arguments)}))
    except OSError:
        print(f"Error: {error}", file=sys.stderr)


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
