"""`cnnscope bench MODEL`: how fast a model trains and predicts here, and how close to the machine's peak.

Everything runs on synthetic batches of the input size, so no dataset is read:

- training: cnnscope.core.training's step (forward + backward + optimizer step with the model's
  recipe: optimizer, label smoothing, gradient clipping), the model and its input in channels_last
  as `cnnscope train` runs them, in as many data-parallel processes as `cnnscope train --procs`
  starts, started by the same launcher (cnnscope.runs.launch; DistributedDataParallel on gloo, each
  with cores/N threads and 1/N of the batch; the gradient all-reduce is timed too);
- inference: `torch.inference_mode`, batch norm folded into the convs, channels_last (what
  `cnnscope evaluate` and the per-epoch validation run);
- with `compile`, as `cnnscope train --compile` trains: on CUDA the model compiled whole, on the
  CPU the training step's fused passes compiled (cnnscope.core.fused; the model eager); the
  inference model compiled whole on either;
- the data path on its own: the training loader over a uint8 tensor with the recipe's AugmentSpec,
  for the in-process "batch" backend and for the seeds' albumentations backend (2 workers);
- the achieved training FLOP/s, 3 x the forward FLOPs per image (forward, and a backward that costs
  about twice the forward) x images/s, against this machine's float32 peak, and the training
  rate against the memory roofline: the least bytes a step moves (cnnscope.core.roofline) over the
  machine's bandwidth (a STREAM triad). Both yardsticks are measured once when nothing else runs
  and cached per machine (cnnscope.runs.machine); the matmul is also timed in the same rounds as the
  training steps, which says how much of the peak the load of the moment leaves
  (cnnscope.core.bench says how steps are timed).

A data loader's rate is its images over the wall time of the timed batches (its workers run ahead,
so single batches mean little).
"""
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from cnnscope.core import summary
from cnnscope.core.bench import (ALBUMENTATIONS_WORKERS, WARMUP_STEPS, BenchResult, median_seconds, sync,
                                 time_training, warm_up)
from cnnscope.core.fold import inference_copy, to_channels_last
from cnnscope.core.probe import check_input, classifier_outputs
from cnnscope.core.roofline import step_min_bytes
from cnnscope.core.runtime import (autocast, compile_errors, compile_model, compiles_whole_model, resolve_device,
                                   split_batch)
from cnnscope.core.distributed import Dist, init_distributed, training_model
from cnnscope.core.training import make_step
from cnnscope.errors import CnnscopeError
from cnnscope.render.progress import SILENT
from cnnscope.runs import datasets, launch, loaders, machine, recipes

DATA_MIN_BATCHES = 10  # a loader's rate needs more batches than its workers prefetch


