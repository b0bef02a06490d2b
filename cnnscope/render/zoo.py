"""The model zoo's table (ZooTable): name, class, parameters, MACs at 3x32x32, dataset, seed."""
from cnnscope import render
from cnnscope.core.summary import ZooTable
from cnnscope.render.numbers import count, macs
from cnnscope.render.tables import Section, sections_table

_COLUMNS = ("Name", "Class", "Params", "MACs", "Dataset", "Seed")


def _cells(row) -> list[str]:
    return [row["name"], row["class"], count(row["params"]), macs(row["macs"]), row["dataset"], row["seed"]]


def _section(result: ZooTable, title) -> Section:
    # the seed is a paper's or repository's title: shown where it fits in two or three lines, else left out
    return Section(title, list(_COLUMNS), [_cells(r) for r in result.rows], drop=("Seed",), least={"Seed": 30})


def _table(result: ZooTable, title=None):
    return sections_table([_section(result, title or "cnnscope model zoo (MACs at 3x32x32)")])


def _markdown(result: ZooTable, title=None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(_COLUMNS) + " |", "|:---|:---|---:|---:|:---|:---|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result.rows]
    return "\n".join(lines) + "\n"


render.register(ZooTable, table=_table, markdown=_markdown)
