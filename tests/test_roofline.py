"""The yardsticks of `cnnscope bench`: the least bytes of a training step (counted by hand on a small
network), the machine's peak and bandwidth cached per machine, and the bench's two fractions."""
import json

import pytest
import torch
import torch.nn as nn

from cnnscope import zoo
from cnnscope.cli import cli
from cnnscope.core import bench as core_bench
from cnnscope.core.roofline import step_min_bytes
from cnnscope.runs import machine


class Countable(nn.Module):
    """A conv called twice (tied), a residual sum that no leaf writes but a leaf reads, a mean and
    a view of it before the linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)  # 36 weights
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 3)  # 9 weights

    def forward(self, x):
        y = x + self.relu(self.conv(x))
        y = self.relu(self.conv(y))
        return self.fc(y.mean((2, 3)).view(-1, 2))


@pytest.mark.parametrize("states, parameter_bytes", [(0, 45 * 4 * 4), (1, 45 * 4 * 6), (2, 45 * 4 * 8)])
def test_step_min_bytes_counted_by_hand(states, parameter_bytes):
    """Per image of 2x4x4 (32 values): the input, conv(x), relu(conv(x)), the sum, the second conv
    and relu outputs (6 x 32), the mean (2; its view is the same tensor), the logits (3): 197
    float32 values, written once and read once; batch 3. 45 weights, each read and written, its
    gradient written and read, each optimizer state read and written."""
    model = Countable()
    got = step_min_bytes(model, (2, 4, 4), 3, optimizer_states=states)
    assert got.activation_bytes == 2 * 197 * 4 * 3
    assert got.parameter_bytes == parameter_bytes
    assert got.total == got.activation_bytes + parameter_bytes
    assert next(model.parameters()).device.type == "cpu" and model.training  # the model is left as it was


def test_step_min_bytes_falls_back_to_the_cpu():
    """A forward that makes a CPU tensor of its own cannot run on the meta device: counted on the CPU
    at a batch of 2 and scaled."""
    class OwnTensor(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.flatten(1) + torch.ones(4))

    # per image: fc's input (the sum, 4) and output (2); x is read by no leaf
    assert step_min_bytes(OwnTensor(), (4, 1, 1), 10, 1).activation_bytes == 2 * 6 * 4 * 10


def test_tiny_moves_its_activations_at_the_module_boundaries():
    """tiny: 36,170 weights (SGD momentum); its activations from a count independent of the function."""
    model = zoo.build("tiny")
    seen = {}  # id -> tensor (kept, so that no id is reused)

    def hook(module, args, output):
        for t in (*args, output):
            seen.setdefault(id(t), t)

    for m in model.modules():
        if next(m.children(), None) is None:
            m.register_forward_hook(hook)
    with torch.no_grad():
        model.train()(torch.zeros(4, 3, 32, 32))
    got = step_min_bytes(zoo.build("tiny"), (3, 32, 32), 4)
    assert got.activation_bytes == 2 * 4 * sum(t.numel() for t in seen.values())
    assert got.parameter_bytes == 6 * 4 * 36_170


@pytest.fixture
def counted_measurements(monkeypatch, tmp_path):
    """The cache in tmp_path, and measurements that count their calls (the real ones take seconds)."""
    monkeypatch.setenv(machine.CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def peak(device):
        calls.append("peak")
        return 1e11 * len(calls), "matmul 2048x2048"

    monkeypatch.setattr(machine, "fma_peak_flops", peak)
    monkeypatch.setattr(machine, "triad_bytes_per_s", lambda device: 2e10)
    return calls


def test_the_yardsticks_are_measured_once_and_cached(counted_measurements, tmp_path, monkeypatch):
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (0.25, 0.5, 0.75))
    cpu = torch.device("cpu")
    first = machine.yardsticks(cpu)
    assert (first["peak_flops_per_s"], first["bandwidth_bytes_per_s"], first["load_average"]) == (1e11, 2e10, 0.25)
    assert first["cached"] is False
    path = tmp_path / "cache" / machine.CACHE_FILE
    stored = json.loads(path.read_text())
    assert list(stored) == [machine.machine_key(cpu)] and stored[machine.machine_key(cpu)]["peak_flops_per_s"] == 1e11
    assert [p.name for p in path.parent.iterdir()] == [machine.CACHE_FILE]  # no temporary file left
    again = machine.yardsticks(cpu)
    assert again["cached"] is True and again["peak_flops_per_s"] == 1e11 and counted_measurements == ["peak"]
    remeasured = machine.yardsticks(cpu, measure_again=True)
    assert remeasured["cached"] is False and remeasured["peak_flops_per_s"] == 2e11
    assert json.loads(path.read_text())[machine.machine_key(cpu)]["peak_flops_per_s"] == 2e11


def test_a_lower_peak_measured_again_leaves_the_cached_one(counted_measurements, monkeypatch):
    """Load only slows a measurement down: a second, slower one is reported and not kept."""
    cpu = torch.device("cpu")
    machine.yardsticks(cpu)  # 1e11
    monkeypatch.setattr(machine, "fma_peak_flops", lambda device: (5e10, "matmul 2048x2048"))
    with pytest.warns(UserWarning, match=r"peak measured now \(50.0 GFLOP/s.*below the cached one \(100.0"):
        again = machine.yardsticks(cpu, measure_again=True)
    assert again["cached"] is True and again["peak_flops_per_s"] == 1e11
    assert machine.yardsticks(cpu)["peak_flops_per_s"] == 1e11


def test_a_damaged_cache_is_measured_again(counted_measurements, tmp_path):
    path = tmp_path / "cache" / machine.CACHE_FILE
    path.parent.mkdir()
    path.write_text("{not json")
    assert machine.yardsticks(torch.device("cpu"))["cached"] is False
    assert json.loads(path.read_text())  # replaced by a good one


def test_a_linked_cache_is_neither_read_nor_written(counted_measurements, tmp_path):
    (tmp_path / "cache").mkdir()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    (tmp_path / "cache" / machine.CACHE_FILE).symlink_to(elsewhere)
    with pytest.warns(UserWarning, match="symbolic link"):
        assert machine.yardsticks(torch.device("cpu"))["cached"] is False
    assert elsewhere.read_text() == "{}"


def test_the_peak_is_the_fastest_kernel_and_a_matmul_only_record_is_measured_again(counted_measurements, tmp_path,
                                                                                    monkeypatch):
    """A BLAS may run a narrower vector path than the processor has (MKL on AVX-512 AMD processors:
    AVX2), so the peak is the fastest kernel, oneDNN's convolutions included; a record cached before
    (no peak_kernel: the matmul's alone) is measured again."""
    cpu = torch.device("cpu")
    kernels = core_bench.peak_kernels(cpu)
    assert list(kernels) == ["matmul 2048x2048", "conv 1x1 1024 channels, channels_last",
                             "conv 3x3 256 channels, channels_last"]
    assert [flops for _, flops in kernels.values()] == [2 * 2048**3, 2 * 4 * 32 * 32 * 1024**2,
                                                        2 * 8 * 32 * 32 * 256**2 * 9]
    seconds = dict(zip([call for call, _ in kernels.values()], [1.0, 0.5, 0.25]))
    monkeypatch.setattr(core_bench, "peak_kernels", lambda device: kernels)
    monkeypatch.setattr(core_bench, "best_seconds", lambda call, rounds, device: seconds[call])
    assert core_bench.fma_peak_flops(cpu) == (2 * 8 * 32 * 32 * 256**2 * 9 / 0.25, "conv 3x3 256 channels, channels_last")
    path = tmp_path / "cache" / machine.CACHE_FILE
    path.parent.mkdir()
    old = {"peak_flops_per_s": 5e12, "bandwidth_bytes_per_s": 1e10, "load_average": 0.1, "measured_at": "2026-12-01"}
    path.write_text(json.dumps({machine.machine_key(cpu): old}))
    assert machine.yardsticks(cpu)["cached"] is False and counted_measurements == ["peak"]


def test_the_real_measurements_are_plausible():
    """A small matmul and triad: positive rates, the triad counted as 3 arrays per pass."""
    cpu = torch.device("cpu")
    assert core_bench.triad_bytes_per_s(cpu, elements=2**16, rounds=2) > 1e8
    peak, kernel = core_bench.fma_peak_flops(cpu, rounds=2)
    assert peak > 1e9 and kernel in core_bench.peak_kernels(cpu)


def test_bench_reports_both_fractions(runner, counted_measurements):
    """The bench's peak and bandwidth come from the cache (measured in the first run only, again with
    --measure-peak); the roofline is the batch over the step's least bytes at that bandwidth."""
    args = ["bench", "basic", "--steps", "1", "--batch-size", "8", "--format", "json"]
    first = json.loads(runner.invoke(cli, args).stdout)
    second = json.loads(runner.invoke(cli, args).stdout)
    assert (first["peak_cached"], second["peak_cached"], counted_measurements) == (False, True, ["peak"])
    assert second["peak_gflop_per_s"] == 100.0 and second["bandwidth_gb_per_s"] == 20.0
    assert second["step_min_bytes"] == step_min_bytes(zoo.build("basic"), (3, 32, 32), 8, 1).total  # 1 process
    assert second["roofline_images_per_s"] == pytest.approx(8 * 2e10 / second["step_min_bytes"])
    assert second["roofline_fraction"] == pytest.approx(second["train_images_per_s"] / second["roofline_images_per_s"])
    assert second["peak_fraction"] == pytest.approx(second["train_gflop_per_s"] / 100.0)
    table = runner.invoke(cli, [*args[:-2], "--measure-peak", "--format", "markdown"]).stdout
    assert len(counted_measurements) == 2
    assert "| peak (float32) | 200.00 GFLOP/s (matmul 2048x2048; measured in this run, load average" in table
    assert "| memory bandwidth (triad) | 20.00 GB/s" in table and "| fraction of roofline |" in table