def bench(spec: str, ctor: dict | None = None, *, batch_size=128, device="auto", steps=20, compile=False,
          amp=None, channels_last=True, input_shape=(3, 32, 32), procs="auto", seed=0, measure_peak=False,
          reporter=SILENT) -> BenchResult:
    """Benchmark SPEC on `device` (see the module docstring). amp=None: on with CUDA. procs: the
    training processes, "auto" as `cnnscope train --procs auto` chooses (cnnscope.runs.launch).
    `seed`: of the weights and the synthetic batches. `measure_peak`: measure the machine's peak and
    bandwidth again (else the cached ones, measured the first time). `reporter` (render.progress)
    draws a bar over the five measurements and says each one; verbose, also what it measured.
    """
    device, amp, procs = check_settings(batch_size, device, steps, amp, procs)
    recipe = recipes.get_recipe(spec)
    input_shape, flops, params, step_bytes, channels_last = probe_model(
        spec, ctor, input_shape, batch_size, device, channels_last, reporter.step, procs)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    setup = dict(spec=spec, ctor=ctor or {}, batch_size=split_batch(batch_size, procs), device=str(device), amp=amp,
                 compile=compile, channels_last=channels_last, input_shape=list(input_shape), seed=seed)
    with reporter.stages(5) as begin:
        begin("bench: the machine's peak and memory bandwidth")  # first, while no training process runs
        yardsticks = machine.yardsticks(device, measure_peak)
        begin("bench: training steps, a matmul beside them" + (f" ({procs} processes)" if procs > 1 else ""))
        if procs > 1:
            timing = train_in_processes(procs, setup, steps)
            model = bench_model(spec, ctor, device, channels_last, seed)
            threads = max(1, torch.get_num_threads() // procs)
        else:
            model, timing = train_here(setup, steps)
            threads = torch.get_num_threads()
        reporter.detail(f"  a training step: {timing['train'] * 1e3:.1f} ms (median of {steps})")
        begin("bench: inference")
        infer_seconds, folded = time_inference(model, batch_size, input_shape, device, amp, compile, channels_last,
                                               steps)
        reporter.detail(f"  an inference batch: {infer_seconds * 1e3:.1f} ms (median of {steps})")
        begin("bench: data path, batch backend")
        data_rate = loader_images_per_s(recipe.augment, input_shape, batch_size, steps, device, "batch", seed)
        begin("bench: data path, albumentations backend")
        album_rate = loader_images_per_s(recipe.augment, input_shape, batch_size, steps, torch.device("cpu"),
                                         "albumentations", seed)

    train_rate = batch_size / timing["train"]
    achieved = 3 * flops * train_rate / 1e9
    peak = yardsticks["peak_flops_per_s"] / 1e9
    roofline_rate = batch_size * yardsticks["bandwidth_bytes_per_s"] / step_bytes
    return BenchResult(
        model=spec, device=str(device), threads=threads, procs=procs,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""), batch_size=batch_size, steps=steps,
        input_shape=list(input_shape), compile=compile, amp=amp, channels_last=channels_last,
        augment=recipe.augment.describe(), params=params, flops_per_image=flops,
        train_images_per_s=train_rate, infer_images_per_s=batch_size / infer_seconds,
        data_images_per_s=data_rate, data_albumentations_images_per_s=album_rate,
        train_gflop_per_s=achieved, peak_gflop_per_s=peak, peak_kernel=yardsticks["peak_kernel"],
        peak_fraction=achieved / peak, peak_load_average=yardsticks["load_average"],
        peak_measured_at=yardsticks["measured_at"], peak_cached=yardsticks["cached"],
        matmul_now_gflop_per_s=timing["peak_flops_per_s"] / 1e9, matmul_size=timing["matmul_size"],
        bandwidth_gb_per_s=yardsticks["bandwidth_bytes_per_s"] / 1e9, step_min_bytes=step_bytes,
        roofline_images_per_s=roofline_rate, roofline_fraction=train_rate / roofline_rate,
        folded_batchnorms=folded, peak_memory_mb=timing["memory_mb"],
        peak_memory_source=timing["memory_source"], warmup_s=timing["warmup_s"],
    )


def check_settings(batch_size, device, steps, amp, procs):
    """(device, amp, process count), or a clear error where the settings do not go together."""
    if steps < 1 or batch_size < 1:
        raise CnnscopeError(f"steps and batch_size must be at least 1, got {steps} and {batch_size}.",
                            arguments=("steps", "batch_size"))
    device = resolve_device(device)
    if amp is None:
        amp = device.type == "cuda"
    elif amp and device.type != "cuda":
        raise CnnscopeError("amp (float16 autocast) runs on CUDA only; leave it off on the CPU.", arguments=("amp",))
    return device, amp, launch.resolve_procs(str(procs), batch_size, device.type)


def probe_model(spec, ctor, input_shape, batch_size, device, channels_last=False, say=None,
                procs=1) -> tuple[tuple, int, int, int, bool]:
    """Before any process starts or any batch is allocated: the model can train on this input here,
    and, when `channels_last` is asked for, gives the same logits on channels_last batches (random
    ones: loaders.contiguous_reason, which `say`s where not). -> (input shape, forward FLOPs per image,
    parameters, the least bytes a training step of the whole batch moves in all `procs` processes
    (cnnscope.core.roofline), whether the bench runs in channels_last)."""
    from cnnscope.runs.spec import build_model

    probe = build_model(spec, ctor or {})
    input_shape = check_input(probe, input_shape, spec, batch=batch_size, training=True, device=device)
    classifier_outputs(probe, input_shape, spec)
    flops = 2 * summary.summarize(probe, input_shape, spec).macs
    recipe = recipes.get_recipe(spec)
    states = 2 if recipe.optimizer == "adamw" else int(recipe.momentum > 0)  # Adam's two moments, SGD's momentum
    step_bytes = procs * step_min_bytes(probe, input_shape, split_batch(batch_size, procs), states).total
    if channels_last:
        x = torch.randn(loaders.PROBE_IMAGES, *input_shape, generator=torch.Generator().manual_seed(0))
        channels_last = not loaders.contiguous_reason(probe, x, spec, say)
    return input_shape, flops, sum(p.numel() for p in probe.parameters()), step_bytes, channels_last


