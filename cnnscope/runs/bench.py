"""`cnnscope bench MODEL`: how fast a model trains and predicts here, and how close to the machine's peak.

Everything runs on synthetic batches of the input size, so no dataset is read:

- training: forward + backward + optimizer step (the model's recipe: optimizer, label smoothing,
  gradient clipping), the model and its input in channels_last as `cnnscope train` runs them, in
  as many data-parallel processes as `cnnscope train --procs` starts (DistributedDataParallel on
  gloo, each with cores/N threads and 1/N of the batch; the gradient all-reduce is timed too);
- inference: `torch.inference_mode`, batch norm folded into the convs, channels_last (what
  `cnnscope evaluate` and the per-epoch validation run);
- the data path on its own: the training loader over a uint8 tensor with the recipe's AugmentSpec,
  for the in-process "batch" backend and for the seeds' albumentations backend (2 workers);
- the achieved training FLOP/s, 3 x the forward FLOPs per image (forward, and a backward that costs
  about twice the forward) x images/s, against this machine's peak measured on the spot with a
  large float32 matmul.

Timing: warm-up steps are excluded, and a step's time is the median of the timed steps, so that a
short burst of load from other processes does not decide the figure; the training steps and the
matmuls alternate, so that both see the same load and their ratio is fair on a shared machine. A
data loader's rate is its images over the wall time of the timed batches (its workers run ahead,
so single batches mean little).
"""
import datetime
import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from cnnscope.runs import datasets, loaders, recipes
from cnnscope.core import summary
from cnnscope.errors import CnnscopeError
from cnnscope.core.runtime import autocast
from cnnscope.runs.evaluate import resolve_device
from cnnscope.core.fuse import compile_errors, compile_model, inference_copy, to_channels_last, training_ops
from cnnscope.core.probe import check_input, classifier_outputs

