"""The figure of a result: `cnnscope.plot(result, kind=None, **options)` returns a matplotlib Figure
(a notebook shows it; `fig.savefig(path)` writes it), and `write` saves it as the CLI does, stamped
with the code that drew it. The CLI draws every figure of a result through here.

    result                          kinds (the first is the default)   options
    RFResult (with .erf measured)   "erf"                              log=True (False: a linear scale)
    EvalResult                      "confusion"
    FitResult                       "accuracy", "loss", "lr"
    CompareResult                   "accuracy", "loss"
    GateReport                      "maps", "shares"
    SharingReport                   each bank's name (default: the first)
    AttributionReport               "maps"                             scale="image"|"method", overlay=True,
                                                                       row_titles=[...]
    SanityReport                    "curves", "maps"
"""
from cnnscope.core.attribution import AttributionReport
from cnnscope.core.attribution_methods import METHODS
from cnnscope.core.gates import GateReport
from cnnscope.core.metrics import CompareResult, EvalResult
from cnnscope.core.rf import RFResult, rf_box
from cnnscope.core.sanity import SanityReport
from cnnscope.core.sharing import SharingReport
from cnnscope.core.training import FitResult
from cnnscope.render import attribution_plots, plots, rf_plots
from cnnscope.render.numbers import plural


def plot(result, kind=None, **options):
    """The Figure of `result` of the given kind (see the module doc); a TypeError names what can be drawn."""
    kinds = _kinds(result)
    if kind is None:
        kind = next(iter(kinds))
    if kind not in kinds:
        raise ValueError(f"{type(result).__name__} has no figure {kind!r}; kinds: {', '.join(kinds)}")
    return kinds[kind](result, **({"bank": kind} if isinstance(result, SharingReport) else {}), **options)


def write(result, path, kind=None, **options):
    """plot(result, kind, **options) saved as a PNG at `path` (plots.save); returns the path."""
    return plots.save(plot(result, kind, **options), path)


def _kinds(result) -> dict:
    if isinstance(result, SharingReport):
        return {bank.name: _similarity for bank in result.banks}
    if isinstance(result, RFResult) and result.erf is None:
        raise TypeError("this RFResult has no effective RF to draw: measure one with "
                        "cnnscope.effective_receptive_field(model, images, rf) and set rf.erf")
    for cls in type(result).__mro__:
        if cls in FIGURES:
            return FIGURES[cls]
    raise TypeError(f"cnnscope draws no figure of a {type(result).__name__}; it draws "
                    f"{', '.join(sorted(c.__name__ for c in FIGURES))} and SharingReport")


def subject(report) -> str:
    """The model and what was inspected, for a title: "Net, trained: reports/basic", "Net: basic (untrained)"."""
    if report.weights == "trained":
        return f"{report.model}, trained: {report.target}"
    return f"{report.model}: {report.target}" if report.model and report.model != report.target else report.target


def _images_of(report) -> str:
    n = len(report.images)
    if report.dataset in (None, "image files"):
        return plural(n, "image file" if report.dataset else "image")
    return f"{plural(n, 'test image')} of {report.dataset}"


# ---- receptive fields, evaluation, training ---------------------------------------------------

def _erf(result: RFResult, log=True):
    erf = result.erf
    units = " and ".join(map(str, erf.units)) or "the centre unit"
    where = f"{erf.run}, " if erf.run else ""
    images = plural(erf.images, "image file" if erf.dataset == "image files" else
                    f"{erf.dataset} test image" if erf.dataset else "image")
    return rf_plots.erf_heatmap(
        erf.heatmap, centre=erf.centre, box=rf_box(result, erf.centre), radius=erf.radius95,
        box_label=f"theoretical RF {result.final_rf} px", log=log,
        title=f"Effective RF of {result.model} ({where}{images})\nunit {units} of the "
              f"{result.final_size[0]}x{result.final_size[1]} final map")


def _confusion(result: EvalResult):
    return plots.confusion_matrix(result.confusion, result.classes, title=f"{result.run}: confusion matrix "
                                  f"(row-normalised), test acc {result.test_acc:.2f}%")


def training_curves(history, name, key, *, selected_on="val", best_epoch=None, test=None):
    """The accuracy ("acc"), loss or lr ("lr") of a run's log rows, by epoch, the best epoch marked
    and, when given, test = (value, label) at it."""
    epochs = [r["epoch"] for r in history]
    best = (best_epoch, f"best {selected_on} epoch ({best_epoch})") if best_epoch else None
    if key == "lr":
        return plots.curves({"": {"lr": (epochs, [r["lr"] for r in history])}}, title=f"{name}: learning rate",
                            ylabel="lr", best=best)
    series = {"": {"train": (epochs, [r[f"train_{key}"] for r in history]),
                   selected_on: (epochs, [r[f"val_{key}"] for r in history])}}  # val_: the selection split's
    return plots.curves(series, title=f"{name}: {'accuracy' if key == 'acc' else 'loss'}", best=best, test=test,
                        ylabel="accuracy (%)" if key == "acc" else "cross-entropy")


def _fit_curves(result: FitResult, key):
    return training_curves(result.history, type(result.model).__name__, key, best_epoch=result.best_epoch)


