"""Past one machine: two torchrun "nodes" of one process each, joined by the c10d rendezvous on
loopback (as two machines would be on their network), train one run."""
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cnnscope.runs.checkpoint import load_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_over_the_c10d_rendezvous_train_one_run(tmp_path, tiny_spec):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "cnnscope-test",
            "-m", "cnnscope", "train", tiny_spec, "--dataset", "fake", "--epochs", "2", "--batch-size", "32",
            "--device", "cpu", "--out", str(tmp_path)]
    nodes = [subprocess.Popen(node, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in nodes]
    for p, (out, err) in zip(nodes, outputs):
        assert p.returncode == 0, out + err
    assert sum(out.count("Done in") for out, _ in outputs) == 1  # rank 0 prints, on its node
    run = tmp_path / "Tiny"
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and "batches of 32 (2 x 16)" in " ".join("".join(o for o, _ in outputs).split())
    with open(run / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads((run / "metrics.json").read_text())
    assert [int(r["epoch"]) for r in rows] == [1, 2] and metrics["epochs"] == 2
    assert metrics["best_val_acc"] == pytest.approx(max(float(r["val_acc"]) for r in rows), abs=1e-6)
    assert 0 <= metrics["test_acc"] <= 100 and (run / "plots" / "cm.png").is_file()
    ckpt = load_checkpoint(run / "checkpoints" / "last.pth")
    assert len(ckpt["rng"]) == 2 and ckpt["loop"]["train_images"] == 2 * 460  # both nodes' shares, each epoch
