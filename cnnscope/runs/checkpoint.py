"""Checkpoints and run folders: atomic writes, safe loads, and RUN resolution.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts, tuples), so it loads with
`torch.load(..., weights_only=True)`. Keys: `model_spec` (the SPEC string it was built from),
`ctor` (constructor keywords), `model` (state_dict); training adds `optimizer`, `scheduler`,
`epoch`, `best_metric`, `rng`, `config`.
"""
import csv
import errno
import io
import os
import re
import stat
import tempfile
import time
from pathlib import Path

from cnnscope.errors import CnnscopeError

# .<name>.<pid of the writer>.<mkstemp's 8 characters>.tmp; versions before the pid: .<name>.<8>.tmp
TEMP_NAME = re.compile(r"^\..+?\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")
OLD_TEMP_AGE_S = 3600  # a temp without a pid is stale after this long (a write takes seconds)
# torch.save's stream writer turns a failed write into a RuntimeError ("unexpected pos 294784 vs
# 294680"), with the OSError of the write as its __context__ where there was one
_FAILED_WRITE = re.compile(r"unexpected pos|write failed")


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(fileobj) on a temporary file beside `path`, then rename it into place.

    It writes as an in-place write would: through a symlink to its target, keeping an existing
    file's mode (a new file gets 0666 less the umask, not mkstemp's 0600), and never over a file
    without write permission. Stale temporary files of killed writes in the folder are removed
    first. A write the disk refuses (full, read-only, no permission) leaves no temporary file and
    is a CnnscopeError naming the path.
    """
    path = Path(os.path.realpath(path))
    mode = _mode_for(path)
    make_dirs(path.parent)
    remove_stale_temps(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise disk_error(f"write {path}", e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if not (_os_error(e) or _FAILED_WRITE.search(str(e))):
            raise  # not a write that failed: a bug, keep its traceback
        raise disk_error(f"write {path}", e) from None
    finally:
        Path(tmp).unlink(missing_ok=True)  # already renamed away unless the write failed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_csv(path: Path, rows) -> None:
    """Rows (sequences of cells, the header first) as a CSV file, as csv.writer writes them."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def make_dirs(folder: Path) -> None:
    """mkdir -p, with a refused folder (read-only disk, /proc, a file in the way) as a CnnscopeError."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(f"create the folder {folder}", e) from None


def disk_error(action: str, e: Exception) -> CnnscopeError:
    """What the disk said, in words, and what to do about it."""
    os_error = _os_error(e)
    code = os_error.errno if os_error else None
    what = os.strerror(code) if code else f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = "Free some space on that disk, or write somewhere else (e.g. another --out)."
    else:
        advice = "Choose a folder you can write to (e.g. another --out), or fix the permissions of this one."
    return CnnscopeError(f"Could not {action}: {what}. {advice}")


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind `e` (itself, or what it was raised from or during)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def _mode_for(path: Path) -> int:
    """The mode the written file gets: the existing file's, else 0666 less the umask."""
    try:
        st = path.stat()
    except FileNotFoundError:
        umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask
    except OSError as e:
        raise disk_error(f"write {path}", e) from None
    # root may write any file, so the missing write bits of a file chmod'ed read-only count too
    if not (st.st_mode & 0o222 and os.access(path, os.W_OK)):
        raise CnnscopeError(f"{path} is read-only, so it is left as it is. Make it writable (chmod u+w) if it "
                            "should be replaced, or write somewhere else.")
    return stat.S_IMODE(st.st_mode)


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files of atomic writes in `folder` whose writer died mid-write (its pid
    no longer runs; a temp from before pids were in the names, once it is an hour old). Only names
    of this module's pattern are touched."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        found = TEMP_NAME.match(entry.name)
        if not found or not entry.is_file(follow_symlinks=False):
            continue
        try:
            stale = (not _running(int(found["pid"])) if found["pid"]
                     else time.time() - entry.stat().st_mtime > OLD_TEMP_AGE_S)
            if stale:
                os.unlink(entry.path)
        except OSError:
            pass  # removed by another writer meanwhile, or a read-only folder: the write itself will say


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        pass
    return True


