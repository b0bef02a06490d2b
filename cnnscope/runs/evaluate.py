"""Test-set evaluation of a trained run: loss, accuracy, per-class report, confusion matrix, grids.

`evaluate_run(RUN)` rebuilds the model and its data from the checkpoint alone and writes into the
run folder:
  classification_report.csv / .md   per-class precision, recall, F1, support; macro and weighted avgs
  confusion_matrix.csv              rows true class, columns predicted class, with class names
  plots/cm.png                      row-normalised, annotated
  plots/test_samples_grid.png       the first test images, true and predicted labels
  plots/misclassified_grid.png      the first misclassified test images
  metrics.json                      test_acc, test_loss, macro_avg, weighted_avg merged in
Metrics are computed here with numpy (no sklearn); precision, recall and F1 of a class that is never
predicted / never present are 0, as in sklearn's zero_division=0.
"""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnscope.runs.checkpoint import atomic_write_csv, atomic_write_text
from cnnscope.errors import CnnscopeError
from cnnscope.core.metrics import predict
from cnnscope.core.runtime import resolve_device
from cnnscope.runs.runfiles import read_metrics

GRID_SIZE = 32  # images in each sample grid
TOP_CONFUSIONS = 5


def confusion_counts(targets, preds, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: rows true class, columns predicted class."""
    t = np.asarray(targets, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num, den):
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_metrics(cm: np.ndarray) -> dict:
    """Precision, recall, F1 and support per class, and their macro and support-weighted averages."""
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    precision = _ratio(tp, cm.sum(axis=0))
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    weights = support / max(support.sum(), 1)

    def averages(w):
        return {"precision": float(precision @ w), "recall": float(recall @ w), "f1": float(f1 @ w)}

    return {
        "precision": precision, "recall": recall, "f1": f1, "support": support,
        "macro_avg": averages(np.full(len(cm), 1 / len(cm))),
        "weighted_avg": averages(weights),
    }


def top_confusions(cm: np.ndarray, classes, k: int = TOP_CONFUSIONS) -> list[dict]:
    """The k largest off-diagonal cells: true class, predicted class, count, share of the true class."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = []
    for flat in order:
        i, j = divmod(int(flat), len(cm))
        if off[i, j] == 0:
            break
        rows.append({"true": classes[i], "pred": classes[j], "count": int(off[i, j]),
                     "rate": float(off[i, j] / cm[i].sum())})
    return rows


@dataclass
class EvalResult:
    run: str
    model: str
    test_loss: float
    test_acc: float  # percent
    num_test: int
    classes: list
    confusion: list  # rows true, columns predicted
    per_class: list  # [{"class", "precision", "recall", "f1", "support"}]
    macro_avg: dict
    weighted_avg: dict
    top_confusions: list

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def load_run_data(ckpt: dict, data_dir=None):
    """The dataset a checkpoint was trained on, normalised exactly as in training."""
    from cnnscope.runs import data

    options = (ckpt.get("config") or {}).get("options", {})
    if "dataset" not in ckpt:
        raise CnnscopeError(
            "This checkpoint does not say which dataset it was trained on (no 'dataset' entry); "
            "evaluate a checkpoint written by `cnnscope train`."
        )
    ds = data.load_dataset(ckpt["dataset"], data_dir or options.get("data_dir", "data"),
                           val_split=options.get("val_split", 0.1), seed=options.get("seed", 0))
    return dataclasses.replace(ds, mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]))


def evaluate_run(run, *, data_dir=None, device="auto", batch_size=256, quiet=False, trust_spec=False) -> EvalResult:
    """Evaluate RUN (a run folder: best.pth, else last.pth; or a checkpoint file) on its test set.
    `trust_spec`: build its model even when it is no zoo model (spec.check_file_spec)."""
    from cnnscope.runs import data
    from cnnscope.runs.checkpoint import load_run_model

    from rich.progress import Progress

    model, ckpt, run_dir = load_run_model(run, trust_spec=trust_spec)
    device = resolve_device(device)
    model.to(device)
    ds = load_run_data(ckpt, data_dir)
    loader = data.make_loader(ds.test, ds, batch_size=batch_size, train=False, device=device.type)
    with Progress(transient=True, disable=quiet) as progress:
        loss_sum, preds, targets = predict(model, loader, device, amp=device.type == "cuda", progress=progress,
                                           description="testing")
    if len(targets) != len(ds.test) or not torch.equal(targets, ds.test.labels):
        raise RuntimeError("the test loader must yield the whole test split in order")

    cm = confusion_counts(targets.numpy(), preds.numpy(), len(ds.classes))
    metrics = per_class_metrics(cm)
    result = EvalResult(
        run=Path(run_dir).name, model=ckpt["model_spec"],
        test_loss=loss_sum / len(targets), test_acc=100.0 * float(np.trace(cm)) / len(targets),
        num_test=len(targets), classes=list(ds.classes), confusion=cm.tolist(),
        per_class=[
            {"class": c, "precision": float(metrics["precision"][i]), "recall": float(metrics["recall"][i]),
             "f1": float(metrics["f1"][i]), "support": int(metrics["support"][i])}
            for i, c in enumerate(ds.classes)
        ],
        macro_avg=metrics["macro_avg"], weighted_avg=metrics["weighted_avg"],
        top_confusions=top_confusions(cm, ds.classes),
    )
    write_reports(result, Path(run_dir), model, ckpt)
    write_grids(Path(run_dir), ds, preds)
    return result


