"""`cnnscope train MODEL`: train a model with its recipe and write the run folder reports/<run>/.

Read top to bottom: options -> run folder -> data -> model -> optimizer and schedule -> the epoch
loop (train, validate, log, checkpoint) -> test evaluation of best.pth.

Reproducibility: the data order and augmentation of an epoch are a function of (seed, epoch, rank)
inside the loader; everything else random (dropout, Gumbel noise) draws from the global RNGs, which
every checkpoint saves. A run stopped after any batch and resumed with --resume therefore ends with
exactly the weights of an uninterrupted run (on the CPU; cuDNN autotuning makes GPU runs close but
not bit-identical).

Distributed: `torchrun --nproc_per_node=N -m cnnscope train ...` runs one process per device (gloo on
the CPU, nccl on CUDA). Each rank trains on its shard of every epoch; rank 0 validates, writes every
file and prints. Batch-norm statistics: SyncBatchNorm on CUDA; on the CPU (where PyTorch has no
SyncBatchNorm) DDP broadcasts rank 0's running statistics before every forward pass.
"""
import dataclasses
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from cnnscope.runs import datasets, loaders, recipes, run_folder
from cnnscope.runs.checkpoint import apply_model_settings, load_checkpoint, save_checkpoint
from cnnscope.files import atomic_write_csv, atomic_write_text
from cnnscope.errors import CnnscopeError
from cnnscope.core.metrics import predict
from cnnscope.core.runtime import autocast
from cnnscope.runs.evaluate import resolve_device
from cnnscope.core.fuse import compile_errors, compile_model, to_channels_last, training_ops
from cnnscope.runs.launch import split_batch
from cnnscope.core.probe import classifier_outputs
from cnnscope.runs.recipes import Recipe
from cnnscope.runs.spec import check_file_spec, is_registry_name

INPUT_SHAPE = (3, 32, 32)
REPORT_EVERY = 10  # batches between progress refreshes; each one waits for the device
LOG_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")


# ---- options ----------------------------------------------------------------------------------

@dataclass
class TrainOptions:
    # what is trained: fixed for the life of a run (a resumed run keeps them)
    spec: str
    ctor: dict
    recipe: Recipe
    val_split: float = 0.1
    seed: int = 0
    aug_backend: str = "batch"
    train_subset: int = 0  # train on this many images of the training split (0: all of it)
    # how and where: may change when resuming without changing the result
    data_dir: str = "data"
    out: str = "reports"
    name: str = ""
    device: str = "auto"
    amp: bool | None = None  # None: on with CUDA
    channels_last: bool | None = None  # None: on (faster on the CPU too; benchmarks/README.md)
    compile: bool = False  # torch.compile the training model (opt-in)
    save_every: int = 0

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "recipe": self.recipe.to_json()}

    @classmethod
    def from_json(cls, obj: dict) -> "TrainOptions":
        return cls(**{**obj, "recipe": recipes.recipe_from_json(obj["recipe"])})


def new_options(spec, *, ctor=None, recipe_overrides=None, augment_overrides=None, val_split=None, seed=None,
                aug_backend=None, train_subset=None, name=None, **runtime) -> TrainOptions:
    """Options of a new run: the model's recipe with the command line on top (None = not given)."""
    from cnnscope.runs.spec import resolve_target

    _, display_name = resolve_target(spec)  # fails early and clearly on a bad SPEC
    recipe = recipes.resolve(recipes.get_recipe(spec), recipe_overrides or {}, augment_overrides)
    if recipe.dataset not in datasets.DATASETS:
        raise CnnscopeError(f"Unknown dataset {recipe.dataset!r}; choose one of {', '.join(datasets.DATASETS)}.")
    given = {k: v for k, v in dict(val_split=val_split, seed=seed, aug_backend=aug_backend,
                                   train_subset=train_subset, **runtime).items() if v is not None}
    return TrainOptions(spec=spec, ctor=dict(ctor or {}), recipe=recipe, name=name or display_name, **given)


