"""No fault loses data: the run-folder lock, --overwrite of runs only, restarting a run killed before
its first checkpoint, stale temporary files, atomic writes of every run file, and disk faults."""
import errno
import os
import shutil
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from cnnscope import files
from cnnscope.runs import run_folder, train
from cnnscope.files import atomic_write_bytes, atomic_write_text
from cnnscope.cli import cli
from cnnscope.errors import CnnscopeError, RunError

ROOT = Path(__file__).resolve().parents[1]


def invoke(runner, *args):
    result = runner.invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def train_args(spec, out, *extra):
    return ["train", spec, "--dataset", "fake", "--epochs", 1, "--batch-size", 32, "--device", "cpu",
            "--procs", 1, "--out", out, *extra]


def text_of(result) -> str:
    return " ".join(result.output.split())


def files_of(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_spec, tmp_path_factory):
    """One finished 1-epoch run; tests copy it before changing anything."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("finished")
    result = invoke(CliRunner(), *train_args(tiny_spec, out))
    assert result.exit_code == 0, result.output
    return out / "Tiny"


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "reports" / "Tiny"
    shutil.copytree(finished_run, copy)
    return copy


# ---- the lock ---------------------------------------------------------------------------------

HOLD_LOCK = "import sys\nfrom cnnscope.runs.run_folder import locked\nwith locked(sys.argv[1]):\n" \
            "    print('locked', flush=True)\n    sys.stdin.read()\n"


def test_a_run_in_use_is_refused_with_the_holders_pid_until_the_holder_dies(runner, error_of, tiny_spec, run_copy):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_copy)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"  # holds the lock from here until its stdin closes
        before = files_of(run_copy)
        for args in (train_args(tiny_spec, run_copy.parent, "--overwrite"),
                     ["train", "--resume", run_copy, "--trust-spec"]):
            refused = invoke(runner, *args)
            assert error_of(refused).arguments == ("name", "out")
            assert f"is in use: process {holder.pid} is training into it" in text_of(refused)
        assert files_of(run_copy) == before
    finally:
        holder.kill()  # SIGKILL: nothing of its own releases the lock, the OS does
        holder.wait()
    replaced = invoke(runner, *train_args(tiny_spec, run_copy.parent, "--overwrite"))
    assert replaced.exit_code == 0, replaced.output
    assert "Replacing the run" in text_of(replaced)
    assert (run_copy / run_folder.LOCK_NAME).read_text().strip() == str(os.getpid())


def test_the_lock_is_taken_once_and_given_back(tmp_path):
    with run_folder.locked(tmp_path / "run"):
        # flock locks belong to an open file, so a second open in this same process is refused too
        with pytest.raises(RunError) as refused:
            with run_folder.locked(tmp_path / "run"):
                pass
        assert refused.value.arguments == ("name", "out")
    with run_folder.locked(tmp_path / "run"):
        pass


# ---- --overwrite replaces cnnscope runs only, and only their files -------------------------------

def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(runner, error_of, tiny_spec, tmp_path):
    folder = tmp_path / "Tiny"
    folder.mkdir()
    (folder / "config.json").write_text('{"learning_rate": 0.1}\n')  # someone else's config
    (folder / "notes.txt").write_text("my notes\n")
    before = files_of(folder)
    for extra in ([], ["--overwrite"]):
        refused = error_of(invoke(runner, *train_args(tiny_spec, tmp_path, *extra)))
        assert isinstance(refused, RunError) and refused.arguments == ("overwrite", "name", "out")
        assert files_of(folder) == before and sorted(p.name for p in folder.iterdir()) == ["config.json", "notes.txt"]


def test_a_folder_without_run_files_takes_a_run_beside_the_users_files(runner, tiny_spec, tmp_path):
    (tmp_path / "Tiny").mkdir()
    (tmp_path / "Tiny" / "notes.txt").write_text("my notes\n")
    result = invoke(runner, *train_args(tiny_spec, tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "Tiny" / "notes.txt").read_text() == "my notes\n"
    assert run_folder.is_run(tmp_path / "Tiny")


def test_overwrite_removes_only_what_cnnscope_writes(run_copy):
    mine = {"notes.txt": b"notes", "plots/my_figure.png": b"png", "checkpoints/keep.pt": b"mine", "data/x": b"x",
            "tensorboard/notes.txt": b"mine"}
    for name, data in mine.items():
        (run_copy / name).parent.mkdir(exist_ok=True)
        (run_copy / name).write_bytes(data)
    for name in ("plots/erf.png", "plots/sharing_stage1.png", "checkpoints/epoch_001.pth",  # inspection, --save-every
                 "tensorboard/events.out.tfevents.1.host.2.0"):  # --tensorboard
        (run_copy / name).write_bytes(b"old")
    with ExitStack() as held:
        note = run_folder.claim(run_copy, held, resuming=False, overwrite=True)
    assert "Replacing the run" in note
    assert files_of(run_copy) == {**mine, run_folder.LOCK_NAME: f"{os.getpid()}\n".encode()}


def test_a_finished_run_needs_overwrite(runner, error_of, tiny_spec, run_copy):
    again = error_of(invoke(runner, *train_args(tiny_spec, run_copy.parent)))
    assert isinstance(again, RunError) and again.arguments == ("resume", "name", "overwrite")
    assert (run_copy / "checkpoints" / "last.pth").is_file()


# ---- a run killed before its first checkpoint ------------------------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL: no handler of cnnscope's runs."""