def _fit_accuracy(result: FitResult):
    return _fit_curves(result, "acc")


def _fit_loss(result: FitResult):
    return _fit_curves(result, "loss")


def _fit_lr(result: FitResult):
    return _fit_curves(result, "lr")


def compare_curves(result: CompareResult, key: str):
    """Train (solid) and validation (dashed) accuracy or loss of every run, the legend naming its dataset."""
    datasets = {row["run"]: row.get("dataset") for row in result.rows}
    series = {f"{run} ({datasets.get(run) or '?'})": {kind: ([r["epoch"] for r in log], [r[f"{kind}_{key}"] for r in log])
                                                      for kind in ("train", "val")}
              for run, log in result.histories.items()}
    title, ylabel = ("Accuracy", "accuracy (%)") if key == "acc" else ("Loss", "cross-entropy")
    return plots.curves(series, title=f"{title}: train (solid) vs val (dashed)", ylabel=ylabel)


def _compare_accuracy(result: CompareResult):
    return compare_curves(result, "acc")


def _compare_loss(result: CompareResult):
    return compare_curves(result, "loss")


# ---- inspections ------------------------------------------------------------------------------

def _gate_maps(report: GateReport):
    return plots.gate_maps(report.pixels, [[s.probs[i] for s in report.steps] for i in range(len(report.pixels))],
                           dilations=[f"d={d}" for d in report.dilations], panel_titles=[s.label for s in report.steps],
                           row_titles=_row_titles(report), title=f"Gate maps of {subject(report)}, {_images_of(report)}")


def _gate_shares(report: GateReport):
    import numpy as np

    return plots.gate_shares([s.label for s in report.steps], np.stack([s.shares for s in report.steps]),
                             [f"d={d}" for d in report.dilations], groups=[s.stage for s in report.steps],
                             title=f"Mean dilation share per stage/step: {subject(report)}")


def _similarity(report: SharingReport, bank):
    chosen = next(b for b in report.banks if b.name == bank)
    return plots.similarity_heatmap(
        chosen.similarity, chosen.layers, threshold=report.threshold,
        title=f"{subject(report)}: bank {chosen.name} ({len(chosen.layers)} layers, {chosen.template_shape[0]} templates)")


def _row_titles(report) -> list:
    """Per image: its file name, or its class (and index) in the test split."""
    return [image["file"].replace("\\", "/").rsplit("/", 1)[-1] if "file" in image else
            f"#{image['index']}" + (f" {image['class']}" if image.get("class") else "") for image in report.images]


def target_phrase(report: AttributionReport) -> str:
    return {"pred": "the predicted class", "true": "the true class"}.get(report.target_class,
                                                                          f"class {report.target_class}")


def _attributions(report: AttributionReport, scale="image", overlay=True, row_titles=None):
    preds = [f"pred: {report.class_name(p)} ({prob:.2f})" for p, prob in zip(report.preds, report.probs)]
    titles = row_titles or [f"{title}\n{pred}" for title, pred in zip(_row_titles(report), preds)]
    return attribution_plots.attribution_figure(
        report.pixels, report.maps, row_titles=titles, scale=scale, overlay=overlay,
        methods=[(METHODS[m].title + (f"\n{report.gradcam_layer['name']}" if METHODS[m].layer else ""),
                  METHODS[m].signed, METHODS[m].reads) for m in report.methods],
        title=f"Attributions of {subject(report)}, {_images_of(report)}; target: {target_phrase(report)}\n"
              + ("each map on its own scale (its top in the corner)" if scale == "image" else
                 "one scale per method over all images"))


def _sanity_curves(report: SanityReport):
    titles = [METHODS[m].title for m in report.methods]
    return attribution_plots.sanity_curves(
        ["original"] + [group[-1] for group in report.stages], dict(zip(titles, report.mean_rank())),
        threshold=report.threshold, flagged=[METHODS[m].title for m in report.flagged()],
        controls=[METHODS[m].title for m in report.methods if METHODS[m].model_free],
        title=f"Sanity check (cascading randomisation): {subject(report.attribution)}, "
              f"{plural(len(report.attribution.images), 'image')}")


def _sanity_maps(report: SanityReport):
    stage_titles = {s: "original" if s == 0 else f"{report.layers_random(s)} layers random\n"
                    f"(down to {report.stages[s - 1][-1]})" for s in report.snapshots}
    return attribution_plots.sanity_maps(
        report.attribution.pixels[0], {s: maps[0] for s, maps in report.snapshots.items()},
        methods=[METHODS[m].title for m in report.methods], stage_titles=stage_titles,
        title=f"Sanity check of {subject(report.attribution)}: the first image's maps as the layers are randomised")


FIGURES = {
    RFResult: {"erf": _erf},
    EvalResult: {"confusion": _confusion},
    FitResult: {"accuracy": _fit_accuracy, "loss": _fit_loss, "lr": _fit_lr},
    CompareResult: {"accuracy": _compare_accuracy, "loss": _compare_loss},
    GateReport: {"maps": _gate_maps, "shares": _gate_shares},
    AttributionReport: {"maps": _attributions},
    SanityReport: {"curves": _sanity_curves, "maps": _sanity_maps},
}
