"""Tables of the inspections: gate shares, soft-sharing banks, attributions (as Sections)."""
from cnnscope import render
from cnnscope.core.attribution import AttributionReport, LayerList
from cnnscope.core.attribution_methods import IG_MAX_STEPS, IG_MIN_STEPS, METHODS
from cnnscope.core.sanity import SanityReport
from cnnscope.core.gates import GateReport
from cnnscope.core.sharing import GROUPING, SharingReport
from cnnscope.render.numbers import count, fixed, plural, scientific
from cnnscope.render.tables import Section, sections_markdown, sections_table


def _images(report) -> str:
    n = len(report.images)
    if report.dataset == "image files":
        return plural(n, "image file")
    return f"{plural(n, 'test image')} of {report.dataset}" if report.dataset else plural(n, "image")


def gate_sections(report: GateReport) -> list[Section]:
    data = report.to_json()
    p_cols = [f"P(d={d})" for d in report.dilations]
    r_col = f"r(var, P(d={max(report.dilations)}))"
    steps = Section(
        f"Gate shares per step: {report.target}, {_images(report)}",
        ["Stage", "Step", "Size", *p_cols, r_col],
        [[str(s["stage"]), str(s["step"]), "x".join(map(str, s["size"])),
          *(fixed(p) for p in s["shares"].values()), fixed(s["variance_corr"])]
         for s in data["steps"]],
    )
    stages = Section(
        "Per stage: mean shares, and how the gate follows local variance (Pearson r over pixels)",
        ["Stage", "Steps", *p_cols, r_col],
        [[str(s["stage"]), str(s["steps"]), *(fixed(p) for p in s["shares"].values()),
          fixed(s["variance_corr"])] for s in data["stages"]],
    )
    return [steps, stages]


def _similarity_section(bank: dict) -> Section:
    n = len(bank["layers"])
    return Section(
        f"Bank {bank['name']}: |cosine similarity| of coefficient vectors "
        f"({bank['templates']} templates of {'x'.join(map(str, bank['template_shape']))})",
        ["#", "Layer", "Closest (|cos|)", *map(str, range(n))],
        [[str(i), name, _closest(row, i), *(fixed(v, 2) for v in row)]
         for i, (name, row) in enumerate(zip(bank["layers"], bank["similarity"]))],
        drop=tuple(map(str, reversed(range(n)))),
    )


def _closest(row, i) -> str:
    """The most similar other layer of layer i: its index and the similarity."""
    others = [j for j in range(len(row)) if j != i]
    if not others:
        return "-"
    j = max(others, key=lambda j: row[j])
    return f"{j} ({row[j]:.2f})"


def _budget_row(name, layers, templates, coefficients, unshared) -> list:
    return [name, str(layers), count(templates), count(coefficients), count(templates + coefficients),
            count(unshared), fixed((templates + coefficients) / unshared)]


def sharing_sections(report: SharingReport) -> list[Section]:
    data = report.to_json()
    banks, total = data["banks"], data["budget"]
    groups = Section(
        f"Fold groups at threshold {report.threshold}",
        ["Bank", "Group", "Layers", "Min similarity"],
        [[bank["name"], str(g), ", ".join(group["layers"]), fixed(group["min_similarity"])]
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
        drop=("Shared total",),
    )
    return [*map(_similarity_section, banks), groups, budget]


def attribution_sections(report: AttributionReport) -> list[Section]:
    notes = [f"methods: {', '.join(_method_label(m) for m in report.methods) or 'none'}"]
    if report.gradcam_layer:
        layer = report.gradcam_layer
        notes.append(f"GradCAM layer ({layer['chosen']}): {layer['name']} ({'x'.join(map(str, layer['size']))})")
    notes += [f"skipped {METHODS[m].title}: {why}" for m, why in report.skipped.items()]
    notes += [f"warning: {w}" for w in report.warnings]
    if "ig" in report.methods:
        notes.append(f"IG: steps doubled from {IG_MIN_STEPS} until |delta| <= {report.ig_tolerance:g} x "
                     f"|F(x) - F(baseline)| (the relative delta), at most {IG_MAX_STEPS}")
    ig = "ig" in report.methods
    return [Section(
        f"Attributions: {report.target}, {_images(report)}, target = {_target_label(report.target_class)}",
        ["Image", "True", "Predicted", "P(pred)", "Target", *(["IG steps", "IG delta", "IG rel. delta"] if ig else [])],
        [[_image_label(im), im.get("class", "-"), im["pred_class"], fixed(im["prob"]), report.class_name(im["target"]),
          *([count(im["ig_steps"]) + ("" if im["ig_converged"] else " (not reached)"), scientific(im["ig_delta"]),
             fixed(im["ig_relative_delta"])] if ig else [])]
         for im in report.to_json()["images"]],
        notes=notes,
        drop=("IG delta", "IG steps", "P(pred)", "True"),
    )]


def _image_label(image: dict) -> str:
    """An image file by its name, a test image by its index in the test split."""
    return image["file"].replace("\\", "/").rsplit("/", 1)[-1] if "file" in image else str(image["index"])


def _target_label(target_class: str) -> str:
    return {"pred": "the predicted class", "true": "the true class"}.get(target_class, f"class {target_class}")


def _method_label(name) -> str:
    method = METHODS[name]
    return f"{method.title} ({'signed' if method.signed else 'non-negative'})"


def sanity_sections(report: SanityReport) -> list[Section]:
    data = report.to_json()
    stages = len(report.stages)
    marks = sorted({0, stages // 4, stages // 2, 3 * stages // 4, stages})
    stage_columns = [f"{report.layers_random(k)} random" if k else "original" for k in marks]
    below = f"At or below {report.threshold:g} from"
    ranks = Section(
        f"Sanity check: {data['target']}, model-parameter randomisation (Adebayo et al. 2018), "
        f"{plural(len(report.attribution.images), 'image')}",
        ["Method", *stage_columns, "Signed, all random", below, "Verdict"],
        [[m["title"], *(fixed(m["rank_abs"][k]) for k in marks), fixed(m["rank_signed"][-1]),
          _first_below(m["first_below_threshold"]),
          ("FLAGGED (expected: control)" if m["control"] else "FLAGGED") if m["flagged"] else "changes"]
         for m in data["methods"]],
        notes=[f"Spearman rank correlation of |map| with the original model's maps, mean over images, after "
               f"randomising the top k of {report.layers_random(stages)} parameterised layers, from the output "
               f"down ({stages} stages; the first: {', '.join(report.stages[0])}).",
               f"FLAGGED: still above {report.threshold:g} with every layer random, so the maps do not depend "
               "on the learned weights enough to explain them."],
        drop=(below, "Signed, all random", *stage_columns[1:-1]),
    )
    return [*attribution_sections(report.attribution), ranks]


def _first_below(stage) -> str:
    return "never" if stage is None else f"{stage['layers_random']} random ({stage['layer']})"


def layer_sections(layers: LayerList) -> list[Section]:
    return [Section(
        f"Layers for GradCAM and Guided GradCAM (--layer): {layers.target}",
        ["Layer", "Type", "Output (C x H x W)", "Calls", "Usable"],
        [[row["name"], row["type"], "x".join(map(str, row["size"])), str(row["calls"]),
          ("yes (default)" if row["default"] else "yes") if row["usable"] else "no"] for row in layers.layers],
        notes=["Usable: a spatial map (more than 1x1) from a layer that runs once per forward (Captum's "
               "layer hooks need that)."],
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
_register(SanityReport, sanity_sections)
_register(LayerList, layer_sections)
