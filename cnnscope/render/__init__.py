"""Tables (rich, markdown, json) and figures (matplotlib) from result objects.

One convention for every result the library returns:

    to_table(result, title=None)     a table for the terminal (tables.TableView): laid out for the
                                     width it is printed at; print() shows it, a notebook too
    to_markdown(result, title=None)  markdown text
    to_json(result)                  the stable JSON object: result.to_json()

Each family module here (rf, summary, inspect, ...) registers the table and markdown renderers of
its result types with `register`; figures are drawn by `figures.plot` (cnnscope.plot).
"""
import importlib
import pkgutil

_RENDERERS = {}  # result type -> (table, markdown)
_families_loaded = False
_NOT_RENDERERS = {"plots", "attribution_plots", "rf_plots", "figures", "progress", "tables",
                  "numbers"}  # helpers, not families (the figures would import matplotlib)


def register(result_type, *, table, markdown):
    """Make `table(result, title)` and `markdown(result, title)` the renderers of `result_type`."""
    _RENDERERS[result_type] = (table, markdown)


def _renderers(result):
    global _families_loaded
    # every family once, even where one was imported (and so registered) on its own before
    if not _families_loaded:
        for info in pkgutil.iter_modules(__path__):
            if info.name not in _NOT_RENDERERS:
                importlib.import_module(f"{__name__}.{info.name}")
        _families_loaded = True
    for cls in type(result).__mro__:
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