def check_shares(train_images: int, world_size: int) -> None:
    """Every data-parallel process needs at least one training image."""
    if train_images < world_size:
        raise CnnscopeError(
            f"{train_images} training image(s) cannot be shared by {world_size} processes: each needs at least one. "
            f"Train on {world_size} or more images (--train-subset), or with fewer processes (--procs)."
        )


def resume_path(resume) -> Path:
    """--resume RUN|CHECKPOINT -> the checkpoint file (a run folder's checkpoints/last.pth)."""
    path = Path(resume)
    if not path.is_dir():
        return path
    last = path / "checkpoints" / "last.pth"
    if not last.exists() and run_folder.is_run(path):
        raise run_folder.nothing_to_resume(path)
    return last


def resume_options(resume, spec=None, *, ctor=None, recipe_overrides=None, augment_overrides=None,
                   val_split=None, seed=None, aug_backend=None, train_subset=None, out=None, name=None,
                   trust_spec=False, **runtime):
    """Options of a resumed run: the checkpoint's, with only the how-and-where options changeable.
    Its model is built only if it is a zoo model, the user names it (`spec`) or trusts it (`trust_spec`).

    Returns (options, checkpoint, run folder).
    """
    path = resume_path(resume)
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "config" not in ckpt:
        raise CnnscopeError(
            f"{path} holds model weights but no training state (optimizer, epoch); it cannot be resumed. "
            "Resume from a run's checkpoints/last.pth, or start a new run."
        )
    saved = TrainOptions.from_json(ckpt["config"]["options"])
    if spec is not None and spec != saved.spec:
        raise CnnscopeError(
            f"{path} is a checkpoint of model {saved.spec!r}, not {spec!r}. Resume it with "
            f"`cnnscope train --resume {resume}` (MODEL may be left out), or train {spec!r} as a new run."
        )
    check_file_spec(saved.spec, saved.ctor, f"The training configuration in {path}", trust_spec or spec is not None)
    asked = dict(val_split=val_split, seed=seed, aug_backend=aug_backend, train_subset=train_subset)
    asked_recipe = recipes.resolve(saved.recipe, recipe_overrides or {}, augment_overrides)
    changed = [k for k, v in asked.items() if v is not None and v != getattr(saved, k)]
    changed += [f"ctor.{k}" for k, v in (ctor or {}).items() if saved.ctor.get(k) != v]
    changed += [f"recipe.{f.name}" for f in dataclasses.fields(Recipe)
                if getattr(asked_recipe, f.name) != getattr(saved.recipe, f.name)]
    changed += [k for k, v in dict(out=out, name=name).items() if v is not None]
    if changed:
        raise CnnscopeError(
            f"--resume continues a run with the settings it was started with, in its own folder; these "
            f"options would change it: {', '.join(changed)}. Leave them out, or start a new run with --name."
        )
    runtime = {k: v for k, v in runtime.items() if v is not None}
    opts = dataclasses.replace(saved, **runtime)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return opts, ckpt, run_dir


