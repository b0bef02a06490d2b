"""What `cnnscope export` wrote, and how close it came to the checkpoint."""
from cnnscope.render import register
from cnnscope.core.export import ExportResult


def _line(result: ExportResult) -> str:
    batch = "any batch size" if result.dynamic_batch else "the batch size it was exported with"
    return (f"Exported {result.run} as {result.format} to {result.path} (runs with {batch}); on {result.images} test "
            f"images its outputs are within {result.max_abs_diff:.2g} of the checkpoint's "
            f"(tolerance {result.tolerance:g}).")


def markdown(result: ExportResult, title=None) -> str:
    return _line(result) + "\n"


def table(result: ExportResult, title=None):
    from rich.text import Text

    return Text(_line(result))


register(ExportResult, table=table, markdown=markdown)
