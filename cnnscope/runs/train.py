"""`cnnscope train MODEL`: train a model with its recipe and write the run folder reports/<run>/.

Read top to bottom: options -> launching (one process, or --procs data-parallel ones) -> the run's
parts (data, model, and cnnscope.core.training's loop over them: a runs.training_run.TrainingRun)
-> the loop, with the run's callbacks: its checkpoints (runs.train_state), files (runs.train_files)
and console lines and bar (runs.train_console) -> test evaluation of best.pth.

Reproducibility: an epoch's data order and augmentation are a function of (seed, epoch, rank);
everything else random (dropout, Gumbel noise) draws from the global RNGs, which every checkpoint
saves: a run stopped after any batch and resumed ends with exactly the weights of an uninterrupted
one (on the CPU; cuDNN autotuning makes GPU runs close but not bit-identical).

Distributed: one process per device (--procs, or torchrun; gloo on the CPU, nccl on CUDA). Each rank
trains on its shard of every epoch and validates its share with rank 0's batch-norm statistics (on
CUDA SyncBatchNorm; on the CPU DDP broadcasts rank 0's before every forward); rank 0 writes and prints.
"""
import dataclasses
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from cnnscope.core.fold import to_channels_last
from cnnscope.core.probe import check_input, classifier_outputs, input_channels
from cnnscope.core.runtime import compile_errors, resolve_device, seed_all, split_batch
from cnnscope.core.distributed import Dist, init_distributed
from cnnscope.core.training import NonFiniteLoss, StopRequest, make_loop, run_loop
from cnnscope.errors import CnnscopeError, SpecError
from cnnscope.render.progress import NORMAL, QUIET, SILENT, Reporter, progress_bar
from cnnscope.runs import datasets, launch, loaders, model_source, run_folder, tensorboard
from cnnscope.runs.checkpoint import load_checkpoint
from cnnscope.runs.runfiles import RunMetrics
from cnnscope.runs.train_console import Console, RunBar, closing_lines, far_below, warn
from cnnscope.runs.train_options import (TrainOptions, check_shares, new_options, resume_command, resume_hint,
                                         resume_options, resume_path, run_dir_of)
from cnnscope.runs.train_state import Checkpoints, init_weights, restore_run
from cnnscope.runs.training_run import TrainingRun
from cnnscope.runs.train_files import RunFiles, run_config, write_json, write_model_texts


# ---- launching --------------------------------------------------------------------------------

def training_options(model=None, *, resume=None, trust_spec=False, **settings):
    """The options of a new run of `model` (a SPEC), or of the run `resume` continued; `settings`:
    new_options'/resume_options' keywords. -> (options, the resumed checkpoint or None, its folder or None)."""
    if resume:
        return resume_options(resume, model, trust_spec=trust_spec, **settings)
    if model is None:
        raise CnnscopeError("Give the model to train (a SPEC, e.g. basic), or a run to resume.", arguments=("resume",))
    return new_options(model, **settings), None, None


def run_training(model=None, *, resume=None, trust_spec=False, overwrite=False, procs="auto", reporter=None,
                 callbacks=(), figures=True, **settings) -> int:
    """Train `model` (a SPEC), or continue the run `resume`, here or in `procs` data-parallel processes
    (runs.launch); `settings`: new_options'/resume_options' keywords; `reporter` (render.progress, default
    NORMAL) says what is prepared; `callbacks`: more callbacks of the loop, as jobs each rank makes with
    its TrainingRun (launch.call(job, run): {"target": "module:Class", "args": {...}} -> Class(run, **args));
    `figures`: False draws only the confusion matrix at the end, no curves or sample grids (evaluate_run).
    -> exit code: 0 done, launch.STOPPED_EXIT stopped and saved, or a rank's."""
    opts, ckpt, run_dir = training_options(model, resume=resume, trust_spec=trust_spec, **settings)
    if opts.tensorboard:
        tensorboard.summary_writer()  # a missing package is said before anything starts
    reporter = reporter or Reporter(NORMAL)
    if not launch.launched():
        saved_world_size = ckpt["config"]["world_size"] if ckpt else None
        n = launch.resolve_procs(procs, opts.recipe.batch_size, resolve_device(opts.device).type, saved_world_size)
        if opts.train_subset:
            check_shares(opts.train_subset, n)
        if n > 1:
            run_dir = run_dir_of(opts, run_dir)
            args = dict(options=opts.to_json(), resume=str(resume_path(resume)) if resume else None,
                        run_dir=str(run_dir), overwrite=overwrite, verbosity=reporter.verbosity,
                        callbacks=list(callbacks), figures=figures)
            job = {"target": f"{__name__}:train_job", "args": args}
            reporter.step(f"starting {n} data-parallel training processes (each imports torch)")
            return launch.run_processes(job, n, after_loss=lambda: resume_hint(run_dir, opts))
    result = train(opts, resume_ckpt=ckpt, run_dir=run_dir, overwrite=overwrite, verbosity=reporter.verbosity,
                   callbacks=callbacks, figures=figures)
    return launch.STOPPED_EXIT if result.interrupted else 0


