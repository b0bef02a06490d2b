"""Training a classifier: the step, the epoch, validation, and `fit` for a model and loaders of your own.

Read top to bottom: the optimizer and its schedule -> egrr's per-epoch settings -> one step
(forward, backward, clip, optimizer step) -> one epoch of steps -> validation -> the end of an
epoch (its log row, the epoch-level schedule, the best epoch) -> `fit`, which runs them all in this
process. `cnnscope.runs.train` runs the same functions with run folders, checkpoints and several
processes around them.

Several processes: cnnscope.core.distributed (`Dist`, what the loop asks of the process group).
"""
import dataclasses
import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cnnscope.core.distributed import Dist
from cnnscope.core.fastconv import training_ops
from cnnscope.core.fold import to_channels_last
from cnnscope.core.memory_format import channels_last_refusal
from cnnscope.core.metrics import predict
from cnnscope.core.runtime import autocast, resolve_device

REPORT_EVERY = 10  # batches between progress refreshes and stop checks; each one waits for the device


# ---- optimizer, schedule, model settings ------------------------------------------------------

def build_optimizer(model: nn.Module, recipe) -> torch.optim.Optimizer:
    """SGD or AdamW as `recipe` (a cnnscope Recipe) says; soft-sharing coefficients (any SConv2d)
    get no weight decay."""
    from cnnscope.zoo.soft_sharing import SConv2d, coefficient_param_groups

    if any(isinstance(m, SConv2d) for m in model.modules()):
        groups = coefficient_param_groups(model, recipe.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": recipe.weight_decay}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov and recipe.momentum > 0, weight_decay=recipe.weight_decay)


def build_scheduler(optimizer, recipe, steps_per_epoch: int):
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
    if recipe.scheduler == "step":  # at fractions of the run's batches: the seed's epochs when whole,
        # and a run shorter than the milestones' spacing (--epochs 1) still decays, once per milestone
        milestones = [max(1, round(f * total)) for f in recipe.step_milestones]
        return sched.MultiStepLR(optimizer, milestones, gamma=recipe.step_gamma), True
    if recipe.scheduler == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="min", factor=recipe.plateau_factor,
                                       patience=recipe.plateau_patience), False
    return None, False


def model_settings(model: nn.Module, recipe, epoch: float) -> dict:
    """egrr's settings at a point of training: recursion depth (warm-up 1 -> full) and gate
    temperature tau. `epoch` counts fractions too (epoch + batch / batches): the trainer updates
    the settings every batch, so a warm-up shorter than one epoch (a shortened --epochs) still
    ramps; at whole epochs the values are the seed's per-epoch ones.

    Depth ramps linearly over depth_warmup_epochs (None = every step); tau decays exponentially
    from tau_start at epoch 0 to tau_end at the start of the last epoch (the whole last epoch of a
    one-epoch run). Models without set_depth / set_tau get {}.
    """
    settings = {}
    if recipe.depth_warmup_epochs > 0 and hasattr(model, "set_depth"):
        full = max((m.steps for m in model.modules() if isinstance(getattr(m, "steps", None), int)), default=1)
        w = recipe.depth_warmup_epochs
        settings["depth"] = None if epoch >= w else 1 + int((full - 1) * epoch / w)
    if recipe.tau_start > 0 and hasattr(model, "set_tau"):
        progress = min(1.0, epoch / max(1, recipe.epochs - 1))
        settings["tau"] = recipe.tau_start * (recipe.tau_end / recipe.tau_start) ** progress
    return settings


def apply_model_settings(model: nn.Module, settings: dict) -> None:
    """Settings a trainer drives outside the weights (egrr's recursion depth and gate temperature)."""
    if "depth" in settings:
        model.set_depth(settings["depth"])
    if "tau" in settings:
        model.set_tau(settings["tau"])


