"""A run's state across the lives of its processes: the checkpoints the loop saves (the Checkpoints
callback), a resumed checkpoint restored (with its schedule re-planned when the run was extended to
more epochs), or another run's weights (--init-from: transfer, with a new classifier head when the
class count differs).
"""
import dataclasses
import warnings

import torch
import torch.nn as nn

from cnnscope.core.callbacks import Callback
from cnnscope.core.runtime import capture_rng, restore_rng
from cnnscope.core.training import Loop, LoopState
from cnnscope.errors import RunError
from cnnscope.runs.checkpoint import load_checkpoint, save_checkpoint
from cnnscope.runs.training_run import TrainingRun


class Checkpoints(Callback):
    """checkpoints/last.pth at every checkpoint of the loop; best.pth at the best epoch's;
    epoch_<N>.pth every save_every epochs. Every rank hands its RNG state to rank 0, which writes."""

    def __init__(self, run: TrainingRun):
        self.run = run

    def on_checkpoint(self, loop: Loop, improved: bool) -> None:
        every, epoch = self.run.opts.save_every, loop.state.epoch
        names = ["last.pth"] + (["best.pth"] if improved else [])
        if every and not loop.state.batch and epoch % every == 0:
            names.append(f"epoch_{epoch:03d}.pth")
        save_run(self.run, names)
        self.run.reporter.detail(f"saved checkpoints/{', '.join(names)}")


def save_run(run: TrainingRun, names: list[str]) -> None:
    """Checkpoint the run's state as checkpoints/<name> for each name (every rank must call)."""
    loop = run.loop
    rng = loop.ddp.gather(capture_rng())
    if not loop.ddp.is_main:
        return
    opts, ds, step, state = run.opts, run.ds, loop.step, loop.state
    ckpt = {
        "model_spec": opts.spec, "ctor": opts.ctor, "model": loop.net.state_dict(),
        "optimizer": step.optimizer.state_dict(), "scheduler": loop.scheduler.state_dict() if loop.scheduler else None,
        "scaler": step.scaler.state_dict(), "epoch": state.epoch, "best_metric": state.best_acc,
        "loop": dataclasses.asdict(state), "rng": rng, "config": run.config, "model_settings": loop.settings,
        "dataset": ds.name, "classes": list(ds.classes), "mean": list(ds.mean), "std": list(ds.std),
        "input_shape": list(ds.input_shape),
    }
    for name in names:
        save_checkpoint(ckpt, run.run_dir / "checkpoints" / name)


def restore_run(loop: Loop, ckpt: dict) -> None:
    """Weights, optimizer, schedule, scaler, loop state and this rank's RNG of a resumed run."""
    loop.net.load_state_dict(ckpt["model"])
    loop.step.optimizer.load_state_dict(ckpt["optimizer"])
    loop.step.scaler.load_state_dict(ckpt["scaler"])
    loop.state = LoopState(**ckpt["loop"])
    planned = ckpt["config"]["options"]["recipe"]["epochs"]
    if loop.recipe.epochs != planned:
        loop.state.bad_epochs = 0  # asked for more epochs: early stopping counts afresh
    restore_schedule(loop, ckpt["scheduler"], planned)
    restore_rng(ckpt["rng"][loop.ddp.rank % len(ckpt["rng"])])


def restore_schedule(loop: Loop, saved_state, planned_epochs: int) -> None:
    """The scheduler where the checkpoint left it. A run extended beyond the `planned_epochs` gets its
    schedule re-planned for the new length, as if it had been started with it, at the step it
    reached: a OneCycle or cosine LR returns to where the longer schedule is at that step, step
    milestones move with the length; a plateau schedule has no length and keeps its state. Step
    milestones saved by an older cnnscope counted epochs, not batches: those are replayed too."""
    scheduler = loop.scheduler
    if scheduler is None:
        return
    same_plan = (loop.recipe.epochs == planned_epochs
                 and dict(saved_state.get("milestones") or {}) == dict(getattr(scheduler, "milestones", {})))
    if same_plan or isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.load_state_dict(saved_state)
        return
    done = loop.state.epoch * len(loop.train_loader) + loop.state.batch if loop.per_batch else loop.state.epoch
    with warnings.catch_warnings():  # stepping before optimizer.step() is what a replay does
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done):
            scheduler.step()


def init_weights(model: nn.Module, checkpoint, num_classes: int) -> str:
    """Load the weights of `checkpoint` (a file; weights only, nothing of it is built) into `model`
    where names and shapes match. Tensors that differ in shape may only be those of ONE module, the
    classifier head, whose outputs differ because the class count does: it keeps its fresh weights.
    Returns a one-line note of what was loaded and replaced."""
    ckpt = load_checkpoint(checkpoint)
    own, theirs = model.state_dict(), ckpt["model"]
    missing, unexpected = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
    differ = sorted(k for k in own.keys() & theirs.keys() if own[k].shape != theirs[k].shape)
    heads = {k.rpartition(".")[0] for k in differ}
    head = next(iter(heads)) if len(heads) == 1 else None
    their_classes = len(ckpt.get("classes") or ())
    is_head = head is not None and all(own[k].shape[0] == num_classes and theirs[k].shape[0] == their_classes
                                       for k in differ)
    if missing or unexpected or (differ and not is_head):
        problems = [f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                    for what, keys in (("missing in the checkpoint", missing), ("not in the model", unexpected),
                                       ("of other shapes", differ)) if keys]
        raise RunError(
            f"The weights of {checkpoint} (model {ckpt['model_spec']!r}) do not fit this model: tensors "
            f"{'; '.join(problems)}. init_from takes the weights of the same architecture; only the "
            "classifier head may differ, in its number of classes.", arguments=("init_from",),
        )
    model.load_state_dict({**theirs, **{k: own[k] for k in differ}})
    note = f"Initialised from {checkpoint}: {len(own) - len(differ)} of {len(own)} tensors"
    if differ:
        note += f"; the classifier head {head!r} is new ({their_classes} -> {num_classes} classes)"
    return note + "."
