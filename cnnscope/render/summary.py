"""The per-layer summary (SummaryResult): a rich table, markdown, and the fixed-width text of a run's
model_summary.txt. A row per module call, indented by depth (the model, its children, theirs...);
"Params (own)" are the parameters a module holds itself (a leaf: all of them), "Params (total)"
those of everything inside it, each tensor once."""
from cnnscope import render
from cnnscope.core.summary import SummaryResult
from cnnscope.render.numbers import count, macs, megabytes
from cnnscope.render.tables import Section, sections_table

COLUMNS = ("#", "Layer", "Type", "Output", "k", "s", "d", "g", "Params (own)", "Params (total)", "MACs")
# left out first where the terminal is too narrow for every column
LEAST_IMPORTANT = ("Params (total)", "d", "Output", "g")
GEOMETRY_NOTE = ("k, s, d, g: kernel, stride, dilation and groups of the convolution or pooling the call runs "
                 "itself.")


def _pair(values) -> str:
    return "-" if values is None else str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _rows(result: SummaryResult, indent: str = "  "):
    """The cells of every call, the layer indented by its depth."""
    for i, layer in enumerate(result.layers, 1):
        name = (layer.name.rsplit(".", 1)[-1] if layer.name else "(model)") + (f" #{layer.call}" if layer.calls > 1
                                                                              else "")
        yield [str(i), indent * layer.depth + name, layer.type,
               "x".join(map(str, layer.output_shape)) if layer.output_shape else "-",
               _pair(layer.kernel), _pair(layer.stride), _pair(layer.dilation),
               "-" if layer.groups is None else str(layer.groups),
               count(layer.params) if layer.params else "-",
               count(layer.total_params) if layer.total_params else "-", macs(layer.macs) if layer.macs else "-"]


def _totals(result: SummaryResult) -> list[tuple[str, str]]:
    total = result.input_bytes + result.param_bytes + result.activation_bytes
    return [
        ("Unique trainable params", count(result.params_unique)),
        ("Non-trainable params", count(result.params_non_trainable)),
        ("Per-call (effective) params", count(result.params_per_call)),
        ("MACs per image", f"{macs(result.macs)} ({count(result.macs)})"),
        ("Memory (one image, float32, as torchinfo counts)",
         f"input {megabytes(result.input_bytes)}, parameters {megabytes(result.param_bytes)}, activations "
         f"(forward + backward) {megabytes(result.activation_bytes)}; total {megabytes(total)}"),
    ]


def model_summary_text(result: SummaryResult) -> str:
    """A fixed-width table, as written to a run's model_summary.txt."""
    rows = [list(COLUMNS), *_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    text = {1, 2, 3}

    def line(r):
        return "  ".join(c.ljust(w) if i in text else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    rule = "-" * len(line(COLUMNS))
    body = [f"{result.model}, input {'x'.join(map(str, result.input_shape))}", rule, line(COLUMNS), rule]
    body += [line(r) for r in rows[1:]]
    body += [rule] + [f"{k}: {v}" for k, v in _totals(result)] + [GEOMETRY_NOTE]
    body += [f"warning: {w}" for w in result.warnings]
    return "\n".join(body) + "\n"


def _table(result: SummaryResult, title=None):
    return sections_table([Section(
        f"{title or result.model}: input {'x'.join(map(str, result.input_shape))}", list(COLUMNS), list(_rows(result)),
        notes=[*(f"{k}: {v}" for k, v in _totals(result)), GEOMETRY_NOTE, *(f"warning: {w}" for w in result.warnings)],
        drop=LEAST_IMPORTANT,
    )])


def _markdown(result: SummaryResult, title=None) -> str:
    lines = [f"### {title or result.model} (input {'x'.join(map(str, result.input_shape))})", "",
             "| " + " | ".join(COLUMNS) + " |", "|---:|:---|:---|:---|" + "---:|" * (len(COLUMNS) - 4)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(result, indent="\u00a0\u00a0")]
    lines += [""] + [f"**{k}:** {v}  " for k, v in _totals(result)] + [f"{GEOMETRY_NOTE}  "]
    if result.warnings:
        lines += ["", *(f"> warning: {w}  " for w in result.warnings)]
    return "\n".join(lines) + "\n"


render.register(SummaryResult, table=_table, markdown=_markdown)