def follow_schedule(model: nn.Module, recipe, epoch: float) -> dict:
    """model_settings at `epoch`, applied to `model`; returned for the checkpoints to keep."""
    settings = model_settings(model, recipe, epoch)
    apply_model_settings(model, settings)
    return settings


def reduced_depth(model: nn.Module, recipe, epoch: float) -> bool:
    """Whether the model runs at a reduced depth at `epoch` (egrr's depth warm-up; see model_settings)."""
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


# ---- the step and the epoch -------------------------------------------------------------------

@dataclass
class TrainStep:
    """One optimisation step on a batch: forward (under autocast and `fast_ops`), loss, backward,
    gradient clipping, optimizer step, and the per-batch schedule. `model` may be a DDP or
    compiled wrapper of the weights the optimizer holds."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool = False
    grad_clip: float = 0.0
    fast_ops: object = field(default_factory=nullcontext)  # training_ops(device, compiled)
    batch_scheduler: object = None

    def __call__(self, x, y):
        """-> (loss, logits) of the batch."""
        with autocast(self.device, self.amp), self.fast_ops:
            logits = self.model(x)
            loss = self.criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.batch_scheduler is not None:
            self.batch_scheduler.step()
        return loss, logits


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
    lr_steps: list = field(default_factory=list)  # the lr of every optimizer step so far (plots/lr.png)
    train_images: int = 0
    train_seconds: float = 0.0


class _NoProgress:
    """A progress display that shows nothing (the part of rich's Progress that train_epoch uses)."""

    def add_task(self, *args, **kwargs):
        return None

    update = remove_task = add_task


def train_epoch(step: TrainStep, loader, state: LoopState, stop: StopRequest, ddp: Dist, progress=None,
                description="", before_batch=None) -> None:
    """Train one epoch, or the rest of one after a mid-epoch resume (state.batch batches are done).
    `before_batch(epoch)`, when given, is called with the fractional epoch before each batch.

    On return state.partial = [loss sum, correct, images, train seconds, lr of the last batch], summed
    over ranks. A stop request ends the epoch early, leaving state.batch > 0; ranks combine their
    requests (and their loss checks) every REPORT_EVERY batches, so they all stop at the same batch.
    """
    progress = progress or _NoProgress()
    step.model.train()
    skip = state.batch
    resumed = state.partial if skip and ddp.is_main else [0.0, 0.0, 0.0, 0.0, 0.0]
    sums = torch.tensor(resumed[:3], dtype=torch.float64, device=step.device)  # loss sum, correct, images
    task = progress.add_task(description, total=len(loader), completed=skip, stats="")
    started = time.perf_counter() - resumed[3]
    for i, (x, y) in enumerate(loader):
        if i < skip:  # already trained on before the stop; drawn anyway so the loader stays in step
            continue
        if before_batch is not None:
            before_batch(state.epoch + i / len(loader))
        state.lr_steps.append(step.optimizer.param_groups[0]["lr"])
        loss, logits = step(x, y)
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
                f"loss {loss_sum / seen:.4f}  acc {100 * correct / seen:.2f}%  lr {state.lr_steps[-1]:.4g}  "
                f"{seen * ddp.world_size / seconds:,.0f} img/s"))
            if stop_now and i + 1 < len(loader):
                state.batch = i + 1
                break
    else:
        state.batch = 0
    progress.remove_task(task)
    state.partial = ddp.all_reduce(sums).tolist() + [time.perf_counter() - started, state.lr_steps[-1]]


def validate(net, loader, device, amp, ddp: Dist, progress=None, hflip=False,
             channels_last=True) -> tuple[float, float]:
    """Loss and accuracy (percent) on the selection split; each rank takes its share, then they add
    up. `hflip`: with the mirror images too (a recipe's tta_hflip); `channels_last`: as predict's."""
    loss_sum, preds, targets = predict(net, loader, device, amp=amp, hflip=hflip, progress=progress,
                                       description="validating", channels_last=channels_last)
    totals = ddp.all_reduce(torch.tensor([loss_sum, float((preds == targets).sum()), float(len(targets))],
                                         dtype=torch.float64, device=device)).tolist()
    return totals[0] / totals[2], 100.0 * totals[1] / totals[2]


