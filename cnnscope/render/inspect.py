"""Tables of the inspections: gate shares, soft-sharing banks, attributions (as Sections)."""
from cnnscope import render
from cnnscope.core.attribution import TITLES, AttributionReport
from cnnscope.core.gates import GateReport
from cnnscope.core.sharing import GROUPING, SharingReport
from cnnscope.render.tables import Section, fmt_float, sections_markdown, sections_table


def _images(report) -> str:
    n = len(report.images)
    return f"{n} test images of {report.dataset}" if report.dataset else f"{n} images"


def _figure_notes(report) -> list:
    return [f"{name}: {path}" for name, path in report.figures.items()]


def gate_sections(report: GateReport) -> list[Section]:
    data = report.to_json()
    p_cols = [f"P(d={d})" for d in report.dilations]
    r_col = f"r(var, P(d={max(report.dilations)}))"
    steps = Section(
        f"Gate shares per step: {report.target}, {_images(report)}",
        ["Stage", "Step", "Size", *p_cols, r_col],
        [[str(s["stage"]), str(s["step"]), "x".join(map(str, s["size"])),
          *(fmt_float(p) for p in s["shares"].values()), fmt_float(s["variance_corr"])]
         for s in data["steps"]],
    )
    stages = Section(
        "Per stage: mean shares, and how the gate follows local variance (Pearson r over pixels)",
        ["Stage", "Steps", *p_cols, r_col],
        [[str(s["stage"]), str(s["steps"]), *(fmt_float(p) for p in s["shares"].values()),
          fmt_float(s["variance_corr"])] for s in data["stages"]],
        notes=_figure_notes(report),
    )
    return [steps, stages]


def _similarity_section(bank: dict) -> Section:
    return Section(
        f"Bank {bank['name']}: |cosine similarity| of coefficient vectors "
        f"({bank['templates']} templates of {'x'.join(map(str, bank['template_shape']))})",
        ["#", "Layer", *(str(i) for i in range(len(bank["layers"])))],
        [[str(i), name, *(fmt_float(v, 2) for v in row)]
         for i, (name, row) in enumerate(zip(bank["layers"], bank["similarity"]))],
    )


def _budget_row(name, layers, templates, coefficients, unshared) -> list:
    return [name, str(layers), f"{templates:,}", f"{coefficients:,}", f"{templates + coefficients:,}",
            f"{unshared:,}", fmt_float((templates + coefficients) / unshared)]


def sharing_sections(report: SharingReport) -> list[Section]:
    data = report.to_json()
    banks, total = data["banks"], data["budget"]
    groups = Section(
        f"Fold groups at threshold {report.threshold}",
        ["Bank", "Group", "Layers", "Min similarity"],
        [[bank["name"], str(g), ", ".join(group["layers"]), fmt_float(group["min_similarity"])]
         for bank in banks for g, group in enumerate(bank["groups"])],
        notes=[f"Groups: {GROUPING}."] + ([] if any(b["groups"] for b in banks) else
                                          ["No two layers of any bank reach the threshold."]),
    )
    budget = Section(
        "Sharing budget (parameters)",
        ["Bank", "Layers", "Templates", "Coefficients", "Shared total", "Unshared", "Shared/unshared"],
        [_budget_row(b["name"], len(b["layers"]), b["template_params"], b["coefficient_params"],
                     b["unshared_params"]) for b in banks]
        + [_budget_row("all", total["layers"], total["template_params"], total["coefficient_params"],
                       total["unshared_params"])],
        notes=_figure_notes(report),
    )
    return [*map(_similarity_section, banks), groups, budget]


def attribution_sections(report: AttributionReport) -> list[Section]:
    notes = [f"methods: {', '.join(TITLES[m] for m in report.methods) or 'none'}"]
    if report.gradcam_layer:
        layer = report.gradcam_layer
        notes.append(f"GradCAM layer: {layer['name']} ({'x'.join(map(str, layer['size']))})")
    notes += [f"skipped {TITLES[m]}: {why}" for m, why in report.skipped.items()]
    notes += [f"warning: {w}" for w in report.warnings]
    notes += _figure_notes(report)
    return [Section(
        f"Attributions: {report.target}, {_images(report)}, target = {report.target_class} class",
        ["Index", "True", "Predicted", "P(pred)", "Target", "IG delta"],
        [[str(im["index"]), im.get("class", "-"), im["pred_class"], fmt_float(im["prob"]), str(im["target"]),
          fmt_float(im["ig_delta"], 4)] for im in report.to_json()["images"]],
        notes=notes,
    )]


def _register(result_type, sections):
    """Tables and markdown of `result_type` from its sections; a title heads them."""
    def titled(result, title):
        return [Section(title, [], []), *sections(result)] if title else sections(result)

    render.register(result_type, table=lambda result, title=None: sections_table(titled(result, title)),
                    markdown=lambda result, title=None: sections_markdown(titled(result, title)))


_register(GateReport, gate_sections)
_register(SharingReport, sharing_sections)
_register(AttributionReport, attribution_sections)
