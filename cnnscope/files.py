"""Files written so that nothing is lost: every write goes to a temporary file beside its target and
is renamed into place, keeping the target's mode and writing through a symlink; a failed write is a
clear error naming the path, and temporary files of killed writers are removed.

Used by every layer that writes (runs, render); it knows nothing of runs, models or tensors.
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
        advice = "Free some space on that disk, or write somewhere else (e.g. another out folder)."
    else:
        advice = "Choose a folder you can write to (e.g. another out folder), or fix the permissions of this one."
    return CnnscopeError(f"Could not {action}: {what}. {advice}", arguments=("out",))


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