WARMUP_STEPS = 3
DATA_MIN_BATCHES = 10  # a loader's rate needs more batches than its workers prefetch
ALBUMENTATIONS_WORKERS = 2  # the seeds' DataLoader


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
    peak_gflop_per_s: float  # float32 matmul, measured now
    peak_fraction: float  # train_gflop_per_s / peak_gflop_per_s
    matmul_size: int
    folded_batchnorms: int
    peak_memory_mb: float
    peak_memory_source: str  # "cuda_max_allocated" | "cpu_max_rss"
    warmup_s: float  # seconds of the training warm-up steps (compilation included with --compile)

    def to_json(self) -> dict:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value) for the table and markdown renderings."""
        policy = f" (OMP_WAIT_POLICY={self.omp_wait_policy})" if self.omp_wait_policy else ""
        procs = f"{self.procs} processes x " if self.procs > 1 else ""
        where = f"{self.device}, {procs}{self.threads} threads{policy}" + (", compiled" if self.compile else "") + (
            ", AMP" if self.amp else "") + (", channels_last" if self.channels_last else "")
        return [
            ("model", f"{self.model} ({self.params:,} params), input {'x'.join(map(str, self.input_shape))}"),
            ("run on", f"{where}; batch {self.batch_size}, median of {self.steps} steps"),
            ("FLOPs per image (forward)", f"{self.flops_per_image / 1e6:,.2f} M"),
            ("training", f"{self.train_images_per_s:,.1f} images/s"),
            ("inference (BN folded)", f"{self.infer_images_per_s:,.1f} images/s ({self.folded_batchnorms} BN folded)"),
            ("data path, batch backend", f"{self.data_images_per_s:,.1f} images/s ({self.augment})"),
            ("data path, albumentations", f"{self.data_albumentations_images_per_s:,.1f} images/s "
                                          f"({ALBUMENTATIONS_WORKERS} workers)"),
            ("achieved training FLOP/s", f"{self.train_gflop_per_s:,.2f} GFLOP/s"),
            ("peak (float32 matmul)", f"{self.peak_gflop_per_s:,.2f} GFLOP/s ({self.matmul_size}^2)"),
            ("fraction of peak", f"{100 * self.peak_fraction:.1f}%"),
            ("peak memory", f"{self.peak_memory_mb:,.1f} MB ({self.peak_memory_source})"),
            ("warm-up", f"{self.warmup_s:.1f} s"),
        ]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(step, device, calls=WARMUP_STEPS) -> float:
    """Call `step` `calls` times (first calls allocate, autotune, compile); returns the seconds taken."""
    started = time.perf_counter()
    for _ in range(calls):
        step()
    _sync(device)
    return time.perf_counter() - started


def median_seconds(steps: dict, rounds, device) -> dict:
    """Time the callables of `steps` ({name: fn}, warmed up) in turn, one call each per round, for
    `rounds` rounds: {name: median seconds per call}. Interleaving gives every callable the same
    share of any load from other processes; the median ignores short bursts of it."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_step(device, size=None):
    """(a callable doing one square float32 matmul, n, FLOPs per call = 2 n^3): the practical peak of
    this device. n = 2048 on the CPU, 8192 on a GPU; TF32 stays as configured (off by default)."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    return (lambda: a @ b), size, 2 * size**3


def loader_images_per_s(augment, input_shape, batch_size, steps, device, backend) -> float:
    """Images/s of the training loader alone over a random uint8 split (warm-up batches excluded)."""
    batches = max(steps, DATA_MIN_BATCHES)
    n = batch_size * (batches + WARMUP_STEPS)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *input_shape), dtype=torch.uint8, generator=g)
    split = datasets.Split(images, torch.zeros(n, dtype=torch.int64))
    channels = input_shape[0]
    ds = datasets.Dataset(name="synthetic", classes=["0"], train=split, val=None, test=split,
                      mean=(0.5,) * channels, std=(0.25,) * channels)
    loader = loaders.make_loader(split, ds, batch_size=batch_size, train=True, augment=augment, backend=backend,
                              device=str(device), drop_last=True, workers=ALBUMENTATIONS_WORKERS)
    batch_iter = iter(loader)
    for _ in range(WARMUP_STEPS):
        next(batch_iter)
    _sync(device)
    started = time.perf_counter()
    for _ in range(batches):
        next(batch_iter)
    _sync(device)
    seconds = time.perf_counter() - started
    del batch_iter  # stops the workers
    return batches * batch_size / seconds


def _peak_memory_mb(device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux; it is the whole process's peak so far
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, "cpu_max_rss"


def training_setup(spec, ctor, batch_size, device, amp, compile, channels_last, input_shape, ddp=False):
    """(model, one training step on a random batch) as `cnnscope train` runs them; with `ddp` the
    model is wrapped in DistributedDataParallel (the process group must exist)."""
    from cnnscope.runs.spec import build_model
    from cnnscope.runs.train import build_optimizer, data_parallel

    recipe = recipes.get_recipe(spec)
    torch.manual_seed(0)  # the same weights in every process
    model = build_model(spec, ctor or {}).to(device)
    if channels_last:
        to_channels_last(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, *input_shape, device=device).contiguous(memory_format=memory_format)
    with torch.no_grad():
        num_classes = model.eval()(x[:1]).shape[1]
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    optimizer = build_optimizer(model, recipe)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    train_model = data_parallel(model) if ddp else model
    train_model = compile_model(train_model) if compile else train_model
    model.train()

    fast_ops = training_ops(device, compile)

    def train_step():
        with autocast(device, amp), fast_ops:
            loss = criterion(train_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if recipe.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    return model, train_step


def _join_group(rank, procs, port, threads):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=procs, timeout=datetime.timedelta(minutes=5))


def _training_rank(rank, procs, port, threads, rounds, setup_args):
    """A training process > 0 of a data-parallel bench: the same steps as rank 0, in step with it."""
    from cnnscope.core.runtime import tune_cpu_runtime
    from cnnscope.runs.launch import exit_rank

    tune_cpu_runtime()
    _join_group(rank, procs, port, threads)
    _, train_step = training_setup(*setup_args, ddp=True)
    warm_up(train_step, torch.device("cpu"))
    for _ in range(rounds):
        dist.barrier()  # rank 0 times the matmul while the others wait here
        train_step()
    dist.barrier()
    dist.destroy_process_group()
    exit_rank(0)  # not through the interpreter's finalization, which can abort with gloo's threads alive


def _data_parallel_seconds(procs, setup_args, rounds):
    """Median seconds of a training step of `procs` gloo processes (rank 0 is this one) and of the
    matmul on all cores, in alternating rounds: (model, warm-up seconds, (peak memory, its source),
    {name: seconds}, (matmul size, its FLOPs))."""
    from cnnscope.runs.launch import cpu_cores, free_port

    cores = cpu_cores()
    threads = max(1, cores // procs)
    port = free_port()
    context = mp.get_context("spawn")
    others = [context.Process(target=_training_rank, args=(rank, procs, port, threads, rounds, setup_args))
              for rank in range(1, procs)]
    for process in others:
        process.start()
    all_threads = torch.get_num_threads()
    try:
        _join_group(0, procs, port, threads)
        model, train_step = training_setup(*setup_args, ddp=True)
        warmup_s = warm_up(train_step, torch.device("cpu"))
        memory = _peak_memory_mb(torch.device("cpu"))  # rank 0's, before the matmul's operands exist
        torch.set_num_threads(all_threads)
        matmul, size, matmul_flops = matmul_step(torch.device("cpu"))
        warm_up(matmul, torch.device("cpu"), calls=1)
        times = {"train": [], "matmul": []}
        for _ in range(rounds):
            dist.barrier()
            torch.set_num_threads(threads)
            started = time.perf_counter()
            train_step()  # ends with the all-reduce: every rank has finished the step
            times["train"].append(time.perf_counter() - started)
            torch.set_num_threads(all_threads)
            started = time.perf_counter()
            matmul()
            times["matmul"].append(time.perf_counter() - started)
        dist.barrier()
        dist.destroy_process_group()
    finally:
        torch.set_num_threads(all_threads)
        for process in others:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    failed = [process.exitcode for process in others if process.exitcode]
    if failed:
        raise CnnscopeError(f"A training process of the data-parallel bench failed (exit code {failed[0]}); "
                            "run with --procs 1 to see the error in this process.")
    return model, warmup_s, memory, {name: statistics.median(t) for name, t in times.items()}, (size, matmul_flops)


def bench(spec: str, ctor: dict | None = None, *, batch_size=128, device="auto", steps=20, compile=False,
          amp=None, channels_last=True, input_shape=(3, 32, 32), procs="auto", progress=None) -> BenchResult:
    """Benchmark SPEC on `device` (see the module docstring). amp=None: on with CUDA. procs: the
    training processes, "auto" as `cnnscope train --procs auto` chooses (cnnscope.runs.launch).

    `progress`, if given, is called with a short description before each phase.
    """
    from cnnscope.runs.launch import resolve_procs, split_batch
    from cnnscope.runs.spec import build_model

    if steps < 1 or batch_size < 1:
        raise CnnscopeError(f"--steps and --batch-size must be at least 1, got {steps} and {batch_size}.")
    device = resolve_device(device)
    if amp is None:
        amp = device.type == "cuda"
    elif amp and device.type != "cuda":
        raise CnnscopeError("--amp (float16 autocast) runs on CUDA only; leave it out on the CPU.")
    procs = resolve_procs(str(procs), batch_size, device.type)
    if procs > 1 and compile:
        raise CnnscopeError("--compile is benchmarked in one process: add --procs 1.")
    report = progress or (lambda message: None)
    recipe = recipes.get_recipe(spec)
    probe = build_model(spec, ctor or {})
    # before any process starts or any batch is allocated: the model can train on this input here
    input_shape = check_input(probe, input_shape, spec, batch=batch_size, training=True, device=device)
    classifier_outputs(probe, input_shape, spec)
    flops = 2 * summary.summarize(probe, input_shape, spec).macs
    params = sum(p.numel() for p in probe.parameters())
    del probe
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)

    # the matmul peak is timed in the same rounds as the training steps: the same load for both
    report("training steps and matmul peak" + (f" ({procs} processes)" if procs > 1 else ""))
    threads = torch.get_num_threads()
    if procs > 1:
        setup_args = (spec, ctor, split_batch(batch_size, procs), device, amp, compile, channels_last, input_shape)
        model, warmup_s, (memory_mb, memory_source), seconds, (size, matmul_flops) = _data_parallel_seconds(
            procs, setup_args, steps)
        threads = max(1, threads // procs)
    else:
        model, train_step = training_setup(spec, ctor, batch_size, device, amp, compile, channels_last, input_shape)
        with compile_errors(compile):
            warmup_s = warm_up(train_step, device)
        memory_mb, memory_source = _peak_memory_mb(device)  # before the matmul's operands exist
        matmul, size, matmul_flops = matmul_step(device)
        warm_up(matmul, device, calls=1)
        seconds = median_seconds({"train": train_step, "matmul": matmul}, steps, device)

    report("inference")
    x = torch.randn(batch_size, *input_shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    folded = inference_copy(model, input_shape, channels_last)
    infer_model = compile_model(folded) if compile else folded

    @torch.inference_mode()
    def infer_step():
        with autocast(device, amp):
            infer_model(x)

    with compile_errors(compile):
        warm_up(infer_step, device)
    infer_seconds = median_seconds({"infer": infer_step}, steps, device)

    report("data path")
    data_rate = loader_images_per_s(recipe.augment, input_shape, batch_size, steps, device, "batch")
    album_rate = loader_images_per_s(recipe.augment, input_shape, batch_size, steps, torch.device("cpu"),
                                     "albumentations")

    train_rate = batch_size / seconds["train"]
    achieved = 3 * flops * train_rate / 1e9
    peak = matmul_flops / seconds["matmul"] / 1e9
    return BenchResult(
        model=spec, device=str(device), threads=threads, procs=procs,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""), batch_size=batch_size, steps=steps,
        input_shape=list(input_shape), compile=compile, amp=amp, channels_last=channels_last,
        augment=recipe.augment.describe(), params=params, flops_per_image=flops,
        train_images_per_s=train_rate, infer_images_per_s=batch_size / infer_seconds["infer"],
        data_images_per_s=data_rate, data_albumentations_images_per_s=album_rate,
        train_gflop_per_s=achieved, peak_gflop_per_s=peak, peak_fraction=achieved / peak, matmul_size=size,
        folded_batchnorms=len(folded.folded_batchnorms), peak_memory_mb=memory_mb,
        peak_memory_source=memory_source, warmup_s=warmup_s,
    )


def bench_table(result: BenchResult):
    from rich.table import Table

    table = Table(title=f"cnnscope bench {result.model}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for row in result.rows():
        table.add_row(*row)
    return table


def bench_markdown(result: BenchResult) -> str:
    lines = ["| quantity | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in result.rows()]
    return "\n".join(lines) + "\n"
