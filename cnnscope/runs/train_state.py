"""Where a run's state comes from when it does not start from scratch: a resumed checkpoint (with
its schedule re-planned when the run was extended to more epochs), or another run's weights
(--init-from: transfer, with a new classifier head when the class count differs).
"""
import warnings

import torch
import torch.nn as nn

from cnnscope.core.runtime import restore_rng
from cnnscope.core.training import LoopState
from cnnscope.errors import CnnscopeError
from cnnscope.runs.checkpoint import load_checkpoint


def restore_run(run, ckpt: dict) -> None:
    """Weights, optimizer, schedule, scaler, loop and this rank's RNG of a resumed run."""
    run.net.load_state_dict(ckpt["model"])
    run.step.optimizer.load_state_dict(ckpt["optimizer"])
    run.step.scaler.load_state_dict(ckpt["scaler"])
    run.state = LoopState(**ckpt["loop"])
    planned = ckpt["config"]["options"]["recipe"]["epochs"]
    if run.opts.recipe.epochs != planned:
        run.state.bad_epochs = 0  # asked for more epochs: early stopping counts afresh
    restore_schedule(run, ckpt["scheduler"], planned)
    restore_rng(ckpt["rng"][run.ddp.rank % len(ckpt["rng"])])


def restore_schedule(run, saved_state, planned_epochs: int) -> None:
    """The scheduler where the checkpoint left it. A run extended beyond the `planned_epochs` gets its
    schedule re-planned for the new length, as if it had been started with it, at the step it
    reached: a OneCycle or cosine LR returns to where the longer schedule is at that step, step
    milestones move with the length; a plateau schedule has no length and keeps its state. Step
    milestones saved by an older cnnscope counted epochs, not batches: those are replayed too."""
    scheduler = run.scheduler
    if scheduler is None:
        return
    same_plan = (run.opts.recipe.epochs == planned_epochs
                 and dict(saved_state.get("milestones") or {}) == dict(getattr(scheduler, "milestones", {})))
    if same_plan or isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.load_state_dict(saved_state)
        return
    done = run.state.epoch * len(run.train_loader) + run.state.batch if run.per_batch else run.state.epoch
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
        raise CnnscopeError(
            f"The weights of {checkpoint} (model {ckpt['model_spec']!r}) do not fit this model: tensors "
            f"{'; '.join(problems)}. init_from takes the weights of the same architecture; only the "
            "classifier head may differ, in its number of classes.", arguments=("init_from",),
        )
    model.load_state_dict({**theirs, **{k: own[k] for k in differ}})
    note = f"Initialised from {checkpoint}: {len(own) - len(differ)} of {len(own)} tensors"
    if differ:
        note += f"; the classifier head {head!r} is new ({their_classes} -> {num_classes} classes)"
    return note + "."
