"""Tables (rich, markdown, json) and figures (matplotlib) from result objects.

One convention for every result the library returns:

    to_table(result, title=None)     a table for the terminal (tables.TableView): laid out for the
                                     width it is printed at; print() shows it, a notebook too
    to_markdown(result, title=None)  markdown text
    to_json(result)                  the stable JSON object: result.to_json()

Each family module here (rf, summary, inspect, ...) registers the table and markdown renderers of
its result types with `register`; FAMILIES says which module that is, so that rendering a result
imports its family alone. Figures are drawn by `figures.plot` (cnnscope.plot), whose FIGURES says
which function draws each kind of figure of each result type.
"""
import importlib

_RENDERERS = {}  # result type -> (table, markdown)

FAMILIES = {  # result type name -> the module here that registers its renderers
    "AugmentResult": "augment",
    "BenchResult": "bench",
    "CompareResult": "compare",
    "EvalResult": "evaluate",
    "ExportResult": "export",
    "AttributionReport": "inspect",
    "GateReport": "inspect",
    "LayerList": "inspect",
    "SanityReport": "inspect",
    "SharingReport": "inspect",
    "RFResult": "rf",
    "SummaryResult": "summary",
    "SweepResult": "sweep",
    "ZooTable": "zoo",
}


def register(result_type, *, table, markdown):
    """Make `table(result, title)` and `markdown(result, title)` the renderers of `result_type`."""
    _RENDERERS[result_type] = (table, markdown)


def _renderers(result):
    for cls in type(result).__mro__:
        if cls not in _RENDERERS and cls.__name__ in FAMILIES:
            importlib.import_module(f"{__name__}.{FAMILIES[cls.__name__]}")
        if cls in _RENDERERS:
            return _RENDERERS[cls]
    raise TypeError(f"no renderer for {type(result).__name__}; register one in cnnscope.render")


def to_table(result, title=None):
    view = _renderers(result)[0](result, title)
    view.markdown = lambda: to_markdown(result, title)  # what a notebook shows
    return view


def to_markdown(result, title=None) -> str:
    return _renderers(result)[1](result, title)


def to_json(result) -> dict:
    return result.to_json()
