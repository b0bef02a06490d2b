"""Files written so that nothing is lost and nothing outside is touched: every write goes to a
temporary file beside its target and is renamed into place; the target and the folders below the
run or output folder it belongs to are reached without following a symbolic link; a failed write
is a clear error naming the path, and temporary files of killed writers are removed.

Used by every layer that writes (runs, render); it knows nothing of runs, models or tensors.
"""
import contextvars
import csv
import errno
import io
import os
import re
import secrets
import stat
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from cnnscope.errors import CnnscopeError

# .<name>.<pid of the writer>.<8 random characters>.tmp; versions before the pid: .<name>.<8>.tmp
TEMP_NAME = re.compile(r"^\..+?\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")
OLD_TEMP_AGE_S = 3600  # a temp without a pid is stale after this long (a write takes seconds)
# torch.save's stream writer turns a failed write into a RuntimeError ("unexpected pos 294784 vs
# 294680"), with the OSError of the write as its __context__ where there was one
_FAILED_WRITE = re.compile(r"unexpected pos|write failed")
# the run and output folders of the writes under way (writing_into), innermost last
_FOLDERS = contextvars.ContextVar("cnnscope_output_folders", default=())


@contextmanager
def writing_into(folder):
    """Within the block, a write (or removal) below `folder` reaches its file one folder at a time
    from `folder` down, never through a symbolic link: `folder` is the run or output folder the
    user named (itself followed where it is a link), everything below it is cnnscope's."""
    token = _FOLDERS.set((*_FOLDERS.get(), Path(os.path.abspath(folder))))
    try:
        yield
    finally:
        _FOLDERS.reset(token)


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(fileobj) on a temporary file beside `path`, then rename it into place.

    `path` and every folder between it and its output folder (writing_into; else its own folder)
    must be a regular file or a real folder, not a symbolic link: a link is refused, naming it.
    An existing file keeps its mode (a new file gets 0666 less the umask); a file without write
    permission is refused. Stale temporary files of killed writes in the folder are removed first.
    A write the disk refuses (full, read-only, no permission) leaves no temporary file and is a
    CnnscopeError naming the path.
    """
    path = Path(os.path.abspath(path))
    folder = _open_folder(path, create=True)
    tmp = None
    try:
        mode = _mode_for(folder, path)
        remove_stale_temps(folder)
        tmp = f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder)
        except OSError as e:
            tmp = None
            raise disk_error(f"write {path}", e) from None
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
            tmp = None
        except (OSError, RuntimeError) as e:
            if not (_os_error(e) or _FAILED_WRITE.search(str(e))):
                raise  # not a write that failed: a bug, keep its traceback
            raise disk_error(f"write {path}", e) from None
    finally:
        if tmp is not None:  # the write failed: its temporary file goes
            with suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
        os.close(folder)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_csv(path: Path, rows) -> None:
    """Rows (sequences of cells, the header first) as a CSV file, as csv.writer writes them."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def make_dirs(folder: Path) -> None:
    """mkdir -p of a folder the user named (links followed), with a refused folder (read-only disk,
    /proc, a file in the way) as a CnnscopeError."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(f"create the folder {folder}", e) from None


def remove(path: Path) -> None:
    """Delete the regular file `path` (absent: nothing to do), reached as atomic_write_bytes reaches
    a target: a link on the way, or in its place, is refused and nothing is deleted."""
    path = Path(os.path.abspath(path))
    try:
        folder = _open_folder(path, create=False)
    except FileNotFoundError:
        return
    try:
        if _regular(folder, path):
            os.unlink(path.name, dir_fd=folder)
    except OSError as e:
        raise disk_error(f"delete {path}", e) from None
    finally:
        os.close(folder)


def output_root(path: Path) -> Path:
    """The folder a write to `path` starts from: the innermost writing_into folder holding it, else
    its own folder."""
    for folder in reversed(_FOLDERS.get()):
        if path.is_relative_to(folder) and path != folder:
            return folder
    return path.parent


def _open_folder(path: Path, *, create: bool) -> int:
    """A descriptor of the folder `path` lies in, opened from output_root(path) one name at a time
    with O_NOFOLLOW (each made when missing and `create`); FileNotFoundError for a missing one
    when not `create`; a link on the way is a CnnscopeError naming it."""
    root = output_root(path)
    if create:
        make_dirs(root)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        if isinstance(e, FileNotFoundError) and not create:
            raise
        raise disk_error(f"open the folder {root}", e) from None
    at = root
    for name in path.parent.relative_to(root).parts:
        at = at / name
        try:
            if create:
                with suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as e:
            kind = _kind(fd, name)
            os.close(fd)
            if kind == "link":
                raise linked(at, root) from None
            if isinstance(e, FileNotFoundError) and not create:
                raise
            raise disk_error(f"create the folder {at}", e) from None
        os.close(fd)
        fd = inner
    return fd


def _kind(folder: int, name: str) -> str | None:
    """What `name` in the folder `folder` is, not following a link: "link", or a name of KINDS, or
    None (absent)."""
    try:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    except OSError:
        return None
    return "link" if stat.S_ISLNK(mode) else _named(mode)


def _regular(folder: int, path: Path) -> bool:
    """Whether `path` (in `folder`) exists as a regular file; a link or anything else in its place
    is a CnnscopeError."""
    kind = _kind(folder, path.name)
    if kind == "link":
        raise linked(path, output_root(path))
    if kind not in (None, "file"):
        raise CnnscopeError(f"{path} is a {kind}, not a regular file, so cnnscope leaves it as it is: it writes only "
                            "files it made. Move it away, or write somewhere else (e.g. another out folder).",
                            arguments=("out",))
    return kind == "file"


KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
         (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def kind_of(path) -> str:
    """What `path` is, links followed: "file", "folder", "FIFO", "character device", "block device",
    "socket", "broken symbolic link" or "missing"."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "broken symbolic link" if os.path.islink(path) else "missing"
    return _named(mode)


