"""Progress bars for long work: on a terminal, a rich bar with the elapsed time and an ETA; when the
output is piped or quiet, nothing at all, so that a log stays one line per event."""


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