def write_reports(result: EvalResult, run_dir: Path, model, ckpt) -> None:
    """classification_report.{csv,md}, confusion_matrix.csv, plots/cm.png; merge into metrics.json."""
    from cnnscope.render import plots

    averages = [("macro avg", result.macro_avg), ("weighted avg", result.weighted_avg)]
    total = sum(r["support"] for r in result.per_class)
    atomic_write_csv(run_dir / "classification_report.csv", [
        ["class", "precision", "recall", "f1", "support"],
        *([r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]
          for r in result.per_class),
        *([name, f"{avg['precision']:.4f}", f"{avg['recall']:.4f}", f"{avg['f1']:.4f}", total]
          for name, avg in averages),
    ])
    atomic_write_text(run_dir / "classification_report.md", report_markdown(result))
    atomic_write_csv(run_dir / "confusion_matrix.csv", [
        ["true\\pred", *result.classes], *([name, *row] for name, row in zip(result.classes, result.confusion))])
    plots.confusion_matrix(result.confusion, result.classes, run_dir / "plots" / "cm.png",
                           title=f"{result.run}: confusion matrix (row-normalised), test acc {result.test_acc:.2f}%")

    metrics_path = run_dir / "metrics.json"
    metrics = read_metrics(metrics_path, "cnnscope train") if metrics_path.is_file() else {}
    metrics.update({
        "run": metrics.get("run", result.run), "model": result.model,
        "params": sum(p.numel() for p in model.parameters()), "dataset": ckpt["dataset"],
        "test_acc": result.test_acc, "test_loss": result.test_loss,
        "macro_avg": result.macro_avg, "weighted_avg": result.weighted_avg,
    })
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")


def report_markdown(result: EvalResult) -> str:
    lines = [
        f"Test accuracy {result.test_acc:.2f}% ({result.num_test} images), test loss {result.test_loss:.4f}",
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result.per_class:
        lines.append(f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    for name, avg in (("macro avg", result.macro_avg), ("weighted avg", result.weighted_avg)):
        lines.append(f"| **{name}** | {avg['precision']:.3f} | {avg['recall']:.3f} | {avg['f1']:.3f} | {result.num_test} |")
    if result.top_confusions:
        lines += ["", "Top confusions (true -> predicted):", ""]
        lines += [f"- {c['true']} -> {c['pred']}: {c['count']} ({100 * c['rate']:.1f}% of {c['true']})"
                  for c in result.top_confusions]
    return "\n".join(lines) + "\n"


def report_table(result: EvalResult):
    """The classification report as a rich table, the headline numbers in its title."""
    from rich.table import Table

    table = Table(title=f"{result.run}: test acc {result.test_acc:.2f}% ({result.num_test} images), "
                        f"loss {result.test_loss:.4f}")
    for name in ("class", "precision", "recall", "f1", "support"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for r in result.per_class:
        table.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    for name, avg in (("macro avg", result.macro_avg), ("weighted avg", result.weighted_avg)):
        table.add_row(f"[bold]{name}[/]", f"{avg['precision']:.3f}", f"{avg['recall']:.3f}", f"{avg['f1']:.3f}",
                      str(result.num_test))
    if result.top_confusions:
        table.caption = "Top confusions: " + ", ".join(
            f"{c['true']} -> {c['pred']} ({c['count']})" for c in result.top_confusions)
    return table


def write_grids(run_dir: Path, ds, preds) -> None:
    """plots/test_samples_grid.png (first test images) and plots/misclassified_grid.png."""
    from cnnscope.render import plots

    labels = ds.test.labels

    def grid(indices, name, title):
        images = ds.test.images[indices].permute(0, 2, 3, 1).float().div(255).numpy()
        captions = [f"{ds.classes[labels[i]]}\n-> {ds.classes[preds[i]]}" for i in indices]
        colors = ["black" if preds[i] == labels[i] else "red" for i in indices]
        plots.image_grid(images, captions, run_dir / "plots" / name, title=title, title_colors=colors)

    first = torch.arange(min(GRID_SIZE, len(labels)))
    grid(first, "test_samples_grid.png", "Test samples: true -> predicted (red: wrong)")
    wrong = (preds != labels).nonzero().flatten()[:GRID_SIZE]
    grid(wrong, "misclassified_grid.png",
         f"Misclassified test images: {int((preds != labels).sum())} of {len(labels)} (true -> predicted)")