def train_job(options: dict, resume: str | None, run_dir: str, overwrite: bool, verbosity: int = NORMAL,
              callbacks=(), figures=True) -> int:
    """One rank of a --procs run (what run_training hands to the launcher): its exit code."""
    ckpt = load_checkpoint(resume) if resume else None
    result = train(TrainOptions.from_json(options), resume_ckpt=ckpt, run_dir=run_dir, overwrite=overwrite,
                   verbosity=verbosity, callbacks=callbacks, figures=figures)
    return launch.STOPPED_EXIT if result.interrupted else 0


# ---- the model --------------------------------------------------------------------------------

def build_run_model(opts: TrainOptions, num_classes: int, input_shape,
                    spec: str | None = None) -> tuple[nn.Module, dict]:
    """The run's model, with `num_classes` outputs (passed as num_classes= when the builder takes it)
    for the data's (C, H, W) `input_shape` (C passed as in_channels= when the builder takes it), built
    from `spec` (default: the run's SPEC; a resumed run's copy of its source: model_source).
    -> (model, the constructor keywords actually used)."""
    import inspect

    from cnnscope.runs.spec import build_model, resolve_target

    spec = spec or opts.spec
    ctor = dict(opts.ctor)
    target, _ = resolve_target(spec)
    try:
        takes = inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes = {}
    if "num_classes" in takes:
        ctor.setdefault("num_classes", num_classes)
    if "in_channels" in takes:
        ctor.setdefault("in_channels", input_shape[0])
    model = build_model(spec, ctor)
    shape = (input_channels(model) or input_shape[0], *input_shape[1:])
    check_input(model, shape, opts.spec, batch=opts.recipe.batch_size, training=True)  # the estimate --input has
    with torch.random.fork_rng(devices=[]):
        outputs = classifier_outputs(model, shape, opts.spec)
    if outputs != num_classes:
        raise SpecError(
            f"{opts.spec} returns {outputs} logits per image but {opts.recipe.dataset} has {num_classes} "
            f"classes: the model must return (batch, {num_classes}) logits. Give the ctor keyword "
            f"num_classes={num_classes} if its constructor takes another name for it.", arguments=("ctor",),
        )
    return model, ctor


# ---- the run ----------------------------------------------------------------------------------

@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    interrupted: bool = False
    resume_command: str = ""


def train(opts: TrainOptions, *, resume_ckpt: dict | None = None, run_dir=None, overwrite=False,
          console=None, verbosity=NORMAL, callbacks=(), figures=True) -> TrainResult:
    """Train `opts` (a new run, or `resume_ckpt` continued in `run_dir`), then evaluate best.pth on test.
    `verbosity` (render.progress): QUIET prints the closing line alone; `callbacks`, `figures`: as
    run_training's."""
    from rich.console import Console

    ddp, device = init_distributed(opts.device)
    try:
        console = console or Console(soft_wrap=True)  # whole lines, also when piped
        console.quiet = not ddp.is_main
        reporter = Reporter(verbosity if ddp.is_main else QUIET)
        run_dir = run_dir_of(opts, run_dir)
        with ExitStack() as run_lock:  # rank 0 holds the run folder's lock until training ends
            run = setup_run(opts, run_dir, ddp, device, console, reporter, resume_ckpt)
            run.callback_jobs, run.figures = list(callbacks), figures
            # only now: a bad dataset or model leaves no half-made run folder behind
            prepare_run_dir(run_dir, resume_ckpt is not None, overwrite, ddp, run_lock, console)
            start_run(run, resume_ckpt)
            return run_epochs(run)
    finally:
        if ddp.world_size > 1:
            dist.destroy_process_group()


