"""What a training run prints, as callbacks of the loop: the opening lines and what the recipe changed
to fit an image-folder tree, the epochs' header and one line per epoch (with the ETA of the whole
run), an early stop (Console); on a terminal, one bar for the whole run beside each epoch's bar
(RunBar). And the lines of its end (runs.train.finish): a selection accuracy far below the training
one, the closing lines. Every line fits 80 columns but for a run folder's path."""
import textwrap

from cnnscope.core.callbacks import Callback
from cnnscope.core.training import Loop
from cnnscope.render.numbers import count, lr, plural
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
        for line in opening_lines(self.run):
            say(self.run, line)
        if state.epoch or state.batch:
            say(self.run, f"Resuming at epoch {state.epoch + 1}" + (f", batch {state.batch + 1}" if state.batch else ""))
        else:
            say_fit(self.run)
        for line in epoch_header(self.run.selected_on):
            say(self.run, line)

    def on_epoch_end(self, loop: Loop, row: dict, improved: bool) -> None:
        epochs = loop.recipe.epochs
        say(self.run, epoch_line(row, epochs, improved, run_eta(loop.state.history, epochs)))

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


def opening_lines(run: TrainingRun) -> list:
    """The model, data, device and batches of the run, each line within 80 columns but the run
    folder's path."""
    opts, ds, loop = run.opts, run.ds, run.loop
    batch, ddp = opts.recipe.batch_size, loop.ddp
    where = (f"{loop.step.device}" + (f" x{ddp.world_size}" if ddp.world_size > 1 else "")
             + (", AMP" if loop.step.amp else ""))
    val = len(ds.val) if ds.val is not None else 0
    return [f"[bold]{opts.name}[/]: {opts.spec}, {count(n_params(loop.net))} params, on {ds.name}, {where}",
            f"  {count(len(ds.train))} train / {count(val)} val / {count(len(ds.test))} test images; "
            f"{plural(opts.recipe.epochs, 'epoch')} x {plural(len(loop.train_loader), 'batch', 'batches')} of {batch}"
            + (f" ({ddp.world_size} x {batch // ddp.world_size})" if ddp.world_size > 1 else ""),
            f"  -> {run.run_dir}"]


def epoch_header(selected_on: str) -> list:
    """The two header lines over the epoch lines' columns (EPOCH_WIDTHS)."""
    groups = " " * EPOCH_WIDTHS[0] + "  " + "train".center(EPOCH_WIDTHS[1] + 2 + EPOCH_WIDTHS[2]) + "  " + \
        selected_on.center(EPOCH_WIDTHS[3] + 2 + EPOCH_WIDTHS[4])
    names = ("epoch", "loss", "acc", "loss", "acc", "lr", "time", "img/s", "ETA")
    return [groups.rstrip(), "  ".join(n.rjust(w) for n, w in zip(names, EPOCH_WIDTHS))]


def say_fit(run: TrainingRun) -> None:
    """What a new run of an image-folder tree says after its opening lines: what its recipe changed for
    the tree (its log, indented within 80 columns), and a warning where the run takes too few
    optimizer steps, with the fix."""
    from cnnscope.runs import datasets, recipes

    if datasets.is_folder(run.opts.recipe.dataset):
        for line in textwrap.wrap(run.opts.adapted, 80, initial_indent="  ", subsequent_indent="  "):
            say(run, line)
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
        causes.insert(0, f"in {plural(steps, 'optimizer step')} batch norm's running statistics, which evaluation uses "
                         "(training uses each batch's own), may not have settled: more epochs help")
    return (f"the {selected_on} accuracy ended at {last['val_acc']:.1f}%, far below the training accuracy "
            f"({last['train_acc']:.1f}%). Possible causes: " + "; ".join(causes) + ".")


def closing_lines(run: TrainingRun, metrics: dict, result, wall: float) -> str:
    """The last lines of `run`: `wall`, the whole command's seconds (start-up, data, training, the
    test), and the training's own; the selection and test accuracies of best.pth (`result`: its
    EvalResult); the run folder."""
    return (f"Done in {duration(wall)} (training {duration(metrics['train_time_s'])}): best {metrics['selected_on']} "
            f"acc {metrics['best_val_acc']:.2f}% at epoch {metrics['best_epoch']},\n"
            f"  test acc {result.test_acc:.2f}% (loss {result.test_loss:.4f})\n  -> {run.run_dir}")


def duration(seconds: float) -> str:
    """4.7s (under 10 s), 42s, 3m05s, 2h07m."""
    if seconds < 9.95:
        return f"{seconds:.1f}s"
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


# epoch, train loss, train acc, loss and acc of the selection split, lr, epoch time, images/s, run ETA:
# with two spaces between them and "  best", 79 columns
EPOCH_WIDTHS = (7, 6, 7, 6, 7, 8, 5, 6, 5)


def epoch_line(row: dict, epochs: int, improved: bool, eta: float | None) -> str:
    cells = (f"{row['epoch']}/{epochs}", f"{row['train_loss']:.4f}", f"{row['train_acc']:.2f}%",
             f"{row['val_loss']:.4f}", f"{row['val_acc']:.2f}%", lr(row["lr"]), duration(row["epoch_time_s"]),
             count(round(row["images_per_s"])), duration(eta) if eta is not None else "-")
    return "  ".join(c.rjust(w) for c, w in zip(cells, EPOCH_WIDTHS)) + ("  [green]best[/]" if improved else "")


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
