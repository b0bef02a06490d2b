"""Training a classifier: one loop for every caller, from a model and loaders of your own (`fit`)
to a run folder trained by several processes (cnnscope.runs.train).

Read top to bottom: the optimizer and its schedule -> one step (forward, backward, clip, optimizer
step) -> the loop's state and its callbacks -> one epoch of steps -> validation -> the end of an
epoch (its log row, the epoch-level schedule, the best epoch) -> the loop over the epochs -> `fit`.

What a caller adds around the loop (checkpoints, log files, console lines, progress bars, event
logs) is a Callback, called at fixed points; what a model adds (its own schedule, weights without
decay) it declares in hooks (cnnscope.core.hooks). Several processes: cnnscope.core.distributed
(`Dist`, what the loop asks of the process group).
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

from cnnscope.core import hooks
from cnnscope.core.callbacks import Callback
from cnnscope.core.distributed import Dist, training_model
from cnnscope.core.fastconv import training_ops
from cnnscope.core.fold import to_channels_last
from cnnscope.core.memory_format import channels_last_refusal
from cnnscope.core.metrics import predict
from cnnscope.core.runtime import autocast, compiles_whole_model, resolve_device

REPORT_EVERY = 10  # batches between progress refreshes and stop checks; each one waits for the device


# ---- optimizer and schedule -------------------------------------------------------------------

def build_optimizer(model: nn.Module, recipe) -> torch.optim.Optimizer:
    """SGD or AdamW as `recipe` (a cnnscope Recipe) says, over the model's parameter groups
    (hooks.param_groups: what its modules exempt from weight decay gets none)."""
    groups = hooks.param_groups(model, recipe.weight_decay)
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


# ---- the step ---------------------------------------------------------------------------------

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
    fast_ops: object = field(default_factory=nullcontext)  # training_ops(model, device, compiled)
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


def make_step(net: nn.Module, recipe, device: torch.device, amp=False, compiled=False) -> TrainStep:
    """The step of `recipe` for `net` (on `device`): its optimizer, loss and gradient clipping, a
    gradient scaler for `amp`, and the forward's training_ops (`compiled`: on the CPU with the
    compiled fused passes); step.model is `net` until a caller wraps it (DDP, compiled)."""
    return TrainStep(net, build_optimizer(net, recipe), nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing),
                     torch.amp.GradScaler(device.type, enabled=amp), device, amp, recipe.grad_clip,
                     training_ops(net, device, compiled))


# ---- the loop's state -------------------------------------------------------------------------

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


@dataclass
class Loop:
    """What the loop trains with and where it stands: make_loop builds it, run_loop runs it, the
    callbacks read it."""
    net: nn.Module  # the weights; step.model runs them, wrapped from the first batch on (DDP, compiled)
    step: TrainStep
    train_loader: object  # (images, labels) batches on the device; set_epoch(epoch) first, where it has one
    val_loader: object  # the selection split's batches, or None
    recipe: object
    scheduler: object = None
    per_batch: bool = False  # the scheduler steps every batch (else every epoch)
    ddp: Dist = field(default_factory=Dist)
    compiled: bool = False  # the step runs torch.compile's version of the model (compiles_whole_model)
    channels_last: bool = True  # the model takes channels_last batches, so validation's copy does (core.memory_format)
    callbacks: list[Callback] = field(default_factory=list)
    progress: object = None  # a rich Progress showing each epoch and each validation, or None
    state: LoopState = field(default_factory=LoopState)
    settings: dict = field(default_factory=dict)  # what the model's schedule set at the last batch (hooks)
    skipping: bool | None = None  # step.model looks for weights the model leaves unused (None: not wrapped yet)
    stopped: str = ""  # why it ended early: "early", "request", or what a callback set (the sweep: "pruned")


def make_loop(net: nn.Module, train_loader, val_loader, recipe, device: torch.device, *, amp=False, ddp=None,
              compiled=False, channels_last=True, callbacks=(), progress=None) -> Loop:
    """The loop training `net` (on `device` already) with the step and schedule of `recipe`;
    `channels_last`: whether the model runs on channels_last batches (False: contiguous ones, for a
    model that needs them: core.memory_format). `compiled`: the whole model compiled on CUDA, the
    step's fused passes on the CPU (runtime.compiles_whole_model)."""
    step = make_step(net, recipe, device, amp, compiled)
    scheduler, per_batch = build_scheduler(step.optimizer, recipe, len(train_loader))
    step.batch_scheduler = scheduler if per_batch else None
    return Loop(net, step, train_loader, val_loader, recipe, scheduler, per_batch, ddp or Dist(device=device),
                compiles_whole_model(device, compiled), channels_last, list(callbacks), progress)


# ---- one epoch --------------------------------------------------------------------------------

class _NoProgress:
    """A progress display that shows nothing (the part of rich's Progress that train_epoch uses)."""

    def add_task(self, *args, **kwargs):
        return None

    update = remove_task = add_task


def follow_model(loop: Loop, epoch: float) -> None:
    """Before a batch: the model's own schedule at `epoch` (hooks.on_progress, kept for the
    checkpoints); the step's model wrapped at the first batch, and again when the model starts or
    stops leaving weights out (DDP looks for unused ones only while it does: to the end of egrr's
    depth warm-up, mid-epoch too)."""
    loop.settings = hooks.on_progress(loop.net, epoch, loop.recipe)
    skipping = loop.ddp.world_size > 1 and hooks.skips_weights(loop.net)
    if skipping != loop.skipping:
        loop.skipping = skipping
        loop.step.model = training_model(loop.net, loop.ddp, loop.compiled, skipping)