def setup_data(opts: TrainOptions, ddp: Dist, reporter=SILENT) -> datasets.Dataset:
    """The dataset, loaded by every rank at once where that only reads files; else rank 0 loads
    first, so that a download (or a tree's decoding) happens once."""
    one_first = not datasets.loads_from_files(opts.recipe.dataset, opts.data_dir)
    if one_first and not ddp.is_main:
        ddp.barrier()
    reporter.step(datasets.loading_line(opts.recipe.dataset, opts.data_dir, opts.recipe.image_size))
    ds = datasets.load_dataset(opts.recipe.dataset, opts.data_dir, val_split=opts.val_split, seed=opts.seed,
                               image_size=opts.recipe.image_size)
    if opts.train_subset:
        ds = dataclasses.replace(ds, train=loaders.subset(ds.train, opts.train_subset, opts.seed))
    if one_first and ddp.is_main:
        ddp.barrier()
    check_shares(len(ds.train), ddp.world_size)
    return ds


def setup_model(opts: TrainOptions, ds: datasets.Dataset, ddp: Dist, device, run_dir: Path,
                resuming: bool, reporter=SILENT) -> tuple[nn.Module, TrainOptions, str]:
    """The model with the same initial weights on every rank (--init-from's, for a new run that asks),
    on `device`; the options with the constructor keywords used; a note on the initial weights."""
    reporter.step(f"building {opts.spec} ({len(ds.classes)} classes, seed {opts.seed}) on {device}")
    seed_all(opts.seed)
    net, ctor = build_run_model(opts, len(ds.classes), ds.input_shape,
                                model_source.spec_to_build(run_dir, opts.spec, opts.source))
    note = init_weights(net, opts.init_from, len(ds.classes)) if opts.init_from and not resuming else ""
    if ddp.world_size > 1 and device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return net, dataclasses.replace(opts, ctor=ctor), note


def setup_run(opts: TrainOptions, run_dir: Path, ddp: Dist, device, console, reporter, resume_ckpt) -> TrainingRun:
    """Data, model (channels_last where it gives the same logits so: loaders.contiguous_reason),
    optimizer, schedule and the training step of the run."""
    recipe = opts.recipe
    amp = device.type == "cuda" and opts.amp is not False
    ds = setup_data(opts, ddp, reporter)
    net, opts, note = setup_model(opts, ds, ddp, device, run_dir, resume_ckpt is not None, reporter)
    if note:
        console.print(note)
    ds = datasets.fit_channels(ds, input_channels(net) or ds.input_shape[0])
    probe = loaders.first_images(ds.train, ds, device=device)  # the memory format: a speed choice only
    contiguous_because = "asked for (channels_last off)" if opts.channels_last is False else \
        loaders.contiguous_reason(net, probe, opts.spec, lambda line: console.print(line, markup=False))
    if not contiguous_because:
        to_channels_last(net)
    rank_batch = split_batch(recipe.batch_size, ddp.world_size)  # the recipe's batch is the global one
    reporter.detail(f"loaders: {opts.aug_backend} backend, {rank_batch} images per process and batch")
    batches = dict(device=str(device), rank=ddp.rank, world_size=ddp.world_size, channels_last=not contiguous_because)
    train_loader = loaders.make_loader(ds.train, ds, batch_size=rank_batch, train=True, augment=recipe.augment,
                                       backend=opts.aug_backend, seed=opts.seed, **batches)
    select_loader = loaders.make_loader(ds.val if ds.val is not None else ds.test, ds, train=False,
                                        batch_size=max(256, recipe.batch_size), **batches)
    loop = make_loop(net, train_loader, select_loader, recipe, device, amp=amp, ddp=ddp, compiled=opts.compile,
                     channels_last=not contiguous_because)
    if opts.compile:
        what = "the model" if loop.compiled else "the step's fused passes"  # runtime.compiles_whole_model
        reporter.step(f"compiling {what} with torch.compile: the first batches take longer")
    return TrainingRun(opts, run_dir, console, reporter, ds, loop, contiguous_because=contiguous_because)


def prepare_run_dir(run_dir: Path, resuming: bool, overwrite: bool, ddp: Dist, run_lock: ExitStack, console) -> None:
    """Rank 0 locks the run folder for the rest of training and readies it (run_folder.claim); the
    other ranks wait for it, and are ended by the launcher (or torchrun) if it refuses."""
    if ddp.is_main:
        note = run_folder.claim(run_dir, run_lock, resuming=resuming, overwrite=overwrite)
        if note:
            console.print(note)
    ddp.barrier()