def save_checkpoint(obj: dict, path) -> None:
    import torch

    atomic_write_bytes(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path) -> dict:
    """Load a checkpoint a user handed in; every failure is a clear CnnscopeError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CnnscopeError(
            f"Checkpoint {path} does not exist. Pass a run folder (reports/<run>) or a .pth file "
            "written by `cnnscope train`."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of arbitrary objects, not a torch file, empty ...
        first_line = (str(e).strip().splitlines() or [""])[0][:200]  # an empty file's EOFError has none
        detail = f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__
        if path.stat().st_size == 0:
            detail = "the file is empty"
        raise CnnscopeError(
            f"Checkpoint {path} could not be read ({detail}). "
            "It is corrupt, truncated, or not a cnnscope checkpoint; use another checkpoint of the run "
            "(checkpoints/last.pth or best.pth) or train again."
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_spec" not in ckpt:
        raise CnnscopeError(
            f"{path} is a torch file but not a cnnscope checkpoint (it has no 'model' and 'model_spec' "
            "entries). Pass a checkpoint written by `cnnscope train`."
        )
    return ckpt


def resolve_run(run) -> tuple[Path, Path]:
    """RUN (a reports/<run> folder or a checkpoint file) -> (run folder, checkpoint path).

    A folder gives its checkpoints/best.pth, else checkpoints/last.pth.
    """
    run = Path(run)
    if run.is_dir():
        for name in ("best.pth", "last.pth"):
            ckpt = run / "checkpoints" / name
            if ckpt.is_file():
                return run, ckpt
        raise CnnscopeError(
            f"Run folder {run} has no checkpoints/best.pth or checkpoints/last.pth. "
            "Pass a folder written by `cnnscope train`, or a checkpoint file."
        )
    if run.is_file():
        folder = run.parent.parent if run.parent.name == "checkpoints" else run.parent
        return folder, run
    raise CnnscopeError(
        f"RUN {run} is neither a run folder nor a checkpoint file. Pass reports/<run> or a .pth file."
    )


def load_weights(model, ckpt: dict, source, target: str) -> None:
    """Load a checkpoint's weights into `model` (built from SPEC `target`), or explain the mismatch."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CnnscopeError(
            f"The weights of {source} do not fit {target!r}: {str(e).splitlines()[0][:300]}. They were "
            f"trained for {ckpt['model_spec']!r} with constructor keywords {ckpt.get('ctor') or {}}; "
            "use that model and configuration."
        ) from None


def load_run_model(run, *, trust_spec=False, spec=None, ctor=None):
    """Rebuild the model of a run or checkpoint with its trained weights (eval mode).

    The model is the one the checkpoint names, built only if it is a zoo model or `trust_spec`
    (spec.check_file_spec); or, when the user names a `spec` (with `ctor`), that SPEC, and then the
    checkpoint's own SPEC is never built. Returns (model, checkpoint dict, run folder).
    """
    from cnnscope.core.training import apply_model_settings
    from cnnscope.runs.spec import build_model

    folder, path = resolve_run(run)
    ckpt = load_checkpoint(path)
    if spec is not None:  # the user's own SPEC with the run's weights
        model = build_model(spec, ctor)
        load_weights(model, ckpt, path, spec)
    else:
        model = build_model(ckpt["model_spec"], ckpt.get("ctor") or {}, read_from=f"Checkpoint {path}",
                            trust_spec=trust_spec)
        load_weights(model, ckpt, path, ckpt["model_spec"])
        # egrr's depth and gate temperature live outside the state_dict; without them the gates of a
        # run trained down to tau=0.1 would be read at tau=1.
        apply_model_settings(model, ckpt.get("model_settings") or {})
    model.eval()
    return model, ckpt, folder
