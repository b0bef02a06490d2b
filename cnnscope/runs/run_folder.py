"""The run folder `cnnscope train` writes: what marks one, its lock, and what --overwrite removes.

A folder is a cnnscope run when it holds the lock file (every run made since the lock exists) or
a config.json that cnnscope wrote (it names the cnnscope version). While a run trains, its
training process (rank 0) holds an flock on the lock file, so no second `train` writes into the
folder; the OS releases the lock when the process ends, however it ends. --overwrite removes only
the files cnnscope commands write, so whatever else a user keeps in the folder stays.

Every command that writes into a run folder first refuses one whose entries (the files and
folders cnnscope writes there, and all that its own subfolders hold) are symbolic links, naming
them, and then writes below it through files.writing_into: never through a link.
"""
import fcntl
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from cnnscope import files
from cnnscope.files import disk_error, make_dirs
from cnnscope.errors import RunError

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
SUBFOLDERS = {"plots": PLOTS, "checkpoints": CHECKPOINTS, "model_source": MODEL_SOURCE, "export": EXPORTS,
              "tensorboard": EVENTS}
# where a command on a checkpoint outside any run writes (never the checkpoint's own folder)
CHECKPOINT_OUTPUTS = Path("reports")


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def is_run(folder: Path) -> bool:
    folder = Path(folder)
    if _is_regular(folder / LOCK_NAME):
        return True
    if not _is_regular(folder / "config.json"):
        return False
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and isinstance(config.get("versions"), dict) and "cnnscope" in config["versions"]


def run_files(folder: Path) -> list[Path]:
    """The regular files in `folder` that cnnscope writes into a run folder (links are not followed)."""
    folder = Path(folder)
    found = [folder / name for name in RUN_FILES if _is_regular(folder / name)]
    for sub, patterns in SUBFOLDERS.items():
        if _is_folder(folder / sub):
            found += sorted(p for pattern in patterns for p in (folder / sub).glob(pattern) if _is_regular(p))
    return found


def linked_entries(folder: Path) -> list[Path]:
    """The symbolic links among what cnnscope writes in the run folder `folder`: its run files,
    lock and subfolders, and anything inside those subfolders."""
    folder = Path(folder)
    found = [folder / name for name in (*RUN_FILES, LOCK_NAME, *SUBFOLDERS) if (folder / name).is_symlink()]
    for sub in SUBFOLDERS:
        if _is_folder(folder / sub):
            for top, dirs, names in os.walk(folder / sub):  # os.walk does not enter linked folders
                found += [Path(top) / name for name in sorted(dirs + names) if (Path(top) / name).is_symlink()]
    return found


def refuse_links(folder: Path) -> None:
    """A RunError naming the linked entries of the run folder `folder`, if it has any."""
    links = linked_entries(folder)
    if links:
        names = ", ".join(f"{p.relative_to(folder)} -> {os.readlink(p)}" for p in links[:8])
        more = f" and {len(links) - 8} more" if len(links) > 8 else ""
        raise RunError(
            f"The run folder {folder} holds symbolic links where cnnscope writes its own files: {names}{more}. "
            "cnnscope writes and deletes only regular files it made inside a run folder, never through a link, "
            "so it leaves this folder as it is. Remove the links (the run's files are written anew), or use "
            "another run folder.")


@contextmanager
def writing_into(folder: Path):
    """The block writes into the run or output folder `folder`: refused when it holds linked entries
    (refuse_links); every write below it goes through files.writing_into."""
    refuse_links(folder)
    with files.writing_into(folder):
        yield


def checked_name(name: str) -> str:
    """`name` when it names one folder inside the out folder (not "", ".", "..", nor a path)."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0") or len(name.encode(errors="replace")) > 255:
        raise RunError(f"name={name!r} is no run folder name: a run's folder is out/<name>, so the name is one "
                            "folder name (not empty, not . or .., without slashes), e.g. basic-w32.",
                            arguments=("name",))
    return name


def output_folder(folder: Path, ckpt_path: Path, out=None) -> Path:
    """Where a command on the run or checkpoint at `folder` writes: `out` when given, else the
    folder when it is a cnnscope run, else reports/<checkpoint>-checkpoint: a checkpoint's own
    folder that is not a run (a download folder, say) is never written into."""
    if out is not None:
        return Path(out)
    if is_run(folder):
        return Path(folder)
    return CHECKPOINT_OUTPUTS / f"{Path(ckpt_path).stem}-checkpoint"


@contextmanager
def locked(folder: Path):
    """Hold `folder`'s run lock (the folder and lock file are made as needed) for the block, with
    this process's pid in the lock file; a RunError naming the holder if another process has it."""
    make_dirs(folder)
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if path.is_symlink():
            raise files.linked(path, Path(folder)) from None
        raise disk_error(f"create the lock file {path}", e) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted as the lock
        os.close(fd)
        raise RunError(f"{path} is not a regular file, so it cannot be the run's lock. Remove it, or train "
                            "into another folder (another name or out).", arguments=("name", "out"))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(
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
    refuse_links(folder)
    run = is_run(folder)
    if not run:  # refused before the lock file would mark the folder as a run
        refuse_foreign_files(folder)
    held.enter_context(locked(folder))
    held.enter_context(files.writing_into(folder))  # every later write of the run
    if not run or resuming:
        return ""
    started = (folder / "checkpoints" / "last.pth").is_file()
    if started and not overwrite:
        raise RunError(
            f"{folder} already holds a run. Continue it with resume={str(folder)!r}, choose another name, or set "
            "overwrite to replace it.", arguments=("resume", "name", "overwrite"),
        )
    for path in run_files(folder):
        files.remove(path)
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
        raise RunError(
            f"{folder} is not a cnnscope run (no {LOCK_NAME}, no config.json written by cnnscope), yet it holds "
            f"{names}, which a run would replace; cnnscope does not replace files it did not write, even with "
            "overwrite. Train into another folder (another name or out), or move those files away.",
            arguments=("overwrite", "name", "out"),
        )


def nothing_to_resume(folder: Path) -> RunError:
    """The error for --resume of a run stopped before its first checkpoint."""
    try:
        command = json.loads((Path(folder) / "config.json").read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        command = None
    started = f" (it was started with `{command}`)" if command else ""
    return RunError(
        f"{folder} holds a run stopped before its first checkpoint, so there is nothing to resume. Start it "
        f"again: train it as it was started, without resume{started}; it trains into this folder anew.",
        arguments=("resume",),
    )
