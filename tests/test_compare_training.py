"""benchmarks/compare_training.py: the two loops take turns, each stopped whole (its processes in
other sessions included) while the other trains, and the kernel's accounting of the stopped side's
CPU decides whether a ratio is reported."""
import importlib.util
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A side whose child, in a session of its own, spins; once the child has used 1.5 s of CPU it
# writes the file named by argv[1]. The child ends when its parent does.
SPINNING_SIDE = textwrap.dedent('''
    import os, subprocess, sys, time
    SPINNER = """
    import os, sys, time
    written = False
    while os.getppid() == int(sys.argv[2]):
        if not written and time.process_time() > 1.5:
            open(sys.argv[1], "w").close()
            written = True
    """
    child = subprocess.Popen([sys.executable, "-c", SPINNER, sys.argv[1], str(os.getpid())],
                             start_new_session=True, stdout=subprocess.DEVNULL)
    print("spinner", child.pid, flush=True)
    for epoch in (1, 2):
        print("epoch", epoch, flush=True)
        time.sleep(0.5)  # the stop lands here
''')
# A side whose epochs each end once the file argv[1] exists, or after argv[2] seconds.
WAITING_SIDE = textwrap.dedent('''
    import os, sys, time
    for epoch in (1, 2):
        deadline = time.monotonic() + float(sys.argv[2])
        while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
            time.sleep(0.01)
        print("epoch", epoch, flush=True)
''')


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_training", ROOT / "benchmarks" / "compare_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stub_loops(compare, folder: Path, wait_s: float):
    """Two loops of the stubs above: "cnnscope" spins in a child of its own session, "seed_style"
    waits for the spinner's file (at most wait_s per epoch)."""
    flag = folder / "spun"
    return [compare.Loop("cnnscope", [sys.executable, "-c", SPINNING_SIDE, str(flag)], r"^epoch",
                         folder / "spinning.log"),
            compare.Loop("seed_style", [sys.executable, "-c", WAITING_SIDE, str(flag), str(wait_s)], r"^epoch",
                         folder / "waiting.log")]


def spinner_pid(loop) -> int:
    return int(next(line.split()[1] for line in loop.lines if line.startswith("spinner")))


def gone(pid, within_s=10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_child_in_its_own_session_is_stopped_too(compare, tmp_path):
    """The spinner (another session) is stopped with its side: the waiting side's epochs end on
    their timeout, and the spinning side used no CPU while it waited."""
    loops = stub_loops(compare, tmp_path, wait_s=1.0)
    try:
        turns = compare.take_turns(loops, epochs=2)
    finally:
        for loop in loops:
            loop.kill()
    assert [(t["running"], t["epoch"], t["paused"]) for t in turns] == [
        ("cnnscope", 1, "seed_style"), ("seed_style", 1, "cnnscope"),
        ("cnnscope", 2, "seed_style"), ("seed_style", 2, "cnnscope")]
    assert turns[0]["paused_processes"] == 0  # the seeds' side had not started
    for t in (turns[1], turns[3]):  # the spinning side stopped: itself and the spinner, two sessions
        assert (t["paused_processes"], t["paused_sessions"]) == (2, 2)
        assert 0 <= t["paused_cpu_s"] < 0.2
    assert not (tmp_path / "spun").exists()  # the spinner never had 1.5 s of CPU
    assert gone(spinner_pid(loops[0]))


def test_a_side_that_keeps_running_is_refused(compare, tmp_path, monkeypatch):
    """The fault of the issue, injected: the pause reaches only the process group of the side's
    first process (the old SIGSTOP to its group), so the spinner in its own session keeps running
    through the other side's turn. The accounting sees it; no ratio is reported, exit code 1."""
    def stop_group_only(self, timeout=10.0):
        os.killpg(self.root, signal.SIGSTOP)
        while compare.proc_stat(self.root)["state"] not in compare.STOPPED_STATES:
            time.sleep(0.001)

    monkeypatch.setattr(compare.ProcessTree, "stop", stop_group_only)
    loops = stub_loops(compare, tmp_path, wait_s=120.0)
    monkeypatch.setattr(compare, "pair_loops", lambda args, seed, out: loops)
    code = compare.main(["--seeds", "0", "--speed-seeds", "--bench-steps", "0", "--out", str(tmp_path / "out")])
    assert code == 1
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    pair, = report["pairs"]
    assert pair["epoch_ratio"] is None and pair["time_to_target_ratio"] is None
    last = pair["turns"][-1]
    assert (last["turn"], last["running"], last["paused"]) == (2, "seed_style", "cnnscope")
    assert last["paused_cpu_s"] > compare.PAUSED_CPU_LIMIT_S  # the spinner's 1.5 s at least
    assert (last["paused_processes"], last["paused_sessions"]) == (2, 2)
    assert "cnnscope used" in pair["refused"] and "no ratio is reported" in report["refused"]
    assert "**Refused**" in (tmp_path / "out" / "compare.md").read_text()
    assert gone(spinner_pid(loops[0]))


@pytest.mark.slow
def test_cnnscope_and_the_seeds_loop_take_turns_on_fake_data(compare, tmp_path):
    """The real loops, one epoch of one batch each (128 fake images: the least that has a pause, the
    seeds' loop training while cnnscope waits): cnnscope's launcher and its two ranks, each in a
    session of its own, are stopped whole through the seeds' turn, the record says so, and the ratio
    is reported. Stopping a side's children in other sessions in later turns: the two tests above."""
    out = tmp_path / "out"
    code = compare.main(["--dataset", "fake", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                         "--train-subset", "128", "--seeds", "0", "--speed-seeds", "--bench-steps", "0", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "compare.json").read_text())
    pair, = report["pairs"]
    first, second = pair["turns"]
    assert (first["running"], first["epoch"], first["paused_processes"]) == ("cnnscope", 1, 0)  # seeds not started
    assert (second["running"], second["epoch"], second["paused"]) == ("seed_style", 1, "cnnscope")
    assert second["paused_processes"] >= 3 and second["paused_sessions"] >= 3, second  # launcher + 2 ranks
    assert all(0 <= t["paused_cpu_s"] < compare.PAUSED_CPU_LIMIT_S for t in (first, second))
    fast, seed = pair["cnnscope"], pair["seed_style"]
    assert fast["epoch_time_s"] == [round(first["seconds"], 1)] and seed["epoch_time_s"] == [round(second["seconds"], 1)]
    assert pair["epoch_ratio"] == pytest.approx(second["seconds"] / first["seconds"], rel=1e-3)
    assert len(fast["test_acc"]) == len(seed["test_acc"]) == 1 and len(report["accuracy"]) == 1
    assert report["train_subset"] == 128 and "refused" not in report and f"**{pair['epoch_ratio']:.2f}x**" in (out / "compare.md").read_text()