# ---- distributed ------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where collective tensors live (nccl needs CUDA)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor, op=dist.ReduceOp.SUM):
        if self.world_size > 1:
            dist.all_reduce(tensor, op=op)
        return tensor

    def any_rank(self, *flags) -> list[bool]:
        """For each flag, whether it is set on any rank (every rank must call)."""
        t = torch.tensor([float(f) for f in flags], device=self.device)
        return [bool(v) for v in self.all_reduce(t, op=dist.ReduceOp.MAX).tolist()]

    def gather(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()


def data_parallel(net: nn.Module, skips_steps: bool = False) -> nn.Module:
    """DistributedDataParallel(net). channels_last kernels with a size-1 dim (1x1 convs, depthwise
    weights) get grads whose strides differ from the params' on those dims only: the same memory
    order, and DDP copies grads into its buckets either way, so its warning about them is dropped.

    `skips_steps`: some epochs run the model at a reduced depth (egrr's depth warm-up), leaving the
    weights of the skipped steps out of the graph. DDP then looks for unused parameters after each
    forward (a walk over the autograd graph, small next to the step) and leaves their grads None on
    every rank, as a single process does. static_graph is not valid (the graph grows with the
    depth), and running the skipped steps with a zero weight would cost their compute and let
    weight decay move weights that a single process leaves alone."""
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(net, find_unused_parameters=skips_steps)


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """One process per device under torchrun (WORLD_SIZE/RANK/LOCAL_RANK set), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Dist(device=device), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise CnnscopeError(f"Distributed training runs on cuda or cpu, not {device.type}; pass --device cpu or cuda.")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, device), device


# ---- random state -----------------------------------------------------------------------------

def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """Every global RNG as tensors and lists, so that checkpoints load with weights_only=True."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


# ---- model, optimizer, schedule ---------------------------------------------------------------

def build_model(opts: TrainOptions, num_classes: int) -> tuple[nn.Module, dict]:
    """The model with `num_classes` outputs (passed as num_classes= when the builder takes it).

    Returns (model, the constructor keywords actually used).
    """
    import inspect

    from cnnscope.runs.spec import build_model as build, resolve_target

    ctor = dict(opts.ctor)
    target, _ = resolve_target(opts.spec)
    try:
        takes_num_classes = "num_classes" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes_num_classes = False
    if takes_num_classes:
        ctor.setdefault("num_classes", num_classes)
    model = build(opts.spec, ctor)
    with torch.random.fork_rng(devices=[]):
        outputs = classifier_outputs(model, INPUT_SHAPE, opts.spec)
    if outputs != num_classes:
        raise CnnscopeError(
            f"{opts.spec} returns {outputs} logits per image but {opts.recipe.dataset} has {num_classes} "
            f"classes: the model must return (batch, {num_classes}) logits. Pass --ctor num_classes={num_classes} "
            "if its constructor takes another name for it."
        )
    return model, ctor


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD or AdamW; soft-sharing coefficients (any SConv2d) get no weight decay."""
    from models.soft_sharing import SConv2d, coefficient_param_groups

    if any(isinstance(m, SConv2d) for m in model.modules()):
        groups = coefficient_param_groups(model, recipe.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": recipe.weight_decay}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov and recipe.momentum > 0, weight_decay=recipe.weight_decay)


def build_scheduler(optimizer, recipe: Recipe, steps_per_epoch: int):
    """-> (scheduler or None, True if it steps every batch, False if every epoch)."""
    sched = torch.optim.lr_scheduler
    total = recipe.epochs * steps_per_epoch
    if recipe.scheduler == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total, pct_start=recipe.pct_start,
                                div_factor=recipe.div_factor, final_div_factor=recipe.final_div_factor), True
    if recipe.scheduler == "cosine":
        warmup = round(recipe.warmup_epochs * steps_per_epoch)

        def factor(step):  # linear warm-up, then cosine from lr to 0
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return sched.LambdaLR(optimizer, factor), True
    if recipe.scheduler == "step":
        milestones = sorted({max(1, round(f * recipe.epochs)) for f in recipe.step_milestones})
        return sched.MultiStepLR(optimizer, milestones, gamma=recipe.step_gamma), False
    if recipe.scheduler == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="min", factor=recipe.plateau_factor,
                                       patience=recipe.plateau_patience), False
    return None, False


def model_settings(model: nn.Module, recipe: Recipe, epoch: int) -> dict:
    """egrr's per-epoch settings: recursion depth (warm-up 1 -> full) and gate temperature tau.

    Depth ramps linearly over depth_warmup_epochs (None = every step); tau decays exponentially
    from tau_start to tau_end over the run. Models without set_depth / set_tau get {}.
    """
    settings = {}
    if recipe.depth_warmup_epochs > 0 and hasattr(model, "set_depth"):
        full = max((m.steps for m in model.modules() if isinstance(getattr(m, "steps", None), int)), default=1)
        w = recipe.depth_warmup_epochs
        settings["depth"] = None if epoch >= w else 1 + int((full - 1) * epoch / w)
    if recipe.tau_start > 0 and hasattr(model, "set_tau"):
        progress = epoch / max(1, recipe.epochs - 1)
        settings["tau"] = recipe.tau_start * (recipe.tau_end / recipe.tau_start) ** progress
    return settings


def reduced_depth(model: nn.Module, recipe: Recipe, epoch: int) -> bool:
    """Whether `epoch` runs the model at a reduced depth (egrr's depth warm-up; see model_settings)."""
    return model_settings(model, recipe, epoch).get("depth") is not None


# ---- interruption -----------------------------------------------------------------------------

class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current batch and save; a second
    Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be caught in the main thread
            return
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class NonFiniteLoss(Exception):
    pass


# ---- the run ----------------------------------------------------------------------------------

@dataclass
class LoopState:
    """Everything about the loop that a checkpoint needs besides weights, optimizer and RNG."""
    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in epoch `epoch` when a stop came mid-epoch (0: at an epoch end)
    partial: list = field(default_factory=list)  # [loss sum, correct, images, train seconds, lr] of that epoch
    best_acc: float = -1.0  # selection accuracy (val, or test with --val-split 0) of best.pth
    best_epoch: int = 0
    best_loss: float = math.inf  # for early stopping
    bad_epochs: int = 0
    history: list = field(default_factory=list)  # train_log.csv rows
    train_images: int = 0
    train_seconds: float = 0.0


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    interrupted: bool = False
    resume_command: str = ""


def run_dir_of(opts: TrainOptions, run_dir=None) -> Path:
    """The run's folder: `run_dir` (a resumed run's), else --out/--name."""
    return Path(run_dir) if run_dir else Path(opts.out) / opts.name


def train(opts: TrainOptions, *, resume_ckpt: dict | None = None, run_dir=None, overwrite=False,
          console=None) -> TrainResult:
    """Train `opts` (a new run, or `resume_ckpt` continued in `run_dir`), then evaluate best.pth on test."""
    from rich.console import Console

    ddp, device = init_distributed(opts.device)
    try:
        console = console or Console()
        console.quiet = not ddp.is_main
        run_dir = run_dir_of(opts, run_dir)
        with ExitStack() as run_lock:  # rank 0 holds the run folder's lock until training ends
            return _train(opts, resume_ckpt, run_dir, overwrite, ddp, device, console, run_lock)
    finally:
        if ddp.world_size > 1:
            dist.destroy_process_group()


def _train(opts, resume_ckpt, run_dir: Path, overwrite, ddp: Dist, device, console, run_lock) -> TrainResult:
    recipe = opts.recipe
    amp = device.type == "cuda" and opts.amp is not False
    channels_last = opts.channels_last is not False

    # data; rank 0 loads first so that a download happens once
    if not ddp.is_main:
        ddp.barrier()
    ds = datasets.load_dataset(recipe.dataset, opts.data_dir, val_split=opts.val_split, seed=opts.seed)
    if opts.train_subset:
        ds = dataclasses.replace(ds, train=loaders.subset(ds.train, opts.train_subset, opts.seed))
    if ddp.is_main:
        ddp.barrier()
    check_shares(len(ds.train), ddp.world_size)
    selected_on = "val" if ds.val is not None else "test"
    rank_batch = split_batch(recipe.batch_size, ddp.world_size)  # the recipe's batch is the global one
    train_loader = loaders.make_loader(ds.train, ds, batch_size=rank_batch, train=True, augment=recipe.augment,
                                    backend=opts.aug_backend, device=str(device), seed=opts.seed,
                                    rank=ddp.rank, world_size=ddp.world_size)
    select_loader = loaders.make_loader(ds.val if ds.val is not None else ds.test, ds, train=False,
                                     batch_size=max(256, recipe.batch_size), device=str(device),
                                     rank=ddp.rank, world_size=ddp.world_size)

    # model: the same initial weights on every rank
    seed_all(opts.seed)
    net, ctor = build_model(opts, len(ds.classes))
    opts = dataclasses.replace(opts, ctor=ctor)
    if ddp.world_size > 1 and device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    if channels_last:
        to_channels_last(net)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    optimizer = build_optimizer(net, recipe)
    scheduler, per_batch = build_scheduler(optimizer, recipe, len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    def training_model(skips_steps):
        """What train_epoch runs: `net`, in DDP with several processes, compiled with --compile
        (it compiles in the first batches; `net` keeps the plain weights)."""
        model = data_parallel(net, skips_steps) if ddp.world_size > 1 else net
        return compile_model(model) if opts.compile else model

    first_epoch = resume_ckpt["loop"]["epoch"] if resume_ckpt is not None else 0
    skipping = ddp.world_size > 1 and reduced_depth(net, recipe, first_epoch)  # DDP must find unused weights
    model = training_model(skipping)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    # only now: a bad dataset or model leaves no half-made run folder behind
    prepare_run_dir(run_dir, resume_ckpt is not None, overwrite, ddp, run_lock, console)
    state = LoopState()
    if resume_ckpt is not None:
        net.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume_ckpt["scheduler"])
        scaler.load_state_dict(resume_ckpt["scaler"])
        state = LoopState(**resume_ckpt["loop"])
        restore_rng(resume_ckpt["rng"][ddp.rank % len(resume_ckpt["rng"])])
    else:
        seed_all(opts.seed + ddp.rank)  # distinct dropout / Gumbel noise on each rank
    config = run_config(opts, ddp, device, amp, channels_last, selected_on)
    n_params = sum(p.numel() for p in net.parameters())
    if ddp.is_main:
        write_json(run_dir / "config.json", config)
        if resume_ckpt is None:
            write_model_texts(run_dir, net)

    settings = {}  # egrr's depth and tau of the current epoch

    def save(names):
        """Checkpoint the current state as checkpoints/<name> for each name (every rank must call)."""
        rng = ddp.gather(capture_rng())
        if not ddp.is_main:
            return
        ckpt = {
            "model_spec": opts.spec, "ctor": opts.ctor, "model": net.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": scaler.state_dict(), "epoch": state.epoch, "best_metric": state.best_acc,
            "loop": dataclasses.asdict(state), "rng": rng, "config": config, "model_settings": settings,
            "dataset": ds.name, "classes": list(ds.classes), "mean": list(ds.mean), "std": list(ds.std),
            "input_shape": list(INPUT_SHAPE),
        }
        for name in names:
            save_checkpoint(ckpt, run_dir / "checkpoints" / name)

    where = f"{device}" + (f" x{ddp.world_size}" if ddp.world_size > 1 else "") + (", AMP" if amp else "")
    console.print(
        f"[bold]{opts.name}[/]: {opts.spec} ({n_params:,} params) on {ds.name} ({len(ds.train):,} train / "
        f"{len(ds.val) if ds.val is not None else 0:,} val / {len(ds.test):,} test), {where}, "
        f"{recipe.epochs} epochs x {len(train_loader)} batches of {recipe.batch_size}"
        + (f" ({ddp.world_size} x {rank_batch})" if ddp.world_size > 1 else "") + f" -> {run_dir}"
    )
    if state.epoch or state.batch:
        console.print(f"Resuming at epoch {state.epoch + 1}" + (f", batch {state.batch + 1}" if state.batch else ""))

    stop = StopRequest()
    with stop.installed(), epoch_progress(console) as progress:
        while state.epoch < recipe.epochs:
            epoch = state.epoch
            settings = model_settings(net, recipe, epoch)
            apply_model_settings(net, settings)
            if skipping and not reduced_depth(net, recipe, epoch):
                # the depth warm-up is over: a DDP that stops looking for unused weights (it would say
                # that it finds none, and walk the graph every step for nothing)
                skipping = False
                model = training_model(skipping)
            train_loader.set_epoch(epoch)
            try:
                with compile_errors(opts.compile):
                    train_epoch(model, train_loader, optimizer, scheduler if per_batch else None, scaler, criterion,
                                recipe.grad_clip, device, amp, training_ops(device, opts.compile), state, stop, ddp,
                                progress, f"epoch {epoch + 1}/{recipe.epochs}")
            except NonFiniteLoss as e:
                kept = f"; checkpoints/last.pth still holds epoch {epoch}" if epoch else ""
                raise CnnscopeError(
                    f"Training stopped: the loss became {e} in epoch {epoch + 1}, so the weights are no longer "
                    f"usable and nothing from this epoch was saved{kept}. Lower --lr, set --grad-clip "
                    "(e.g. 5), or check the data."
                ) from None
            if state.batch:  # stopped mid-epoch: the checkpoint says where, so resuming replays exactly
                save(["last.pth"])
                return interrupted(run_dir, opts, state, ddp, console, len(train_loader))

            loss_sum, correct, seen, train_seconds, lr = state.partial
            started = time.perf_counter()
            val_loss, val_acc = validate(net, select_loader, device, amp, ddp, progress)
            row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
                   "epoch_time_s": train_seconds + time.perf_counter() - started,
                   "images_per_s": seen / train_seconds}
            state.history.append(row)
            state.epoch, state.partial = epoch + 1, []
            state.train_images += int(seen)
            state.train_seconds += train_seconds
            if recipe.scheduler == "plateau":
                scheduler.step(val_loss)
            elif scheduler is not None and not per_batch:
                scheduler.step()
            improved = val_acc > state.best_acc
            if improved:
                state.best_acc, state.best_epoch = val_acc, epoch + 1
            if val_loss < state.best_loss:
                state.best_loss, state.bad_epochs = val_loss, 0
            else:
                state.bad_epochs += 1
            names = ["last.pth"] + (["best.pth"] if improved else [])
            if opts.save_every and (epoch + 1) % opts.save_every == 0:
                names.append(f"epoch_{epoch + 1:03d}.pth")
            save(names)
            if ddp.is_main:
                write_log_and_metrics(run_dir, opts, state, n_params, ds.name, selected_on)
            console.print(epoch_line(row, recipe.epochs, selected_on, improved))
            if recipe.early_stop_patience and state.bad_epochs >= recipe.early_stop_patience:
                console.print(f"Early stop: the {selected_on} loss has not improved for {state.bad_epochs} epochs.")
                break
            if ddp.any_rank(stop.requested)[0]:  # Ctrl-C during validation or saving
                return interrupted(run_dir, opts, state, ddp, console, len(train_loader))

    return finish(run_dir, opts, state, ddp, device, console, selected_on)


def prepare_run_dir(run_dir: Path, resuming: bool, overwrite: bool, ddp: Dist, run_lock: ExitStack, console) -> None:
    """Rank 0 locks the run folder for the rest of training and readies it (run_folder.claim); the
    other ranks wait for it, and are ended by the launcher (or torchrun) if it refuses."""
    if ddp.is_main:
        note = run_folder.claim(run_dir, run_lock, resuming=resuming, overwrite=overwrite)
        if note:
            console.print(note)
    ddp.barrier()


@contextmanager
def epoch_progress(console):
    """One rich progress bar per epoch (removed when the epoch ends; its summary line stays)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console,
                  transient=True) as progress:
        yield progress


def train_epoch(model, loader, optimizer, batch_scheduler, scaler, criterion, grad_clip, device, amp, fast_ops,
                state: LoopState, stop: StopRequest, ddp: Dist, progress, description) -> None:
    """Train one epoch, or the rest of one after a mid-epoch resume (state.batch batches are done).

    On return state.partial = [loss sum, correct, images, train seconds, lr of the last batch], summed
    over ranks. A stop request ends the epoch early, leaving state.batch > 0; ranks combine their
    requests (and their loss checks) every REPORT_EVERY batches, so they all stop at the same batch.
    """
    model.train()
    skip = state.batch
    resumed = state.partial if skip and ddp.is_main else [0.0, 0.0, 0.0, 0.0, 0.0]
    sums = torch.tensor(resumed[:3], dtype=torch.float64, device=device)  # loss sum, correct, images
    task = progress.add_task(description, total=len(loader), completed=skip, stats="")
    started = time.perf_counter() - resumed[3]
    lr = resumed[4]
    for i, (x, y) in enumerate(loader):
        if i < skip:  # already trained on before the stop; drawn anyway so the loader stays in step
            continue
        lr = optimizer.param_groups[0]["lr"]
        with autocast(device, amp), fast_ops:
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if batch_scheduler is not None:
            batch_scheduler.step()
        sums[0] += loss.detach() * len(y)
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)

        if (i + 1) % REPORT_EVERY == 0 or i + 1 == len(loader):
            stop_now, non_finite = ddp.any_rank(stop.requested, not torch.isfinite(sums[0]))
            loss_sum, correct, seen = sums.tolist()
            if non_finite:
                raise NonFiniteLoss(f"{loss_sum / seen}")
            seconds = time.perf_counter() - started
            progress.update(task, completed=i + 1, stats=(
                f"loss {loss_sum / seen:.4f}  acc {100 * correct / seen:.2f}%  lr {lr:.4g}  "
                f"{seen * ddp.world_size / seconds:,.0f} img/s"))
            if stop_now and i + 1 < len(loader):
                state.batch = i + 1
                break
    else:
        state.batch = 0
    progress.remove_task(task)
    state.partial = ddp.all_reduce(sums).tolist() + [time.perf_counter() - started, lr]


def validate(net, loader, device, amp, ddp: Dist, progress) -> tuple[float, float]:
    """Loss and accuracy (percent) on the selection split; each rank takes its share, then they add up."""
    loss_sum, preds, targets = predict(net, loader, device, amp=amp, progress=progress, description="validating")
    totals = ddp.all_reduce(torch.tensor([loss_sum, float((preds == targets).sum()), float(len(targets))],
                                         dtype=torch.float64, device=device)).tolist()
    return totals[0] / totals[2], 100.0 * totals[1] / totals[2]


def epoch_line(row: dict, epochs: int, selected_on: str, improved: bool) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:6.2f}%  "
            f"{selected_on} loss {row['val_loss']:.4f} acc {row['val_acc']:6.2f}%  lr {row['lr']:.4g}  "
            f"{row['epoch_time_s']:.1f}s  {row['images_per_s']:,.0f} img/s" + ("  [green]* best[/]" if improved else ""))


def resume_command(run_dir: Path, opts: TrainOptions, torchrun_procs: int = 0) -> str:
    """The command that continues the run; under torchrun (torchrun_procs > 0) with torchrun, as
    `cnnscope train --resume` starts as many processes as the run had (--procs auto) but torchrun
    does not."""
    launcher = ["torchrun", f"--nproc_per_node={torchrun_procs}", "-m", "cnnscope"] if torchrun_procs else ["cnnscope"]
    args = launcher + ["train", "--resume", str(run_dir)]
    if opts.device != "auto":
        args += ["--device", opts.device]
    if opts.data_dir != "data":
        args += ["--data-dir", str(opts.data_dir)]
    if not is_registry_name(opts.spec):  # the user's own model: they trusted it to train, and may resume it
        args.append("--trust-spec")
    return shlex.join(args)


def interrupted(run_dir, opts, state: LoopState, ddp: Dist, console, batches: int) -> TrainResult:
    where = f"epoch {state.epoch + 1}, batch {state.batch}/{batches}" if state.batch else f"the end of epoch {state.epoch}"
    under_torchrun = ddp.world_size > 1 and "CNNSCOPE_PROCS" not in os.environ
    command = resume_command(run_dir, opts, ddp.world_size if under_torchrun else 0)
    console.print(f"Stopped at {where}; saved {run_dir / 'checkpoints' / 'last.pth'}.\nResume with:\n  {command}")
    return TrainResult(run_dir, {}, interrupted=True, resume_command=command)


def resume_hint(run_dir: Path, opts: TrainOptions) -> str:
    """What to do after the run's processes were lost: resume from last.pth, if there is one yet."""
    if (run_dir / "checkpoints" / "last.pth").is_file():
        return f"Resume with: {resume_command(run_dir, opts)}"
    return "No checkpoint had been saved yet: start the run again."


def finish(run_dir, opts, state: LoopState, ddp: Dist, device, console, selected_on) -> TrainResult:
    """Curves, then the test evaluation of best.pth (rank 0), and the closing summary."""
    from cnnscope.runs.evaluate import evaluate_run

    if not ddp.is_main:
        return TrainResult(run_dir, {})
    write_curves(run_dir, state.history, selected_on)
    # trusted: this process trained it from the SPEC the user gave (or trusted on --resume)
    result = evaluate_run(run_dir, data_dir=opts.data_dir, device=device.type, trust_spec=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    console.print(
        f"Done in {metrics['train_time_s']:.0f}s: best {metrics['selected_on']} acc {metrics['best_val_acc']:.2f}% "
        f"(epoch {metrics['best_epoch']}), test acc {result.test_acc:.2f}% (loss {result.test_loss:.4f}) -> {run_dir}"
    )
    return TrainResult(run_dir, metrics)


# ---- files of the run folder ------------------------------------------------------------------

def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def git_commit() -> str | None:
    """The commit of the cnnscope source tree (+ '-dirty' with local changes), None outside git."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def run_config(opts: TrainOptions, ddp: Dist, device, amp, channels_last, selected_on) -> dict:
    """config.json: the resolved options, where the run ran, and the versions that ran it."""
    import platform

    import torchvision

    import cnnscope

    return {
        "model": opts.spec, "ctor": opts.ctor, "dataset": opts.recipe.dataset, "seed": opts.seed,
        "epochs": opts.recipe.epochs, "selected_on": selected_on,
        "options": opts.to_json(),
        "device": str(device), "world_size": ddp.world_size, "amp": amp, "channels_last": channels_last,
        "versions": {"cnnscope": cnnscope.__version__, "torch": str(torch.__version__),
                     "torchvision": str(torchvision.__version__), "numpy": np.__version__,
                     "python": platform.python_version()},
        "git_commit": git_commit(),
        "command": shlex.join(["cnnscope", *sys.argv[1:]]),
    }


def write_model_texts(run_dir: Path, net: nn.Module) -> None:
    """model_summary.txt and rf.md, from a copy of the model so the run's RNG and weights stay put."""
    import copy

    from cnnscope import render
    from cnnscope.core.rf import receptive_field
    from cnnscope.core.summary import summarize
    from cnnscope.render.summary import model_summary_text

    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(net).cpu()
        atomic_write_text(run_dir / "model_summary.txt", model_summary_text(summarize(probe, INPUT_SHAPE)))
        atomic_write_text(run_dir / "rf.md", render.to_markdown(receptive_field(probe, INPUT_SHAPE)))




def write_log_and_metrics(run_dir: Path, opts, state: LoopState, n_params, dataset, selected_on) -> None:
    """train_log.csv (one row per epoch, from the checkpointed history) and metrics.json."""
    # the whole log again each epoch (a few hundred rows at most), so a kill never leaves half a row
    atomic_write_csv(run_dir / "train_log.csv", [LOG_COLUMNS] + [
        [round(v, 6) if isinstance(v, float) else v for v in (row[k] for k in LOG_COLUMNS)] for row in state.history])
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics.update({
        "run": run_dir.name, "model": opts.spec, "params": n_params, "dataset": dataset,
        "selected_on": selected_on, "best_val_acc": state.best_acc, "best_epoch": state.best_epoch,
        "epochs": state.epoch, "train_time_s": sum(r["epoch_time_s"] for r in state.history),
        "images_per_s": state.train_images / state.train_seconds,
    })
    write_json(path, metrics)


def write_curves(run_dir: Path, history: list, selected_on: str) -> None:
    """plots/acc_curves.png, loss_curves.png, lr.png from the epoch rows."""
    from cnnscope.render import plots

    epochs = [r["epoch"] for r in history]

    def series(key):  # the val_ columns hold test numbers when the run selected on test
        return {"": {"train": (epochs, [r[f"train_{key}"] for r in history]),
                     selected_on: (epochs, [r[f"val_{key}"] for r in history])}}

    plots.curves(series("acc"), run_dir / "plots" / "acc_curves.png", title="Accuracy", ylabel="accuracy (%)")
    plots.curves(series("loss"), run_dir / "plots" / "loss_curves.png", title="Loss", ylabel="cross-entropy")
    plots.curves({"": {"lr": (epochs, [r["lr"] for r in history])}}, run_dir / "plots" / "lr.png",
                 title="Learning rate (last batch of each epoch)", ylabel="lr")
