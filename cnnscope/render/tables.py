"""Tables as sections: a result's renderers build a list of Sections, shown as rich tables or markdown.

A rich table is laid out for the width it is printed at (80 columns and up): a number is never cut
(its column is as wide as its widest cell), text wraps at separators (`.`, `_`, `/`, `-`, spaces),
and when even that does not fit, the section's least important columns are left out, by name, and a
note under the table says which. Titles and notes are left-aligned lines, never centred captions.
"""
import functools
import re
import shutil
from dataclasses import dataclass, field

MIN_TEXT = 20  # a text column may fold a piece longer than this; shorter ones it keeps whole
_NUMBER = re.compile(r"[-+]?[\d.,]+(e[-+]?\d+)?(x[\d.,]+)?\*?( ?(%|[KMG]|MB|px|s))?")
_BREAKS = re.compile(r"(?<=[._/\-,:\s])|(?<=[a-z])(?=[A-Z])")  # after these, or inside CamelCase


@dataclass
class Section:
    title: str
    columns: list  # header strings
    rows: list  # lists of strings
    notes: list = field(default_factory=list)  # lines printed under the table
    drop: tuple = ()  # headers of the columns to leave out when the table is too wide, least important first
    least: dict = field(default_factory=dict)  # header -> the narrowest a column may be before it is left out

    def numeric(self) -> list:
        """Per column: whether it holds numbers (every cell but '-' is one), shown right-aligned."""
        return [any(c != "-" for c in cells) and all(c == "-" or _NUMBER.fullmatch(c) for c in cells)
                for cells in ([row[i] for row in self.rows] for i in range(len(self.columns)))]


