"""The summary of a CompareResult: a rich table and markdown (also the comparison's summary.md)."""
from cnnscope.core.metrics import CompareResult
from cnnscope.render import register
from cnnscope.render.numbers import count, macs
from cnnscope.render.tables import Section, sections_table

HEADERS = ("run", "model", "dataset", "params", "MACs", "RF", "best val acc (%)", "test acc (%)", "best epoch", "epochs",
           "train time (s)", "images/s")  # of CompareResult.columns
# left out first where the terminal is too narrow for every column
LEAST_IMPORTANT = ("images/s", "train time (s)", "best epoch", "RF", "MACs", "epochs")


def _cell(value, column) -> str:
    if value is None:
        return "-"
    if column in ("params", "train_time_s", "images_per_s"):
        return count(round(value))
    if column == "macs":
        return macs(value)
    if column in ("best_val_acc", "test_acc"):
        return f"{value:.2f}"
    return str(value)


def _rows(result: CompareResult) -> list:
    return [[_cell(r[c], c) for c in result.columns] for r in result.rows]


def markdown(result: CompareResult, title=None) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * 3 + "---:|" * (len(HEADERS) - 3)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(result)]
    if result.warnings:
        lines += ["", *(f"> warning: {w}  " for w in result.warnings)]
    return "\n".join(lines) + "\n"


def table(result: CompareResult, title=None):
    return sections_table([Section(title or "Runs", list(HEADERS), _rows(result),
                                   notes=[f"warning: {w}" for w in result.warnings], drop=LEAST_IMPORTANT)])


register(CompareResult, table=table, markdown=markdown)
