"""An AugmentResult: what was augmented, how, and where the grid is."""
from cnnscope.core.augment import AugmentResult
from cnnscope.render import register
from cnnscope.render.tables import Section, sections_table

_SHOWN = ("model", "dataset", "backend", "pipeline", "n", "figure")


def markdown(result: AugmentResult, title=None) -> str:
    fields = result.to_json()
    return "\n".join(f"- {key}: {fields[key]}" for key in _SHOWN)


def table(result: AugmentResult, title=None):
    fields = result.to_json()
    return sections_table([Section(title or f"cnnscope augment {result.target}", ["field", "value"],
                                   [[key, str(fields[key])] for key in _SHOWN])])


register(AugmentResult, table=table, markdown=markdown)
