"""Timing a training or inference step: warm-up, the median of interleaved timed calls, this
device's practical peak (the fastest of a few large float32 multiply-add kernels) and memory
bandwidth (a STREAM triad), the peak memory, and BenchResult.

Timing: warm-up steps are excluded, and a step's time is the median of the timed steps, so that a
short burst of load from other processes does not decide the figure; the steps to compare (a
training step and the matmul) alternate, so that both see the same load and their ratio is fair on
a shared machine.
"""
import resource
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from cnnscope.core.distributed import Dist

WARMUP_STEPS = 3
PEAK_ROUNDS = 12  # the fastest of these many calls of each kernel counts: load only ever slows one down
TRIAD_ROUNDS = 10
TRIAD_ELEMENTS = 2**25  # 128 MiB per float32 array: far past any core's or socket's cache
ALBUMENTATIONS_WORKERS = 2  # the seeds' DataLoader, as the data path is benchmarked


@dataclass
class BenchResult:
    model: str
    device: str
    threads: int  # torch intra-op threads (of each training process)
    procs: int  # data-parallel training processes
    omp_wait_policy: str  # the OMP_WAIT_POLICY environment variable ("" when unset)
    batch_size: int
    steps: int  # timed steps (after WARMUP_STEPS)
    input_shape: list
    compile: bool
    amp: bool
    channels_last: bool
    augment: str  # the recipe's augmentation, as the data path ran it
    params: int
    flops_per_image: int  # forward FLOPs = 2 x MACs (cnnscope.core.summary)
    train_images_per_s: float
    infer_images_per_s: float
    data_images_per_s: float  # batch backend
    data_albumentations_images_per_s: float
    train_gflop_per_s: float  # 3 x flops_per_image x train_images_per_s / 1e9
    peak_gflop_per_s: float  # the machine's float32 peak, measured when nothing else ran (cached)
    peak_kernel: str  # the kernel that reached it (see peak_kernels)
    peak_fraction: float  # train_gflop_per_s / peak_gflop_per_s
    peak_load_average: float  # the 1-minute load average when the peak and bandwidth were measured
    peak_measured_at: str  # when (ISO time)
    peak_cached: bool  # False: measured in this run
    matmul_now_gflop_per_s: float  # float32 matmuls in every training process at once, in this run's load
    bandwidth_gb_per_s: float  # the machine's memory bandwidth (STREAM triad), measured with the peak
    step_min_bytes: int  # the least bytes a training step of the batch moves (cnnscope.core.roofline)
    roofline_images_per_s: float  # batch_size x bandwidth / step_min_bytes: the memory roofline
    roofline_fraction: float  # train_images_per_s / roofline_images_per_s
    matmul_size: int
    folded_batchnorms: int
    peak_memory_mb: float
    peak_memory_source: str  # "cuda_max_allocated" | "cpu_max_rss"
    warmup_s: float  # seconds of the training warm-up steps (compilation included with --compile)

    def to_json(self) -> dict:
        return asdict(self)


def sync(device):
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(step, device, calls=WARMUP_STEPS) -> float:
    """Call `step` `calls` times (first calls allocate, autotune, compile); returns the seconds taken."""
    started = time.perf_counter()
    for _ in range(calls):
        step()
    sync(device)
    return time.perf_counter() - started


def median_seconds(steps: dict, rounds, device, before_round=lambda: None) -> dict:
    """Time the callables of `steps` ({name: fn}, warmed up) in turn, one call each per round, for
    `rounds` rounds: {name: median seconds per call}. Interleaving gives every callable the same
    share of any load from other processes; the median ignores short bursts of it. `before_round`
    is called, untimed, at the start of every round (e.g. a barrier with other processes)."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        before_round()
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_step(device, size=None):
    """(a callable doing one square float32 matmul, n, FLOPs per call = 2 n^3): one of the peak_kernels,
    and what the training processes time beside their steps. n = 2048 on the CPU, 8192 on a GPU; TF32
    stays as configured (off by default)."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    return (lambda: a @ b), size, 2 * size**3