def end_epoch(state: LoopState, scheduler, per_batch: bool, val_loss: float, val_acc: float,
              validate_seconds: float) -> tuple[dict, bool]:
    """Close the epoch that train_epoch finished: its log row (appended to state.history), the
    epoch-level schedule, the best epoch and the early-stop count. -> (row, whether it is the best)."""
    loss_sum, correct, seen, train_seconds, lr = state.partial
    row = {"epoch": state.epoch + 1, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
           "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "epoch_time_s": train_seconds + validate_seconds,
           "images_per_s": seen / train_seconds}
    state.history.append(row)
    state.epoch, state.partial = state.epoch + 1, []
    state.train_images += int(seen)
    state.train_seconds += train_seconds
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None and not per_batch:
        scheduler.step()
    improved = val_acc > state.best_acc
    if improved:
        state.best_acc, state.best_epoch = val_acc, state.epoch
    if val_loss < state.best_loss:
        state.best_loss, state.bad_epochs = val_loss, 0
    else:
        state.bad_epochs += 1
    return row, improved


# ---- fit: all of it in this process -----------------------------------------------------------

@dataclass
class FitResult:
    model: nn.Module
    history: list  # one row per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr, epoch_time_s, images_per_s
    best_val_acc: float
    best_epoch: int

    def to_json(self) -> dict:
        return {"history": self.history, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch}


class _OnDevice:
    """A loader whose (images, labels) batches are moved to `device`."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def fit(model: nn.Module, train_loader, val_loader=None, *, recipe, device="cpu", amp=False, channels_last=True,
        progress=None, **settings) -> FitResult:
    """Train `model` in this process on the (images, labels) batches of `train_loader` with the
    optimizer, schedule, loss and egrr settings of `recipe` (e.g. cnnscope.runs.recipes.get_recipe
    ("basic")), any of its fields overridden by `settings` (epochs=5, lr=0.05, ...); after each
    epoch, loss and accuracy on `val_loader` (nan without one). `progress`: a rich Progress, or None.
    `channels_last`: the weights in channels_last where the model gives the same logits so on the
    first training images (core.memory_format), else contiguous.
    """
    recipe = dataclasses.replace(recipe, **settings)
    device = resolve_device(device)
    model.to(device)
    if channels_last:
        with torch.random.fork_rng(devices=[]):  # the probe batch draws no sample of the run's order
            probe = next(iter(train_loader))[0][:4].to(device)
        channels_last = not channels_last_refusal(model, probe)  # a speed choice, never a correctness one
    if channels_last:
        to_channels_last(model)
    optimizer = build_optimizer(model, recipe)
    scheduler, per_batch = build_scheduler(optimizer, recipe, len(train_loader))
    step = TrainStep(model, optimizer, nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing),
                     torch.amp.GradScaler(device.type, enabled=amp), device, amp, recipe.grad_clip,
                     training_ops(device, compiled=False), scheduler if per_batch else None)
    state, ddp = LoopState(), Dist(device=device)
    train_batches = _OnDevice(train_loader, device)
    val_batches = _OnDevice(val_loader, device) if val_loader is not None else None
    while state.epoch < recipe.epochs:
        train_epoch(step, train_batches, state, StopRequest(), ddp, progress, f"epoch {state.epoch + 1}",
                    lambda epoch: follow_schedule(model, recipe, epoch))
        started = time.perf_counter()
        val_loss, val_acc = (validate(model, val_batches, device, amp, ddp, progress, recipe.tta_hflip,
                                      channels_last)
                             if val_batches is not None else (math.nan, math.nan))
        end_epoch(state, scheduler, per_batch, val_loss, val_acc, time.perf_counter() - started)
    return FitResult(model, state.history, state.best_acc, state.best_epoch)
