"""What `cnnscope export` wrote, and how close it came to the checkpoint."""
from cnnscope.render import register
from cnnscope.core.export import ExportResult
from cnnscope.render.numbers import plural
from cnnscope.render.tables import TableView


def _line(result: ExportResult) -> str:
    batch = "any batch size" if result.dynamic_batch else "the batch size it was exported with"
    return (f"Exported {result.run} as {result.format} to {result.path} (runs with {batch}); on "
            f"{plural(result.images, 'test image')} its outputs are within {result.max_abs_diff:.2g} of the "
            f"checkpoint's (tolerance {result.tolerance:g}).")


def markdown(result: ExportResult, title=None) -> str:
    return _line(result) + "\n"


def table(result: ExportResult, title=None):
    from rich.text import Text

    return TableView(lambda width: [Text(_line(result))])


register(ExportResult, table=table, markdown=markdown)