def wrap(text: str, width: int) -> list:
    """`text` in lines of at most `width`, broken after separators and between a lower-case letter and a
    capital (DivisiveNorm); a line's indentation stays; a piece longer than a line is folded."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for piece in _BREAKS.split(paragraph):
            if len((line + piece).rstrip()) > width:
                if line.strip():
                    lines.append(line.rstrip())
                    line, piece = "", piece.lstrip()
                else:  # the indentation goes with the piece
                    line, piece = "", line + piece
                while len(piece.rstrip()) > width:
                    lines.append(piece[:width])
                    piece = piece[width:]
            line += piece
        lines.append(line.rstrip())
    return lines


def _longest_piece(text: str) -> int:
    """The narrowest a column can be without folding `text`: its longest piece, and its indentation
    with the first piece."""
    longest = 0
    for line in text.split("\n"):
        pieces = [p.strip() for p in _BREAKS.split(line)]
        first = next((p for p in pieces if p), "")
        longest = max(longest, len(line) - len(line.lstrip()) + len(first), *map(len, pieces))
    return longest


def _widest(text: str) -> int:
    return max(len(line) for line in text.split("\n"))


def column_widths(section: Section, width: int):
    """(indices of the columns shown, their widths) for a table at most `width` characters wide: the
    section's `drop` columns left out first, then others from the right, until the rest fits; widths
    None when not even the first column fits (then rich folds it)."""
    numeric = section.numeric()
    shown = list(range(len(section.columns)))
    drop = [section.columns.index(h) for h in section.drop if h in section.columns]
    drop += [i for i in reversed(shown[1:]) if i not in drop]  # then from the right: a number is never cut
    while True:
        cells = [[section.columns[i], *(row[i] for row in section.rows)] for i in shown]
        natural = [max(map(_widest, c)) for c in cells]
        least = [max(_longest_piece(c[0]), max(map(_widest, c[1:]), default=0)) if numeric[i]
                 else min(natural[k], section.least.get(c[0]) or
                          max(min(MIN_TEXT, max(map(_longest_piece, c))), _longest_piece(c[0])))
                 for k, (i, c) in enumerate(zip(shown, cells))]
        room = width - (3 * len(shown) + 1)  # a border per column and one more, a space either side of a cell
        if sum(least) <= room or not drop:
            break
        shown.remove(drop.pop(0))
    if sum(least) > room:
        return shown, None
    return shown, _narrowed(natural, least, room, [section.columns[i] for i in shown],
                            [[row[i] for row in section.rows] if not numeric[i] else [] for i in shown])


def _narrowed(widths, least, room, headers, cells) -> list:
    """`widths` narrowed to sum to `room`, one character at a time, each time from the column where it
    adds the fewest lines to the table (its wrapped cells, and the header band); ties: the widest.
    `cells`: per column, the cells that may wrap (none for numbers, which never do)."""
    widths = list(widths)
    heights = [_lines(h, w) for h, w in zip(headers, widths)]
    while sum(widths) > room:
        def cost(k):
            taller = max([*heights[:k], _lines(headers[k], widths[k] - 1), *heights[k + 1:]]) - max(heights)
            return taller + sum(_lines(c, widths[k] - 1) - _lines(c, widths[k]) for c in cells[k])

        k = min((k for k in range(len(widths)) if widths[k] > least[k]), key=lambda k: (cost(k), -widths[k]))
        widths[k] -= 1
        heights[k] = _lines(headers[k], widths[k])
    return widths


@functools.lru_cache(maxsize=65536)
def _lines(text: str, width: int) -> int:
    return len(wrap(text, width))


def fitted_table(section: Section, width: int):
    """The rich renderables of one section at `width`: the table (or its title), then its notes."""
    from rich.table import Table
    from rich.text import Text

    if not section.rows:  # nothing to tabulate: the title and the notes say it
        return [Text(section.title, style="bold"), *map(_note, section.notes)]
    shown, widths = column_widths(section, width)
    numeric = section.numeric()
    table = Table(title=section.title, title_justify="left", title_style="bold")
    for k, i in enumerate(shown):
        header = section.columns[i] if widths is None else "\n".join(wrap(section.columns[i], widths[k]))
        table.add_column(header, justify="right" if numeric[i] else "left", overflow="fold",
                         **({} if widths is None else {"width": widths[k], "no_wrap": True}))
    for row in section.rows:
        table.add_row(*(Text(row[i] if widths is None else "\n".join(wrap(row[i], widths[k])))
                        for k, i in enumerate(shown)))
    left_out = [section.columns[i] for i in range(len(section.columns)) if i not in shown]
    notes = section.notes + ([f"Not shown at {width} columns: {', '.join(map(repr, left_out))} (--format markdown "
                              "or json has every column)."] if left_out else [])
    return [table, *map(_note, notes)]


def _note(text: str):
    from rich.text import Text

    return Text(text, style="yellow" if text.startswith("warning:") else "")


class TableView:
    """What `to_table` returns: a rich renderable laid out for the console it is printed on, which
    also prints as text (`print(view)`, at the terminal's width) and shows as a table in a notebook
    (its markdown)."""

    def __init__(self, render):
        self._render = render  # width -> list of rich renderables
        self.markdown = None  # () -> markdown text, set by render.to_table

    def __rich_console__(self, console, options):
        yield from self._render(options.max_width)

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=shutil.get_terminal_size((80, 24)).columns, color_system=None, force_terminal=False,
                          soft_wrap=False)
        with console.capture() as captured:
            console.print(self)
        return captured.get().rstrip("\n")

    def _repr_markdown_(self) -> str | None:
        return self.markdown() if self.markdown else None


def sections_table(sections) -> TableView:
    """The sections laid out at the width they are printed at, one after another."""
    return TableView(lambda width: [part for s in sections for part in fitted_table(s, width)])


def sections_markdown(sections) -> str:
    """Markdown: a `###` heading, a table and the notes per section."""
    lines = []
    for section in sections:
        lines += [f"### {section.title}", ""]
        if section.rows:
            lines += [markdown_table(section.columns, section.rows), ""]
        if section.notes:
            lines += [f"{note}  " for note in section.notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


def markdown_table(columns, rows) -> str:
    """A markdown table (no final newline), each cell shown with str() and its line breaks as <br>;
    numeric columns (Section.numeric) right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    numeric = Section("", list(columns), rows).numeric()
    return "\n".join(["| " + " | ".join(columns) + " |",
                      "|" + "|".join("---:" if right else ":---" for right in numeric) + "|",
                      *("| " + " | ".join(cell.replace("\n", "<br>") for cell in row) + " |" for row in rows)])


def fmt_float(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