def train_epoch(loop: Loop, stop: StopRequest) -> None:
    """Train one epoch, or the rest of one after a mid-epoch resume (state.batch batches are done).

    On return state.partial = [loss sum, correct, images, train seconds, lr of the last batch], summed
    over ranks. A stop request ends the epoch early, leaving state.batch > 0; ranks combine their
    requests (and their loss checks) every REPORT_EVERY batches, so they all stop at the same batch.
    """
    state, step, loader, ddp = loop.state, loop.step, loop.train_loader, loop.ddp
    progress = loop.progress or _NoProgress()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(state.epoch)
    loop.net.train()
    skip = state.batch
    resumed = state.partial if skip and ddp.is_main else [0.0, 0.0, 0.0, 0.0, 0.0]
    sums = torch.tensor(resumed[:3], dtype=torch.float64, device=step.device)  # loss sum, correct, images
    task = progress.add_task(f"epoch {state.epoch + 1}/{loop.recipe.epochs}", total=len(loader), completed=skip,
                             stats="")
    started = time.perf_counter() - resumed[3]
    for i, (x, y) in enumerate(loader):
        if i < skip:  # already trained on before the stop; drawn anyway so the loader stays in step
            continue
        follow_model(loop, state.epoch + i / len(loader))
        state.lr_steps.append(step.optimizer.param_groups[0]["lr"])
        loss, logits = step(x, y)
        for callback in loop.callbacks:
            callback.on_step(loop, state.epoch * len(loader) + i + 1, loss.detach(), state.lr_steps[-1])
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


def validate(loop: Loop) -> tuple[float, float]:
    """Loss and accuracy (percent) on the selection split (nan without one), with rank 0's batch-norm
    statistics on every rank (the model validated is the one checkpointed); each rank takes its
    share, then they add up. With the mirror images too where the recipe says (tta_hflip); in the
    loop's memory format (predict's channels_last)."""
    if loop.val_loader is None:
        return math.nan, math.nan
    ddp, device = loop.ddp, loop.step.device
    ddp.share_buffers(loop.net)
    loss_sum, preds, targets = predict(loop.net, loop.val_loader, device, amp=loop.step.amp,
                                       hflip=loop.recipe.tta_hflip, progress=loop.progress, description="validating",
                                       channels_last=loop.channels_last)
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


# ---- the loop -----------------------------------------------------------------------------------

def run_loop(loop: Loop, stop: StopRequest | None = None) -> Loop:
    """Epochs until the recipe's last, an early stop (recipe.early_stop_patience epochs without a
    lower selection loss) or a `stop` request (a StopRequest the caller installed: the epoch stops
    after the batch at hand, every process at the same one), with the callbacks at their points.
    -> `loop`; loop.stopped says why it ended."""
    stop = stop or StopRequest()  # not installed: never requested
    for callback in loop.callbacks:
        callback.on_train_start(loop)
    while loop.state.epoch < loop.recipe.epochs and not loop.stopped:
        train_epoch(loop, stop)
        if loop.state.batch:  # stopped mid-epoch: the checkpoint says where, so resuming replays exactly
            loop.stopped = "request"
            for callback in loop.callbacks:
                callback.on_checkpoint(loop, False)
            break
        started = time.perf_counter()
        val_loss, val_acc = validate(loop)
        row, improved = end_epoch(loop.state, loop.scheduler, loop.per_batch, val_loss, val_acc,
                                  time.perf_counter() - started)
        for callback in loop.callbacks:
            callback.on_checkpoint(loop, improved)
        for callback in loop.callbacks:
            callback.on_epoch_end(loop, row, improved)
        patience = loop.recipe.early_stop_patience
        if patience and loop.state.bad_epochs >= patience:
            loop.stopped = "early"
        elif loop.ddp.any_rank(stop.requested)[0]:  # Ctrl-C during validation or the callbacks
            loop.stopped = "request"
    for callback in loop.callbacks:
        callback.on_train_end(loop)
    return loop


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
        progress=None, callbacks=(), **settings) -> FitResult:
    """Train `model` in this process on the (images, labels) batches of `train_loader` with the
    optimizer, schedule, loss and early stopping of `recipe` (e.g. cnnscope.runs.recipes.get_recipe
    ("basic")), any of its fields overridden by `settings` (epochs=5, lr=0.05, ...); after each
    epoch, loss and accuracy on `val_loader` (nan without one). A model's own schedule follows the
    recipe through its hooks (cnnscope.core.hooks). `progress`: a rich Progress, or None;
    `callbacks`: Callback objects, called at the loop's points. `channels_last`: the weights in
    channels_last where the model gives the same logits so on the first training images
    (core.memory_format), else contiguous.
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
    val_batches = _OnDevice(val_loader, device) if val_loader is not None else None
    loop = run_loop(make_loop(model, _OnDevice(train_loader, device), val_batches, recipe, device, amp=amp,
                              channels_last=channels_last, callbacks=callbacks, progress=progress))
    return FitResult(model, loop.state.history, loop.state.best_acc, loop.state.best_epoch)
