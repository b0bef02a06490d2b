"""A sweep's trials (SweepResult) as a table, and Optuna's own figures of its study."""
import warnings
from pathlib import Path

from cnnscope.core.sweep import SweepResult
from cnnscope.render import register
from cnnscope.render.tables import Section, sections_markdown, sections_table


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _sections(result: SweepResult, title=None) -> list:
    """One row per trial, headed by its run folder (the trial's number; "(elsewhere)" when another
    machine trained it); the metric is the trial's best over its epochs."""
    rows = [[Path(r["run"]).name if r["run"] else f"{r['trial']} (elsewhere)",
             *(_value(r["params"].get(p)) for p in result.params), r["state"],
             "-" if r["value"] is None else f"{r['value']:.2f}", str(r["epochs"])] for r in result.rows]
    done = sum(r["state"] in ("complete", "pruned", "failed") for r in result.rows)
    notes = [f"{result.metric}: each trial's best epoch; {done} of {result.trials} trials done",
             f"study {result.study} in {result.storage}"]
    if result.best is not None:
        best = next(r for r in result.rows if r["trial"] == result.best)
        notes.append(f"best: trial {best['trial']}, {result.metric} {best['value']:.2f} ({result.direction}d)")
    notes += result.notes
    return [Section(title or f"Sweep {result.study}", ["run", *result.params, "state", result.metric, "epochs"],
                    rows, notes)]


def table(result: SweepResult, title=None):
    return sections_table(_sections(result, title))


def markdown(result: SweepResult, title=None) -> str:
    return sections_markdown(_sections(result, title))


register(SweepResult, table=table, markdown=markdown)


# ---- Optuna's figures ---------------------------------------------------------------------------

FIGURES = {  # name -> (Optuna's matplotlib function, title)
    "optimization_history": ("plot_optimization_history",
                             "{study}: {metric} of each trial (dots) and the best so far (line)"),
    "param_importances": ("plot_param_importances",
                          "{study}: how much each param explains of {metric} (fANOVA, complete trials)"),
    "parallel_coordinate": ("plot_parallel_coordinate",
                            "{study}: each complete trial's values, a line coloured by its {metric}"),
}


def study_figures(study, folder: Path, metric: str) -> tuple[dict, list]:
    """Optuna's matplotlib figures of `study` as PNGs in `folder`, titled with what they show.
    -> ({name: path}, notes on the figures it could not draw yet, e.g. before two complete trials)."""
    import optuna
    import optuna.visualization.matplotlib as figures_of

    from cnnscope.render import plots

    drawn, notes = {}, []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for name, (function, title) in FIGURES.items():
        if len(complete) < (2 if name == "param_importances" else 1):
            notes.append(f"{name}.png needs {'two' if name == 'param_importances' else 'one'} complete trial(s)")
            continue
        # fANOVA (a seeded random forest): Optuna's default (PED-ANOVA) needs more trials than a short sweep has
        options = {"evaluator": optuna.importance.FanovaImportanceEvaluator(seed=0)} if name == "param_importances" \
            else {}
        with warnings.catch_warnings():  # experimental API; degenerate axes of a short study
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = getattr(figures_of, function)(study, target_name=metric, **options)
            except (ImportError, ValueError, RuntimeError) as e:  # e.g. no spread of values to explain
                notes.append(f"{name}.png not drawn: {' '.join(str(e).split())[:200]}")
                continue
        axes = axes.flat[0] if hasattr(axes, "flat") else axes
        for loc in ("left", "center", "right"):  # Optuna's own title, at one of them
            axes.set_title("", loc=loc)
        axes.set_title(title.format(study=study.study_name, metric=metric), fontsize=10, loc="left")
        drawn[name] = str(plots.save(axes.figure, folder / f"{name}.png"))
    return drawn, notes
