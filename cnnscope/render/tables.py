"""Tables as sections: a result's renderers build a list of Sections, shown as rich tables or markdown."""
from dataclasses import dataclass, field


@dataclass
class Section:
    title: str
    columns: list  # header strings
    rows: list  # lists of strings
    notes: list = field(default_factory=list)  # lines printed under the table

    def align_right(self) -> list:
        """Numeric columns (no letters in the first row's cell) are right-aligned."""
        return [not any(c.isalpha() for c in cell) for cell in (self.rows[0] if self.rows else [])]


def sections_table(sections):
    """A rich renderable: one table per section (a section without rows: its title and notes)."""
    from rich.console import Group
    from rich.table import Table

    parts = []
    for section in sections:
        if not section.rows:  # nothing to tabulate: the title and the notes say it
            parts += [f"[bold]{section.title}[/bold]", *section.notes]
            continue
        table = Table(title=section.title, caption="\n".join(section.notes) or None)
        right = section.align_right()
        for i, col in enumerate(section.columns):
            table.add_column(col, justify="right" if i < len(right) and right[i] else "left")
        for row in section.rows:
            table.add_row(*row)
        parts.append(table)
    return Group(*parts)


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
    """A markdown table (no final newline), each cell shown with str(); numeric columns (no letters
    in the first row's cell) right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    right = Section("", list(columns), rows).align_right()
    return "\n".join(["| " + " | ".join(columns) + " |",
                      "|" + "|".join("---:" if i < len(right) and right[i] else ":---" for i in range(len(columns))) + "|",
                      *("| " + " | ".join(row) + " |" for row in rows)])


def fmt_float(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
