"""The run folder `cnnscope train` writes: what marks one, its lock, and what --overwrite removes.

A folder is a cnnscope run when it holds the lock file (every run made since the lock exists) or
a config.json that cnnscope wrote (it names the cnnscope version). While a run trains, its
training process (rank 0) holds an flock on the lock file, so no second `train` writes into the
folder; the OS releases the lock when the process ends, however it ends. --overwrite removes only
the files cnnscope commands write, so whatever else a user keeps in the folder stays.
"""
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from cnnscope.files import disk_error, make_dirs
from cnnscope.errors import CnnscopeError

LOCK_NAME = ".cnnscope.lock"
RUN_FILES = ("config.json", "train_log.csv", "metrics.json", "model_summary.txt", "rf.md",
             "classification_report.csv", "classification_report.md", "confusion_matrix.csv")
# the figures of train and evaluate, and of the commands that draw into RUN/plots
PLOTS = ("acc_curves.png", "loss_curves.png", "lr.png", "cm.png", "test_samples_grid.png", "misclassified_grid.png",
         "augmented_samples_grid.png", "gate_maps.png", "gate_shares.png", "attributions.png", "erf.png",
         "sharing_*.png")
CHECKPOINTS = ("last.pth", "best.pth", "epoch_*.pth")
MODEL_SOURCE = ("**/*.py",)  # the copy of the user's model source (runs.model_source)
EXPORTS = ("*.pt", "*.pt2", "*.onnx")  # cnnscope export
EVENTS = ("events.out.tfevents.*",)  # TensorBoard's, in the run's default events folder (runs.tensorboard)


def is_run(folder: Path) -> bool:
    folder = Path(folder)
    if (folder / LOCK_NAME).is_file():
        return True
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("versions"), dict) and "cnnscope" in config["versions"]


def run_files(folder: Path) -> list[Path]:
    """The files in `folder` that cnnscope writes into a run folder."""
    folder = Path(folder)
    found = [folder / name for name in RUN_FILES if (folder / name).is_file()]
    for sub, patterns in (("plots", PLOTS), ("checkpoints", CHECKPOINTS), ("model_source", MODEL_SOURCE),
                          ("export", EXPORTS), ("tensorboard", EVENTS)):
        found += sorted(p for pattern in patterns for p in (folder / sub).glob(pattern) if p.is_file())
    return found


@contextmanager
def locked(folder: Path):
    """Hold `folder`'s run lock (the folder and lock file are made as needed) for the block, with
    this process's pid in the lock file; a CnnscopeError naming the holder if another process has it."""
    make_dirs(folder)
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise disk_error(f"create the lock file {path}", e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CnnscopeError(
                f"{folder} is in use: process {holder} is training into it (it holds {path}). Wait for it to "
                "finish or stop it, or train into another folder (another name or out).", arguments=("name", "out"),
            ) from None
        # the pid goes into the locked file itself, in place: the lock is on this file
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def claim(folder: Path, held, *, resuming: bool, overwrite: bool) -> str:
    """Lock `folder` for a training run (the lock stays in `held`, an ExitStack) and make it ready.

    A new run may go into a folder that is not a run and holds none of a run's files, into a run
    stopped before its first checkpoint (started again), or with --overwrite into any run not in
    use; the run's own files are removed first. Returns a line for the user ("" for none).
    """
    folder = Path(folder)
    run = is_run(folder)
    if not run:  # refused before the lock file would mark the folder as a run
        refuse_foreign_files(folder)
    held.enter_context(locked(folder))
    if not run or resuming:
        return ""
    started = (folder / "checkpoints" / "last.pth").is_file()
    if started and not overwrite:
        raise CnnscopeError(
            f"{folder} already holds a run. Continue it with resume={str(folder)!r}, choose another name, or set "
            "overwrite to replace it.", arguments=("resume", "name", "overwrite"),
        )
    for path in run_files(folder):
        path.unlink()
    for sub in ("plots", "checkpoints"):
        try:
            (folder / sub).rmdir()
        except OSError:  # absent, or holds files of the user's
            pass
    if started:
        return f"Replacing the run in {folder} (--overwrite); files not written by cnnscope stay."
    return f"{folder} holds a run stopped before its first checkpoint (nothing to resume); starting it again."


def refuse_foreign_files(folder: Path) -> None:
    """A folder that is not a cnnscope run must not hold files a run would replace."""
    clashes = run_files(folder)
    if clashes:
        names = ", ".join(str(p.relative_to(folder)) for p in clashes[:5])
        raise CnnscopeError(
            f"{folder} is not a cnnscope run (no {LOCK_NAME}, no config.json written by cnnscope), yet it holds "
            f"{names}, which a run would replace; cnnscope does not replace files it did not write, even with "
            "overwrite. Train into another folder (another name or out), or move those files away.",
            arguments=("overwrite", "name", "out"),
        )


def nothing_to_resume(folder: Path) -> CnnscopeError:
    """The error for --resume of a run stopped before its first checkpoint."""
    try:
        command = json.loads((Path(folder) / "config.json").read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        command = None
    started = f" (it was started with `{command}`)" if command else ""
    return CnnscopeError(
        f"{folder} holds a run stopped before its first checkpoint, so there is nothing to resume. Start it "
        f"again: train it as it was started, without resume{started}; it trains into this folder anew.",
        arguments=("resume",),
    )