def bench_model(spec, ctor, device, channels_last, seed=0) -> nn.Module:
    """The model, with the same weights in every process."""
    from cnnscope.runs.spec import build_model

    torch.manual_seed(seed)
    model = build_model(spec, ctor or {}).to(device)
    return to_channels_last(model) if channels_last else model


def training_setup(spec, ctor, batch_size, device, amp, compile, channels_last, input_shape, seed=0, ddp=Dist()):
    """(model, one training step on a random batch) as `cnnscope train` runs them: core.training's
    step, the model in DDP when `ddp` has several processes (the process group must exist)."""
    device = torch.device(device)
    recipe = recipes.get_recipe(spec)
    model = bench_model(spec, ctor, device, channels_last, seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, *input_shape, device=device).contiguous(memory_format=memory_format)
    with torch.no_grad():
        num_classes = model.eval()(x[:1]).shape[1]
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    step = make_step(model, recipe, device, amp, compile)
    step.model = training_model(model, ddp, compiles_whole_model(device, compile))
    model.train()
    return model, lambda: step(x, y)


def train_here(setup: dict, rounds) -> tuple[nn.Module, dict]:
    """The training timing in this process: (model, time_training's dict)."""
    model, train_step = training_setup(**setup)
    with compile_errors(setup["compile"]):
        return model, time_training(train_step, torch.device(setup["device"]), rounds, Dist())


def train_in_processes(procs: int, setup: dict, rounds) -> dict:
    """The training timing of `procs` data-parallel processes, started by cnnscope.runs.launch's
    launcher, each running `bench_rank`: rank 0's time_training dict."""
    with tempfile.TemporaryDirectory(prefix="cnnscope-bench-") as tmp:
        out = Path(tmp) / "timing.json"
        job = {"target": f"{__name__}:bench_rank", "args": dict(setup=setup, rounds=rounds, out=str(out))}
        code = launch.run_processes(job, procs)
        if code or not out.is_file():
            raise CnnscopeError(f"A training process of the data-parallel bench failed (exit code {code}); "
                                "run with procs=1 to see the error in this process.", arguments=("procs",))
        return json.loads(out.read_text())


def bench_rank(setup: dict, rounds: int, out: str) -> int:
    """One process of a data-parallel bench (the launcher's job): the same steps on every rank, in
    step; rank 0 writes the timing to `out`."""
    ddp, device = init_distributed(setup["device"])
    try:
        _, train_step = training_setup(**setup, ddp=ddp)
        timing = time_training(train_step, device, rounds, ddp)
        ddp.barrier()
        if ddp.is_main:
            Path(out).write_text(json.dumps(timing))
    finally:
        dist.destroy_process_group()
    return 0


def time_inference(model, batch_size, input_shape, device, amp, compile, channels_last, steps) -> tuple[float, int]:
    """(median seconds of an inference batch, batch norms folded): the model as evaluation runs it."""
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
    return median_seconds({"infer": infer_step}, steps, device)["infer"], len(folded.folded_batchnorms)


def loader_images_per_s(augment, input_shape, batch_size, steps, device, backend, seed=0) -> float:
    """Images/s of the training loader alone over a random uint8 split (warm-up batches excluded)."""
    batches = max(steps, DATA_MIN_BATCHES)
    n = batch_size * (batches + WARMUP_STEPS)
    g = torch.Generator().manual_seed(seed)
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
    sync(device)
    started = time.perf_counter()
    for _ in range(batches):
        next(batch_iter)
    sync(device)
    seconds = time.perf_counter() - started
    del batch_iter  # stops the workers
    return batches * batch_size / seconds