def killed(*args, **kwargs):
    raise Killed


def test_a_run_killed_before_its_first_checkpoint_starts_again(runner, tiny_spec, tmp_path, monkeypatch):
    args = [str(a) for a in train_args(tiny_spec, tmp_path)]
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(train, "run_loop", killed)
        m.setattr(sys, "argv", ["cnnscope", *args])  # config.json keeps the command line
        runner.invoke(cli, args)
    run = tmp_path / "Tiny"
    assert (run / "config.json").is_file() and not (run / "checkpoints" / "last.pth").exists()

    resume = invoke(runner, "train", "--resume", run, "--trust-spec")
    assert resume.exit_code == 2, resume.output
    text = text_of(resume)
    assert "stopped before its first checkpoint, so there is nothing to resume" in text
    assert "without resume" in text and "resume is --resume" in text and f"cnnscope train {tiny_spec}" in text  # the command it was started with

    again = invoke(runner, *train_args(tiny_spec, tmp_path))
    assert again.exit_code == 0, again.output
    assert "stopped before its first checkpoint (nothing to resume); starting it again" in text_of(again)
    assert (run / "checkpoints" / "last.pth").is_file()


# ---- stale temporary files ------------------------------------------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temps_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    hour_ago = time.time() - 2 * files.OLD_TEMP_AGE_S
    dead = dead_pid()
    stale = [f".last.pth.{dead}.ab12cd_9.tmp", f".README.md.{dead}.zzzzzzzz.tmp", ".best.pth.k3j4h5g6.tmp"]
    kept = [f".metrics.json.{os.getpid()}.abcdefgh.tmp",  # a writer that still runs
            ".rf.md.q1w2e3r4.tmp",  # no pid, but young: its writer may still run
            "user.tmp", ".notes.tmp", f".x.{dead}.short.tmp", "README.md"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    for name in (stale[2], kept[2], kept[3]):
        os.utime(tmp_path / name, (hour_ago, hour_ago))

    atomic_write_text(tmp_path / "config.json", "{}\n")

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["config.json"])


