"""The model zoo's table (ZooTable): name, class, parameters, MACs at 3x32x32, dataset, seed."""
from cnnscope import render
from cnnscope.core.summary import ZooTable

_COLUMNS = (("name", "Name"), ("class", "Class"), ("params", "Params"), ("macs", "MACs"),
            ("dataset", "Dataset"), ("seed", "Seed"))


def _cells(row) -> list[str]:
    return [row["name"], row["class"], f"{row['params']:,}", f"{row['macs'] / 1e6:.2f} M",
            row["dataset"], row["seed"]]


def _table(result: ZooTable, title=None):
    from rich.table import Table

    table = Table(title=title or "cnnscope model zoo (MACs at 3x32x32)")
    for key, label in _COLUMNS:
        table.add_column(label, justify="right" if key in ("params", "macs") else "left")
    for row in result.rows:
        table.add_row(*_cells(row))
    return table


def _markdown(result: ZooTable, title=None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(label for _, label in _COLUMNS) + " |",
              "|:---|:---|---:|---:|:---|:---|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result.rows]
    return "\n".join(lines) + "\n"


render.register(ZooTable, table=_table, markdown=_markdown)
