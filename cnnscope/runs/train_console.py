"""What a training run prints, as callbacks of the loop: the opening line and what the recipe changed
to fit an image-folder tree, one line per epoch (with the ETA of the whole run), an early stop
(Console); on a terminal, one bar for the whole run beside each epoch's bar (RunBar). And the lines
of its end (runs.train.finish): a selection accuracy far below the training one, the closing line."""
from cnnscope.core.callbacks import Callback
from cnnscope.core.training import Loop
from cnnscope.render.progress import QUIET
from cnnscope.runs.training_run import TrainingRun


class Console(Callback):
    """The run's lines on stdout: the opening line (and where a resumed run goes on, or what a new
    run's recipe changed for its tree: say_fit), a line per epoch, an early stop; none when quiet,
    nor on ranks other than 0 (their console is quiet)."""

    def __init__(self, run: TrainingRun):
        self.run = run

    def on_train_start(self, loop: Loop) -> None:
        state = loop.state
        say(self.run, opening_line(self.run))
        if state.epoch or state.batch:
            say(self.run, f"Resuming at epoch {state.epoch + 1}" + (f", batch {state.batch + 1}" if state.batch else ""))
        else:
            say_fit(self.run)

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


def warn(run: TrainingRun, text: str) -> None:
    """A `warning:` line of `run` on stderr (rank 0's), unless quiet; nothing for no text."""
    if text and run.loop.ddp.is_main and run.reporter.verbosity > QUIET:
        run.reporter.console.print(f"warning: {text}", markup=False, highlight=False)


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


def say_fit(run: TrainingRun) -> None:
    """What a new run of an image-folder tree says after its opening line: what its recipe changed for
    the tree (its log), and a warning where the run takes too few optimizer steps, with the fix."""
    from cnnscope.runs import datasets, recipes

    if datasets.is_folder(run.opts.recipe.dataset):
        if run.opts.adapted:
            say(run, run.opts.adapted)
        warn(run, recipes.too_few_steps(run.opts.recipe, len(run.ds.train)))


FAR_BELOW = 20  # points of accuracy: a selection split this far under the training split gets its reasons


def far_below(run: TrainingRun) -> str:
    """A warning for a run whose last selection accuracy ended FAR_BELOW its training accuracy, with
    what may cause it, from the run's own figures; "" otherwise."""
    from cnnscope.runs import recipes

    state = run.loop.state
    if not state.history:
        return ""
    last, ds, selected_on = state.history[-1], run.ds, run.selected_on
    if last["train_acc"] - last["val_acc"] < FAR_BELOW:
        return ""
    steps, per_class = len(state.lr_steps), len(ds.train) / len(ds.classes)
    causes = [f"the {selected_on} images may differ from the training images (another source, camera or crop): "
              "more varied training images help"]
    if per_class < 100:
        causes.insert(0, f"{per_class:,.0f} training images per class can be learned by heart (overfitting): "
                         "more images, or stronger augmentation, help")
    if steps < recipes.MIN_RUN_STEPS:
        causes.insert(0, f"in {steps} optimizer steps batch norm's running statistics, which evaluation uses "
                         "(training uses each batch's own), may not have settled: more epochs help")
    return (f"the {selected_on} accuracy ended at {last['val_acc']:.1f}%, far below the training accuracy "
            f"({last['train_acc']:.1f}%). Possible causes: " + "; ".join(causes) + ".")


def closing_line(run: TrainingRun, metrics: dict, result, wall: float) -> str:
    """The last line of `run`: `wall`, the whole command's seconds (start-up, data, training, the test),
    and the training's own; the selection and test accuracies of best.pth (`result`: its EvalResult)."""
    return (f"Done in {wall:.0f}s (training {metrics['train_time_s']:.0f}s): best {metrics['selected_on']} acc "
            f"{metrics['best_val_acc']:.2f}% (epoch {metrics['best_epoch']}), test acc {result.test_acc:.2f}% "
            f"(loss {result.test_loss:.4f}) -> {run.run_dir}")


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
