"""What a training run prints: the opening line, one line per epoch (with the ETA of the whole run),
and, on a terminal, one bar for the whole run beside each epoch's bar."""
from cnnscope.render.numbers import count, lr, plural
from cnnscope.render.progress import QUIET


def say(run, text: str) -> None:
    """A line of the log (stdout) of `run` (a runs.train.RunParts): the opening line, the epochs; not when quiet."""
    if run.reporter.verbosity > QUIET:
        run.console.print(text)


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def opening_lines(run) -> list:
    """The model, data, device and batches of `run` (a runs.train.RunParts), each line within 80
    columns but the run folder's path, then the header of the epoch lines."""
    opts, ds, ddp = run.opts, run.ds, run.ddp
    batch = opts.recipe.batch_size
    where = f"{run.device}" + (f" x{ddp.world_size}" if ddp.world_size > 1 else "") + (", AMP" if run.amp else "")
    val = len(ds.val) if ds.val is not None else 0
    return [f"[bold]{opts.name}[/]: {opts.spec}, {count(n_params(run.net))} params, on {ds.name}, {where}",
            f"  {count(len(ds.train))} train / {count(val)} val / {count(len(ds.test))} test images; "
            f"{plural(opts.recipe.epochs, 'epoch')} x {plural(len(run.train_loader), 'batch', 'batches')} of {batch}"
            + (f" ({ddp.world_size} x {batch // ddp.world_size})" if ddp.world_size > 1 else ""),
            f"  -> {run.run_dir}"]


def epoch_header(selected_on: str) -> list:
    """The two header lines over the epoch lines' columns (EPOCH_WIDTHS)."""
    groups = " " * EPOCH_WIDTHS[0] + "  " + "train".center(EPOCH_WIDTHS[1] + 2 + EPOCH_WIDTHS[2]) + "  " + \
        selected_on.center(EPOCH_WIDTHS[3] + 2 + EPOCH_WIDTHS[4])
    names = ("epoch", "loss", "acc", "loss", "acc", "lr", "time", "img/s", "ETA")
    return [groups.rstrip(), "  ".join(n.rjust(w) for n, w in zip(names, EPOCH_WIDTHS))]


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


class RunBar:
    """A bar over all the training batches of the run (its ETA is the run's) on the rich Progress
    that draws each epoch's bar; `for_epoch` gives the Progress that train_epoch moves, which moves
    this bar too."""

    def __init__(self, progress, batches_per_epoch: int, epochs: int, done_batches: int):
        self.progress, self.batches_per_epoch = progress, batches_per_epoch
        self.task = progress.add_task("run", total=batches_per_epoch * epochs, completed=done_batches, stats="")

    def for_epoch(self, epoch: int) -> "_EpochProgress":
        return _EpochProgress(self.progress, self.task, epoch * self.batches_per_epoch)


class _EpochProgress:
    """The part of rich's Progress that train_epoch uses; each update also moves the run's bar."""

    def __init__(self, progress, run_task, first_batch: int):
        self.progress, self.run_task, self.first_batch = progress, run_task, first_batch

    def add_task(self, *args, **fields):
        return self.progress.add_task(*args, **fields)

    def remove_task(self, task):
        self.progress.remove_task(task)

    def update(self, task, completed=None, **fields):
        self.progress.update(task, completed=completed, **fields)
        if completed is not None:
            self.progress.update(self.run_task, completed=self.first_batch + completed)