def test_a_killed_write_leaves_the_old_file_and_a_temp_the_next_write_removes(tmp_path):
    target = tmp_path / "last.pth"
    target.write_bytes(b"old")
    writer = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os
        from cnnscope.files import atomic_write_bytes

        def write(f):
            f.write(b"half")
            f.flush()
            os._exit(9)  # killed mid-write

        atomic_write_bytes({str(target)!r}, write)
    """)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert writer.returncode == 9
    temps = [p.name for p in tmp_path.iterdir() if p.name != "last.pth"]
    assert len(temps) == 1 and temps[0].startswith(".last.pth.") and target.read_bytes() == b"old"

    atomic_write_bytes(target, lambda f: f.write(b"new"))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"] and target.read_bytes() == b"new"


# ---- every file of a run folder is written by a rename ---------------------------------------------

def test_every_file_of_a_run_folder_is_renamed_into_place(runner, tiny_spec, tmp_path, monkeypatch):
    renamed = set()
    replace = os.replace

    def recording(src, dst, *, dst_dir_fd=None, **kwargs):  # names relative to a folder's descriptor
        folder = Path(os.readlink(f"/proc/self/fd/{dst_dir_fd}")) if dst_dir_fd is not None else Path()
        renamed.add(folder / dst)
        return replace(src, dst, dst_dir_fd=dst_dir_fd, **kwargs)

    monkeypatch.setattr(os, "replace", recording)
    result = invoke(runner, *train_args(tiny_spec, tmp_path))
    assert result.exit_code == 0, result.output
    run = (tmp_path / "Tiny").resolve()
    assert invoke(runner, "compare", run, "--out", tmp_path / "combined").exit_code == 0
    written = {p for p in [*run.rglob("*"), *(tmp_path / "combined").resolve().rglob("*")] if p.is_file()}
    assert len(written) >= 20
    assert written - renamed == {run / run_folder.LOCK_NAME}  # the lock is a lock, on its own file


# ---- modes, symlinks, read-only files ---------------------------------------------------------------

def test_writes_keep_the_mode_and_give_new_files_the_umask(tmp_path):
    old = tmp_path / "shared.txt"
    old.write_text("x")
    old.chmod(0o664)
    atomic_write_text(old, "y")
    assert old.stat().st_mode & 0o777 == 0o664
    umask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "z")
    finally:
        os.umask(umask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640


def test_a_symlink_is_never_written_through_and_a_read_only_file_is_refused(tmp_path):
    target = tmp_path / "docs" / "real.md"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.md"
    link.symlink_to(Path("docs") / "real.md")
    with pytest.raises(CnnscopeError, match="link.md is a symbolic link \\(to docs/real.md\\), so cnnscope leaves it"):
        atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "link.md"]

    target.chmod(0o444)
    with pytest.raises(CnnscopeError, match="real.md is read-only, so it is left as it is"):
        atomic_write_text(target, "newer")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["real.md"]


def test_a_linked_folder_below_the_output_folder_is_refused_and_nothing_written(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim"
    run.mkdir()
    victim.mkdir()
    (run / "plots").symlink_to(victim)
    with files.writing_into(run), pytest.raises(CnnscopeError, match=f"{run / 'plots'} is a symbolic link"):
        atomic_write_text(run / "plots" / "cm.png", "x")
    with files.writing_into(run), pytest.raises(CnnscopeError, match="is a symbolic link"):
        files.remove(run / "plots" / "cm.png")
    assert list(victim.iterdir()) == []
    atomic_write_text(run / "plots" / "cm.png", "x")  # outside writing_into the folder is the user's: followed
    assert (victim / "cm.png").read_text() == "x"


def test_a_read_only_file_system_is_named(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    statvfs = os.fstatvfs

    def read_only(fd):
        real = statvfs(fd)
        return os.statvfs_result((*real[:8], real.f_flag | os.ST_RDONLY, real.f_namemax))

    monkeypatch.setattr(os, "fstatvfs", read_only)
    with pytest.raises(CnnscopeError) as refused:
        atomic_write_text(target, "new")
    assert f"Could not write {target}: Read-only file system" in str(refused.value)
    assert "mounted read-only" in str(refused.value) and "chmod" not in str(refused.value)


# ---- disk faults --------------------------------------------------------------------------------------

def test_out_under_proc_is_a_clear_error(runner, tiny_spec):
    result = invoke(runner, *train_args(tiny_spec, "/proc/cnnscope-test"))
    assert result.exit_code == 2, result.output
    text = text_of(result)
    assert "Could not create the folder /proc/cnnscope-test/Tiny: No such file or directory" in text
    assert "another out folder" in text and "out is --out" in text


def test_a_full_disk_during_a_checkpoint_is_a_clear_error_without_temps(runner, tiny_spec, tmp_path, monkeypatch):
    """The disk fills up in the middle of torch.save: Python's write says ENOSPC, torch.save turns
    it into a RuntimeError ("unexpected pos ..."), cnnscope says what happened."""
    fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def full_for_checkpoints(fd, *args, **kwargs):
        f = fdopen(fd, *args, **kwargs)
        return FullDisk(f) if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".last.pth.") else f

    monkeypatch.setattr(os, "fdopen", full_for_checkpoints)
    result = invoke(runner, *train_args(tiny_spec, tmp_path))
    assert result.exit_code == 2, result.output
    checkpoints = (tmp_path / "Tiny" / "checkpoints").resolve()
    text = text_of(result)
    assert f"Could not write {checkpoints / 'last.pth'}: No space left on device" in text
    assert "Free some space on that disk" in text
    assert list(checkpoints.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_refused_write_names_the_path_and_the_reason_and_keeps_the_old_file(tmp_path, code):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def refused(f):
        f.write(b"partial")
        raise OSError(code, os.strerror(code))

    with pytest.raises(CnnscopeError) as e:
        atomic_write_bytes(target, refused)
    assert f"Could not write {target}: {os.strerror(code)}." in str(e.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_bug_in_the_writer_is_not_taken_for_a_disk_fault(tmp_path):
    def buggy(f):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        atomic_write_bytes(tmp_path / "x.pth", buggy)
    assert list(tmp_path.iterdir()) == []
