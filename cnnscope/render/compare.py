"""The summary of a CompareResult: a rich table and markdown (also the comparison's summary.md)."""
from cnnscope.core.metrics import CompareResult
from cnnscope.render import register

HEADERS = ("run", "model", "dataset", "params", "MACs", "RF", "best val acc (%)", "test acc (%)", "best epoch", "epochs",
           "train time (s)", "images/s")  # of CompareResult.columns


def _cell(value, column) -> str:
    if value is None:
        return "-"
    if column == "params":
        return f"{value:,}"
    if column == "macs":
        return f"{value / 1e6:,.2f} M"
    if column in ("best_val_acc", "test_acc"):
        return f"{value:.2f}"
    if column in ("train_time_s", "images_per_s"):
        return f"{value:,.0f}"
    return str(value)


def markdown(result: CompareResult, title=None) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * 3 + "---:|" * (len(HEADERS) - 3)]
    lines += ["| " + " | ".join(_cell(r[c], c) for c in result.columns) + " |" for r in result.rows]
    if result.warnings:
        lines += ["", *(f"> warning: {w}  " for w in result.warnings)]
    return "\n".join(lines) + "\n"


def table(result: CompareResult, title=None):
    from rich.table import Table

    table = Table(title="Runs")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i < 3 else "right")
    for r in result.rows:
        table.add_row(*(_cell(r[c], c) for c in result.columns))
    table.caption = "\n".join(f"warning: {w}" for w in result.warnings) or None
    return table


register(CompareResult, table=table, markdown=markdown)
