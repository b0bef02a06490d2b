"""What a long command says while it works, on stderr (stdout stays the result's, e.g. json):
progress bars with the elapsed time and an ETA, drawn only on a terminal (piped, a log stays one
line per event), and preparation lines ("loading fashion-mnist ..."), one whole line each.

Verbosity: QUIET shows neither (only results and errors); NORMAL shows the bars and the steps of
long preparations (Reporter.step); VERBOSE adds every preparation and per-step detail
(Reporter.detail)."""
from contextlib import contextmanager

QUIET, NORMAL, VERBOSE = 0, 1, 2


def progress_bar(console=None, *, stats=False, quiet=False):
    """A transient rich Progress on `console` (default: stderr, which keeps stdout clean for json).
    `stats`: a last column showing each task's `stats` field (e.g. the running loss)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = console or Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    if stats:
        columns.append(TextColumn("{task.fields[stats]}"))
    # off a terminal rich cannot redraw a bar: it would only leave blank lines in the log
    return Progress(*columns, console=console, transient=True, disable=quiet or not console.is_terminal)


class Reporter:
    """Preparation lines and progress bars of one command at one verbosity, on one stderr console
    (so that a line printed while a bar is drawn goes above the bar)."""

    def __init__(self, verbosity: int = NORMAL, console=None):
        self.verbosity = verbosity
        self._console = console

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, soft_wrap=True)  # whole lines, also when piped
        return self._console

    def step(self, message: str) -> None:
        """A step of a long preparation (loading the dataset, starting processes): shown unless quiet."""
        if self.verbosity >= NORMAL:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def detail(self, message: str) -> None:
        """Shown only when verbose."""
        if self.verbosity >= VERBOSE:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def bar(self, stats=False):
        return progress_bar(self.console, stats=stats, quiet=self.verbosity == QUIET)

    @contextmanager
    def stages(self, count: int):
        """A bar over the `count` stages of a command; yields begin(name), called at the start of
        each stage, which moves the bar on and says `name` as a step line."""
        with self.bar() as bar:
            task = bar.add_task("", total=count)
            begun = []

            def begin(name: str) -> None:
                if begun:
                    bar.advance(task)
                begun.append(name)
                bar.update(task, description=name)
                self.step(name)

            yield begin
            bar.advance(task)


SILENT = Reporter(QUIET)  # the default of library calls: a notebook user sees nothing unasked
