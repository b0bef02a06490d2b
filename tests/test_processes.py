"""Data-parallel processes: every zoo model trains and resumes under --procs, the ranks die with the
launcher, a signal to the launcher stops them in order, a lost rank is said in one line, and
--procs auto does not depend on the machine."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnscope.runs import launch
from cnnscope.runs.checkpoint import load_checkpoint
from cnnscope.cli import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}

# The zoo at sizes that train in seconds; each keeps what makes it hard to run in parallel
# (egrr's depth warm-up and gates, ectied's weight tying, swrn's shared templates).
ZOO = {
    "basic": [],
    "dilated": [],
    "tiny": [],
    "ectied": ["--ctor", "channels=16", "--ctor", "iterations=2"],
    "egrr": ["--ctor", "stem_channels=8", "--ctor", "stages=((16, 2, 1), (32, 2, 2))"],
    "swrn": ["--ctor", "depth=10", "--ctor", "width=1"],
}


def short_run(model, out, *extra):
    """2 epochs of 2 batches of 32 on fake data (egrr's depth warm-up covers the first)."""
    return ["train", model, *ZOO[model], "--dataset", "fake", "--epochs", "2", "--batch-size", "32",
            "--train-subset", "64", "--device", "cpu", "--out", str(out), "--save-every", "1", *extra]


# Every zoo model in one process; in two, the models whose weights meet data parallelism in a way of
# their own: egrr's depth warm-up leaves weights out of the graph (DDP looks for them, then stops), ectied
# applies one block's weights N times, swrn's template banks are shared by many layers. (Two processes of
# a plain model: test_train's two-process tests and the SIGTERM test.)
ZOO_RUNS = [(model, []) for model in ZOO] + [(model, ["--procs", "2"]) for model in ("egrr", "ectied", "swrn")]


@pytest.mark.slow
@pytest.mark.parametrize("model, procs", ZOO_RUNS, ids=[f"{m}-{'procs2' if p else 'default'}" for m, p in ZOO_RUNS])
def test_every_zoo_model_trains_and_resumes_in_processes(runner, tmp_path, monkeypatch, capfd, model, procs):
    """Train 2 epochs, then resume from the end of epoch 1: the same final weights. The default
    --procs is 1 for this batch of 32; with 2 the launcher runs in this process."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = runner.invoke(cli, short_run(model, tmp_path, *procs))
    assert result.exit_code == 0, result.output
    # egrr's depth warm-up ends in epoch 1: DDP stops looking for unused weights there, not a batch later
    assert "find_unused_parameters" not in capfd.readouterr().err
    run = tmp_path / model
    full = load_checkpoint(run / "checkpoints" / "last.pth")
    assert full["epoch"] == 2 and full["config"]["world_size"] == (2 if procs else 1)
    if model == "egrr":  # epoch 1's last batch (epoch 0.5) ran past the 0.2-epoch depth warm-up
        first = load_checkpoint(run / "checkpoints" / "epoch_001.pth")["model_settings"]
        assert first == {"depth": None, "tau": pytest.approx(0.1 ** 0.5)}
    result = runner.invoke(cli, ["train", "--resume", str(run / "checkpoints" / "epoch_001.pth")])
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(run / "checkpoints" / "last.pth")
    assert resumed["config"]["world_size"] == full["config"]["world_size"]  # --procs auto keeps the count
    assert resumed["model"].keys() == full["model"].keys()
    assert all(torch.equal(resumed["model"][k], full["model"][k]) for k in full["model"])


# ---- the launcher and its ranks ---------------------------------------------------------------

EPOCHS = 10_000  # hours of training: it ends only when stopped


def start_training(out):
    """A 2-process training of the zoo's tiny model in a launcher subprocess, returned once both
    ranks are in the training loop (rank 0 has printed its first epoch): (launcher, rank pids)."""
    cmd = [sys.executable, "-m", "cnnscope", "train", "tiny", "--dataset", "fake", "--epochs", str(EPOCHS),
           "--recipe", "early_stop_patience=0", "--batch-size", "32", "--train-subset", "128", "--procs", "2",
           "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.split()[:1] == [f"1/{EPOCHS}"]:  # the first epoch's line
            break
    else:
        pytest.fail(f"the training ended before its first epoch: {proc.wait()}\n{proc.stderr.read()}")
    ranks = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(ranks) == 2
    return proc, ranks


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_gone(pids, seconds=10.0) -> list[int]:
    """Poll until no pid of `pids` runs, or the deadline: the pids still running."""
    deadline = time.monotonic() + seconds
    while [p for p in pids if running(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if running(p)]


linux_only = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")


@pytest.mark.slow
@linux_only
def test_killing_the_launcher_kills_its_ranks(tmp_path):
    proc, ranks = start_training(tmp_path)
    assert all(running(pid) for pid in ranks)
    proc.kill()
    proc.wait(timeout=10)
    assert wait_gone(ranks) == [], "the ranks trained on after their launcher was killed"


@pytest.mark.slow
@linux_only
def test_sigint_to_the_launcher_alone_stops_and_saves(tmp_path):
    """Not the terminal's Ctrl-C (which signals the whole group): SIGINT to the launcher's pid only."""
    proc, ranks = start_training(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Resume with:" in out and "cnnscope train --resume" in out
    said = [line.split(" ")[0] for line in err.strip().splitlines()]
    assert said == ["starting", "generating", "building", "writing"], err  # no line from torch's agent
    assert 1 <= load_checkpoint(tmp_path / "tiny" / "checkpoints" / "last.pth")["epoch"] < EPOCHS
    assert wait_gone(ranks) == []


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("victim", [0, 1])
def test_a_rank_killed_from_outside_is_said_in_one_line(tmp_path, victim):
    proc, ranks = start_training(tmp_path)
    os.kill(ranks[victim], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL, out + err
    run = tmp_path / "tiny"
    *preparation, said = err.strip().splitlines()
    assert said == (f"Process {victim} of 2 was killed by SIGKILL; the others were stopped. "
                    f"Resume with: cnnscope train --resume {run} --device cpu")
    assert [line.split(" ")[0] for line in preparation] == ["starting", "generating", "building", "writing"], err
    assert wait_gone(ranks) == []


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_a_rank_whose_launcher_is_gone_ends_at_once(platform):
    """The parent died before the rank could ask to die with it (prctl's race), or, off Linux, the
    poll finds it gone: the rank ends instead of training on. The pid given is not the parent's."""
    code = (f"import sys, time; sys.platform = {platform!r}; from cnnscope.runs.launch import die_with_parent; "
            "die_with_parent(1); time.sleep(60)")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, timeout=30)
    assert proc.returncode == 1 and time.monotonic() - started < 20


def test_a_lost_connection_is_not_the_cause(tmp_path, capsys):
    """Rank 1 was killed; rank 0 then failed on the broken connection."""
    codes = {0: launch.LOST_PEER_EXIT, 1: -signal.SIGKILL}
    assert launch._outcome(codes, 2, tmp_path, lambda: "Resume with: X") == 128 + signal.SIGKILL
    assert capsys.readouterr().err == "Process 1 of 2 was killed by SIGKILL; the others were stopped. Resume with: X\n"


def test_a_lost_connection_alone_is_said(tmp_path, capsys):
    codes = {0: launch.LOST_PEER_EXIT, 1: launch.STOPPED_EXIT}
    assert launch._outcome(codes, 2, tmp_path, lambda: "Resume with: X") == launch.LOST_PEER_EXIT
    assert capsys.readouterr().err == "Process 0 of 2 lost its connection to the others. Resume with: X\n"


def test_gloo_transport_errors_are_lost_connections():
    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                        "[127.0.0.1]:10146: Connection reset by peer.")
    assert launch.lost_connection(gloo) and not launch.lost_connection(RuntimeError("shape mismatch"))


# ---- how many processes -----------------------------------------------------------------------

@pytest.mark.parametrize("batch, procs", [(32, 1), (64, 1), (127, 1), (128, 2), (192, 3), (256, 4), (320, 5),
                                          (448, 7), (900, 6), (1024, 8), (4096, 8)])
def test_auto_procs_is_one_per_64_images_whatever_the_cores(monkeypatch, batch, procs):
    """The same command gives the same process count, so the same batch-norm statistics and
    weights, on 1, 2 or 16 cores; only the threads per process follow the cores."""
    for cores in (1, 2, 16):
        monkeypatch.setattr(launch, "cpu_cores", lambda: cores)
        assert launch.resolve_procs("auto", batch, "cpu") == procs
    assert batch % procs == 0
