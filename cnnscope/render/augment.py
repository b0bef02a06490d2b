"""An AugmentResult: what was augmented, how, and where the grid is."""
from cnnscope.core.augment import AugmentResult
from cnnscope.render import register

_SHOWN = ("model", "dataset", "backend", "pipeline", "n", "figure")


def markdown(result: AugmentResult, title=None) -> str:
    fields = result.to_json()
    return "\n".join(f"- {key}: {fields[key]}" for key in _SHOWN)


def table(result: AugmentResult, title=None):
    from rich.table import Table

    fields = result.to_json()
    t = Table(title=f"cnnscope augment {result.target}", show_header=False)
    for key in _SHOWN:
        t.add_row(key, str(fields[key]))
    return t


register(AugmentResult, table=table, markdown=markdown)