def start_run(run: TrainingRun, resume_ckpt) -> None:
    """The resumed state (weights, optimizer, schedule, loop, RNG) or fresh RNGs; config.json and
    the model texts."""
    ddp, step = run.loop.ddp, run.loop.step
    if resume_ckpt is not None:
        restore_run(run.loop, resume_ckpt)
    else:
        seed_all(run.opts.seed + ddp.rank)  # distinct dropout / Gumbel noise on each rank
        if ddp.is_main:  # a run of the user's own model keeps a copy of its source
            run.opts = dataclasses.replace(run.opts, source=model_source.save_source(run.run_dir, run.opts.spec))
    run.config = run_config(run.opts, ddp, step.device, step.amp, run.contiguous_because, run.selected_on,
                            datasets.describe(run.ds))
    run.metrics = RunMetrics.read(run.run_dir) if resume_ckpt is not None else RunMetrics(run.run_dir)
    if ddp.is_main:
        write_json(run.run_dir / "config.json", run.config)
        if resume_ckpt is None:
            run.reporter.step("writing model_summary.txt and rf.md (the receptive-field analysis)")
            run.metrics.update(write_model_texts(run.run_dir, run.loop.net, run.ds.input_shape))


# ---- the loop --------------------------------------------------------------------------------

def run_epochs(run: TrainingRun) -> TrainResult:
    """The loop, with the run's checkpoints, files, console lines and bar as its callbacks, until the
    recipe's last epoch, an early stop or a stop request; then the closing evaluation."""
    stop, loop = StopRequest(), run.loop
    with stop.installed(), progress_bar(run.console, stats=True, quiet=run.reporter.verbosity == QUIET) as progress:
        loop.progress = progress
        loop.callbacks = [Checkpoints(run), RunFiles(run), Console(run), RunBar(progress),
                          *([tensorboard.TensorBoardEvents(run)] if run.opts.tensorboard else []),
                          *(launch.call(job, run) for job in run.callback_jobs)]
        try:
            with compile_errors(run.opts.compile):
                run_loop(loop, stop)
        except NonFiniteLoss as e:
            epoch = loop.state.epoch
            kept = f"; checkpoints/last.pth still holds epoch {epoch}" if epoch else ""
            raise CnnscopeError(
                f"Training stopped: the loss became {e} in epoch {epoch + 1}, so the weights are no longer "
                f"usable and nothing from this epoch was saved{kept}. Lower lr, set grad_clip "
                "(e.g. 5), or check the data.", arguments=("lr", "grad_clip"),
            ) from None
    return interrupted(run) if loop.stopped == "request" else finish(run)


# ---- the end: stopped, or done ----------------------------------------------------------------

def interrupted(run: TrainingRun) -> TrainResult:
    state, ddp, batches = run.loop.state, run.loop.ddp, len(run.loop.train_loader)
    where = f"epoch {state.epoch + 1}, batch {state.batch}/{batches}" if state.batch else f"the end of epoch {state.epoch}"
    under_torchrun = ddp.world_size > 1 and "CNNSCOPE_PROCS" not in os.environ
    command = resume_command(run.run_dir, run.opts, ddp.world_size if under_torchrun else 0)
    run.console.print(f"Stopped at {where}; saved {run.run_dir / 'checkpoints' / 'last.pth'}.\nResume with:\n  {command}")
    ddp.barrier()  # the launcher ends the group when a rank ends with a stop: rank 0 has saved and said it
    return TrainResult(run.run_dir, {}, interrupted=True, resume_command=command)


def finish(run: TrainingRun) -> TrainResult:
    """The test evaluation of best.pth and the curves (rank 0), and the closing summary."""
    from cnnscope.runs.evaluate import evaluate_run

    if not run.loop.ddp.is_main:
        return TrainResult(run.run_dir, {})
    # trusted: this process trained it from the SPEC the user gave (or trusted on --resume); it draws the curves
    run.reporter.step(f"testing best.pth on the {len(run.ds.test):,} test images")
    result = evaluate_run(run.run_dir, data_dir=run.opts.data_dir, device=str(run.loop.step.device), trust_spec=True,
                          reporter=run.reporter, dataset=run.ds, metrics=run.metrics,
                          channels_last=run.loop.channels_last, figures=run.figures, built=run.loop.net)
    metrics = run.metrics.values
    if run.opts.tensorboard:
        tensorboard.write_results(run, metrics)
    warn(run, far_below(run))
    run.console.print(closing_lines(run, metrics, result, time.time() - launch.command_started()))
    return TrainResult(run.run_dir, metrics)