def best_seconds(step, rounds, device) -> float:
    """Seconds of the fastest of `rounds` timed calls of `step` (after one untimed call)."""
    step()
    sync(device)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - started)
    return min(times)


def peak_kernels(device) -> dict:
    """{name: (a callable, FLOPs per call)}: float32 multiply-add kernels as large as a peak needs,
    each through the library that runs it in training. On the CPU, beside the BLAS matmul, oneDNN's
    convolutions on channels_last maps (a 1x1 conv is a GEMM): the BLAS may take a narrower vector
    path than the processor has (MKL on an AMD processor with AVX-512 runs AVX2, half the width)
    while every convolution of training runs oneDNN's widest, so the matmul alone reads half the
    peak and a training step seems to pass it."""
    matmul, size, flops = matmul_step(device)
    kernels = {f"matmul {size}x{size}": (matmul, flops)}
    if device.type != "cpu":
        return kernels
    for k, channels, images in ((1, 1024, 4), (3, 256, 8)):  # 32x32 maps
        x = torch.randn(images, channels, 32, 32).contiguous(memory_format=torch.channels_last)
        w = torch.randn(channels, channels, k, k).contiguous(memory_format=torch.channels_last)
        kernels[f"conv {k}x{k} {channels} channels, channels_last"] = (
            lambda x=x, w=w, k=k: torch.nn.functional.conv2d(x, w, padding=k // 2),
            2 * images * 32 * 32 * channels * channels * k * k)
    return kernels


def fma_peak_flops(device, rounds=PEAK_ROUNDS) -> tuple[float, str]:
    """(FLOP/s, kernel): the fastest of `rounds` calls of each of the peak_kernels, on all of this
    process's threads: the machine's practical multiply-add peak, when nothing else runs."""
    rates = {name: flops / best_seconds(call, rounds, device) for name, (call, flops) in peak_kernels(device).items()}
    kernel = max(rates, key=rates.get)
    return rates[kernel], kernel


def triad_bytes_per_s(device, elements=TRIAD_ELEMENTS, rounds=TRIAD_ROUNDS) -> float:
    """Memory bandwidth, STREAM's triad a = b + s * c over float32 arrays far larger than the caches,
    the fastest of `rounds`, counted as STREAM counts it (3 arrays per pass: 2 read, 1 written)."""
    b = torch.rand(elements, device=device)
    c = torch.rand(elements, device=device)
    a = torch.empty(elements, device=device)
    return 3 * elements * 4 / best_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), rounds, device)


def peak_memory_mb(device) -> tuple[float, str]:
    """(peak memory so far in MB, its source): CUDA's max allocated, or this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux; it is the whole process's peak so far
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, "cpu_max_rss"


def time_training(train_step, device, rounds, ddp: Dist) -> dict:
    """Warm up, then time the training step and a float32 matmul in alternating rounds, each
    process on its own threads: every process runs its matmul while the others run theirs, as they
    train together. The peak is then what these same processes and threads get from the hardware
    under the same load (a matmul on all cores while the other processes wait, as before, swung by
    30% from run to run). Rank 0 gets {train, matmul (median seconds), peak_flops_per_s (all
    processes' matmuls together), warmup_s, memory_mb, memory_source (before the matmul's operands
    exist), matmul_size, matmul_flops}; the other ranks get {}."""
    warmup_s = warm_up(train_step, device)
    memory_mb, memory_source = peak_memory_mb(device)
    matmul, size, matmul_flops = matmul_step(device)
    warm_up(matmul, device, calls=1)
    seconds = median_seconds({"train": train_step, "matmul": matmul}, rounds, device, before_round=ddp.barrier)
    matmul_seconds = ddp.gather(seconds["matmul"])
    if not ddp.is_main:
        return {}
    return dict(seconds, peak_flops_per_s=sum(matmul_flops / t for t in matmul_seconds), warmup_s=warmup_s,
                memory_mb=memory_mb, memory_source=memory_source, matmul_size=size, matmul_flops=matmul_flops)
