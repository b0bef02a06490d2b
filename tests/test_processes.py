"""Data-parallel processes: every zoo model trains and resumes under --procs."""
import os
from pathlib import Path

import pytest
import torch

from cnnscope.checkpoint import load_checkpoint
from cnnscope.cli import cli

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.mark.slow
@pytest.mark.parametrize("procs", [[], ["--procs", "2"]], ids=["default", "procs2"])
@pytest.mark.parametrize("model", ZOO)
def test_every_zoo_model_trains_and_resumes_in_processes(runner, tmp_path, monkeypatch, model, procs):
    """Train 2 epochs, then resume from the end of epoch 1: the same final weights. The default
    --procs is 1 for this batch of 32; with 2 the launcher runs in this process."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = runner.invoke(cli, short_run(model, tmp_path, *procs))
    assert result.exit_code == 0, result.output
    run = tmp_path / model
    full = load_checkpoint(run / "checkpoints" / "last.pth")
    assert full["epoch"] == 2 and full["config"]["world_size"] == (2 if procs else 1)
    result = runner.invoke(cli, ["train", "--resume", str(run / "checkpoints" / "epoch_001.pth")])
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(run / "checkpoints" / "last.pth")
    assert resumed["config"]["world_size"] == full["config"]["world_size"]  # --procs auto keeps the count
    assert resumed["model"].keys() == full["model"].keys()
    assert all(torch.equal(resumed["model"][k], full["model"][k]) for k in full["model"])
