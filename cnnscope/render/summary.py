"""The per-layer summary (SummaryResult): a rich table, markdown, and the fixed-width text of a run's
model_summary.txt."""
from cnnscope import render
from cnnscope.core.summary import SummaryResult


def _rows(result: SummaryResult):
    """(#, layer, type, output shape, params, MACs) as strings, one per call."""
    for i, layer in enumerate(result.layers, 1):
        name = layer.name or "(model)"
        if layer.calls > 1:
            name += f" #{layer.call}"
        shape = "x".join(map(str, layer.output_shape)) if layer.output_shape else "-"
        yield (str(i), name, layer.type, shape, f"{layer.params:,}" if layer.params else "-",
               f"{layer.macs:,}" if layer.macs else "-")


def _totals(result: SummaryResult) -> list[tuple[str, str]]:
    return [
        ("Unique trainable params", f"{result.params_unique:,}"),
        ("Non-trainable params", f"{result.params_non_trainable:,}"),
        ("Per-call (effective) params", f"{result.params_per_call:,}"),
        ("MACs per image", f"{result.macs:,} ({result.macs / 1e6:.2f} M)"),
    ]


def model_summary_text(result: SummaryResult) -> str:
    """A fixed-width table, as written to a run's model_summary.txt."""
    header = ("#", "Layer", "Type", "Output", "Params", "MACs")
    rows = [header, *_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {0, 4, 5}

    def line(r):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "-" * len(line(header))
    body = [f"{result.model}, input {'x'.join(map(str, result.input_shape))}", rule, line(header), rule]
    body += [line(r) for r in rows[1:]]
    body += [rule] + [f"{k}: {v}" for k, v in _totals(result)]
    body += [f"warning: {w}" for w in result.warnings]
    return "\n".join(body) + "\n"


def _table(result: SummaryResult, title=None):
    from rich.table import Table

    table = Table(title=f"{title or result.model}: input {'x'.join(map(str, result.input_shape))}")
    for col, justify in (("#", "right"), ("Layer", "left"), ("Type", "left"), ("Output", "left"),
                         ("Params", "right"), ("MACs", "right")):
        table.add_column(col, justify=justify)
    for row in _rows(result):
        table.add_row(*row)
    table.caption = " · ".join(f"{k}: {v}" for k, v in _totals(result))
    table.caption += "".join(f"\nwarning: {w}" for w in result.warnings)
    return table


def _markdown(result: SummaryResult, title=None) -> str:
    lines = [f"### {title or result.model} (input {'x'.join(map(str, result.input_shape))})", "",
             "| # | Layer | Type | Output | Params | MACs |", "|---:|:---|:---|:---|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(result)]
    lines += [""] + [f"**{k}:** {v}  " for k, v in _totals(result)]
    if result.warnings:
        lines += ["", *(f"> warning: {w}  " for w in result.warnings)]
    return "\n".join(lines) + "\n"


render.register(SummaryResult, table=_table, markdown=_markdown)