def _named(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "special file")


def linked(path: Path, root: Path) -> CnnscopeError:
    """The refusal of a symbolic link where cnnscope writes."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return CnnscopeError(
        f"{path} is a symbolic link (to {target}), so cnnscope leaves it and what it points to alone: below the "
        f"folder it writes into ({root}) it writes and deletes only regular files it made, never through a link. "
        "Remove the link (the run's own file is then written anew), or write somewhere else (e.g. another out "
        "folder).", arguments=("out",))


def disk_error(action: str, e: Exception) -> CnnscopeError:
    """What the disk said, in words, and what to do about it."""
    os_error = _os_error(e)
    code = os_error.errno if os_error else None
    what = os.strerror(code) if code else f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = "Free some space on that disk, or write somewhere else (e.g. another out folder)."
    elif code == errno.EROFS:
        advice = "That file system is mounted read-only: write somewhere else (e.g. another out folder)."
    else:
        advice = "Choose a folder you can write to (e.g. another out folder), or fix the permissions of this one."
    return CnnscopeError(f"Could not {action}: {what}. {advice}", arguments=("out",))


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind `e` (itself, or what it was raised from or during)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def _mode_for(folder: int, path: Path) -> int:
    """The mode the written file gets: the existing file's, else 0666 less the umask."""
    if not _regular(folder, path):
        umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask
    st = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
    if os.fstatvfs(folder).f_flag & os.ST_RDONLY:
        raise disk_error(f"write {path}", OSError(errno.EROFS, os.strerror(errno.EROFS)))
    # root may write any file, so the missing write bits of a file chmod'ed read-only count too
    if not (st.st_mode & 0o222 and os.access(path.name, os.W_OK, dir_fd=folder)):
        raise CnnscopeError(f"{path} is read-only, so it is left as it is. Make it writable (chmod u+w) if it "
                            "should be replaced, or write somewhere else.")
    return stat.S_IMODE(st.st_mode)


def remove_stale_temps(folder: int) -> None:
    """Delete the temporary files of atomic writes in the folder of the descriptor `folder` whose
    writer died mid-write (its pid no longer runs; a temp from before pids were in the names, once it
    is an hour old). Only regular files of this module's pattern are touched."""
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
                     else time.time() - entry.stat(follow_symlinks=False).st_mtime > OLD_TEMP_AGE_S)
            if stale:
                os.unlink(entry.name, dir_fd=folder)
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
