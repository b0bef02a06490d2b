"""What a training run prints, as callbacks of the loop: the opening line, one line per epoch (with
the ETA of the whole run), an early stop (Console); on a terminal, one bar for the whole run beside
each epoch's bar (RunBar)."""
from cnnscope.core.callbacks import Callback
from cnnscope.core.training import Loop
from cnnscope.render.progress import QUIET
from cnnscope.runs.training_run import TrainingRun


class Console(Callback):
    """The run's lines on stdout: the opening line (and where a resumed run goes on), a line per
    epoch, an early stop; none when quiet, nor on ranks other than 0 (their console is quiet)."""

    def __init__(self, run: TrainingRun):
        self.run = run

    def on_train_start(self, loop: Loop) -> None:
        state = loop.state
        say(self.run, opening_line(self.run))
        if state.epoch or state.batch:
            say(self.run, f"Resuming at epoch {state.epoch + 1}" + (f", batch {state.batch + 1}" if state.batch else ""))

    def on_epoch_end(self, loop: Loop, row: dict, improved: bool) -> None:
        epochs = loop.recipe.epochs
        say(self.run, epoch_line(row, epochs, self.run.selected_on, improved, run_eta(loop.state.history, epochs)))

    def on_train_end(self, loop: Loop) -> None:
        if loop.stopped == "early":
            say(self.run, f"Early stop: the {self.run.selected_on} loss has not improved for "
                          f"{loop.state.bad_epochs} epochs.")


def say(run: TrainingRun, text: str) -> None:
    """A line of the run's log (stdout): the opening line, the epochs; not when quiet."""
    if run.reporter.verbosity > QUIET:
        run.console.print(text)


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def opening_line(run: TrainingRun) -> str:
    """The model, data, device and batches of the run."""
    opts, ds, loop = run.opts, run.ds, run.loop
    batch, ddp = opts.recipe.batch_size, loop.ddp
    where = (f"{loop.step.device}" + (f" x{ddp.world_size}" if ddp.world_size > 1 else "")
             + (", AMP" if loop.step.amp else ""))
    return (f"[bold]{opts.name}[/]: {opts.spec} ({n_params(loop.net):,} params) on {ds.name} ({len(ds.train):,} train / "
            f"{len(ds.val) if ds.val is not None else 0:,} val / {len(ds.test):,} test), {where}, "
            f"{opts.recipe.epochs} epochs x {len(loop.train_loader)} batches of {batch}"
            + (f" ({ddp.world_size} x {batch // ddp.world_size})" if ddp.world_size > 1 else "") + f" -> {run.run_dir}")


def duration(seconds: float) -> str:
    """42s, 3m05s, 2h07m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def run_eta(history: list, epochs: int) -> float | None:
    """Seconds left for the epochs after the last of `history` (log rows), at their mean epoch
    time; None when none is left. An early stop may end the run sooner."""
    left = epochs - len(history)
    if left <= 0 or not history:
        return None
    return left * sum(row["epoch_time_s"] for row in history) / len(history)


def epoch_line(row: dict, epochs: int, selected_on: str, improved: bool, eta: float | None) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:6.2f}%  "
            f"{selected_on} loss {row['val_loss']:.4f} acc {row['val_acc']:6.2f}%  lr {row['lr']:.4g}  "
            f"{row['epoch_time_s']:.1f}s  {row['images_per_s']:,.0f} img/s"
            + (f"  run ETA {duration(eta)}" if eta is not None else "") + ("  [green]* best[/]" if improved else ""))


class RunBar(Callback):
    """A bar over all the training batches of the run (its ETA is the run's) on the rich Progress
    that shows each epoch's bar."""

    def __init__(self, progress):
        self.progress, self.task = progress, None

    def on_train_start(self, loop: Loop) -> None:
        batches, state = len(loop.train_loader), loop.state
        self.task = self.progress.add_task("run", total=batches * loop.recipe.epochs,
                                           completed=state.epoch * batches + state.batch, stats="")

    def on_step(self, loop: Loop, step: int, loss, lr: float) -> None:
        self.progress.update(self.task, completed=step)
