"""One table and combined curves across training runs (`cnnscope compare RUN...`).

Reads each run folder's metrics.json and train_log.csv (no model is loaded) and writes into `out`
(default reports/combined): summary.csv, summary.md, combined_acc.png, combined_loss.png.
"""
from pathlib import Path

from cnnscope import render
from cnnscope.core.metrics import CompareResult
from cnnscope.errors import CnnscopeError, RunError
from cnnscope.runs import runfiles
from cnnscope.files import atomic_write_csv, atomic_write_text

LOG_NUMBERS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")  # the curves' columns


def run_folder(run) -> Path:
    """RUN is a run folder or a checkpoint inside one (checkpoints/x.pth)."""
    path = Path(run)
    if not path.exists():
        raise RunError(f"{run} does not exist: no such run folder. Pass folders that `cnnscope train` wrote, such as "
                       "reports/basic.")
    if path.is_file():
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if not (path / "metrics.json").is_file() or not (path / "train_log.csv").is_file():
        raise CnnscopeError(
            f"{run} is not a finished run folder: it needs metrics.json and train_log.csv, which "
            "`cnnscope train` writes. Pass folders such as reports/basic."
        )
    return path


def read_log(path: Path) -> list[dict]:
    return runfiles.read_csv(path / "train_log.csv", numeric=LOG_NUMBERS)


def summary_rows(folders: list[Path]) -> list[dict]:
    """One row per run folder: its label and the CompareResult.columns of its metrics.json."""
    rows = []
    for label, folder in zip(labels_for(folders), folders):
        metrics = runfiles.read_metrics(folder / "metrics.json")
        rows.append({"run": label, **{c: metrics.get(c) for c in CompareResult.columns[1:]}})
    return rows


def comparison(folders: list[Path]) -> CompareResult:
    """The summary rows of the run folders, warned about when they mix datasets."""
    rows = summary_rows(folders)
    return CompareResult(rows, warnings=dataset_warnings(rows))


def dataset_warnings(rows: list[dict]) -> list[str]:
    """A warning when the runs were trained on different datasets: their accuracies do not compare."""
    datasets = {}
    for row in rows:
        datasets.setdefault(row["dataset"] or "an unrecorded dataset", []).append(row["run"])
    if len(datasets) < 2:
        return []
    return ["the runs were trained on different datasets, so their numbers do not compare: " +
            "; ".join(f"{', '.join(runs)} on {name}" for name, runs in datasets.items())]


def labels_for(folders: list[Path]) -> list[str]:
    """Folder names, or longer paths where two runs share a name."""
    names = [f.name for f in folders]
    return [str(f) if names.count(f.name) > 1 else f.name for f in folders]


def compare_runs(runs, out="reports/combined") -> CompareResult:
    """Write the summary table and combined curves of `runs` into `out`."""
    from cnnscope.render import figures

    folders = [run_folder(r) for r in runs]
    result = comparison(folders)
    result.histories = {row["run"]: read_log(folder) for row, folder in zip(result.rows, folders)}

    out = Path(out)
    columns = CompareResult.columns
    atomic_write_csv(out / "summary.csv", [columns, *([row[c] for c in columns] for row in result.rows)])
    atomic_write_text(out / "summary.md", render.to_markdown(result))
    for key, kind in (("acc", "accuracy"), ("loss", "loss")):
        result.figures[key] = str(figures.write(result, out / f"combined_{key}.png", kind))
    result.files = [str(out / "summary.csv"), str(out / "summary.md"), *result.figures.values()]
    return result
