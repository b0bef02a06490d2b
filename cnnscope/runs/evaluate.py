"""Test-set evaluation of a trained run: loss, accuracy, per-class report, confusion matrix, grids.

`evaluate_run(RUN)` rebuilds the model and its data from the checkpoint alone, computes the metrics
(cnnscope.core.metrics) and writes into the run folder:
  classification_report.csv / .md   per-class precision, recall, F1, support; macro and weighted avgs
  confusion_matrix.csv              rows true class, columns predicted class, with class names
  plots/cm.png                      row-normalised, annotated
  plots/test_samples_grid.png       the first test images, true and predicted labels
  plots/misclassified_grid.png      the first misclassified test images
  metrics.json                      test_acc, test_loss, macro_avg, weighted_avg merged in
  plots/acc_curves.png ...          a training run's curves, redrawn with this test accuracy marked
"""
import json
from pathlib import Path

import torch

from cnnscope import render
from cnnscope.core.metrics import EvalResult, predict
from cnnscope.core.runtime import resolve_device
from cnnscope.render.progress import QUIET, SILENT, progress_bar
from cnnscope.runs.checkpoint import load_run_model
from cnnscope.files import atomic_write_csv, atomic_write_text
from cnnscope.runs.datasets import run_dataset
from cnnscope.runs.loaders import make_loader, pixels
from cnnscope.runs.runfiles import read_metrics
from cnnscope.runs.train_files import write_curves

GRID_SIZE = 32  # images in each sample grid


def evaluate_run(run, *, data_dir=None, device="auto", batch_size=256, reporter=SILENT,
                 trust_spec=False, dataset=None) -> EvalResult:
    """Evaluate RUN (a run folder: best.pth, else last.pth; or a checkpoint file) on its test set.
    `trust_spec`: build its model even when it is no zoo model (spec.check_file_spec); `reporter`
    (render.progress) draws the bar and says what is loaded. `dataset`: the run's dataset as its
    training loaded it, instead of loading it again."""
    device = resolve_device(device)
    reporter.detail(f"loading the run {run} onto {device}")
    model, ckpt, run_dir = load_run_model(run, trust_spec=trust_spec)
    model.to(device)
    if dataset is None:
        reporter.detail(f"loading the test split of {ckpt.get('dataset')}")
    ds = dataset or run_dataset(ckpt, data_dir)
    loader = make_loader(ds.test, ds, batch_size=batch_size, train=False, device=str(device))
    with progress_bar(reporter.console, stats=True, quiet=reporter.verbosity == QUIET) as progress:
        loss_sum, preds, targets = predict(model, loader, device, amp=device.type == "cuda", progress=progress,
                                           hflip=run_tta_hflip(ckpt), description="testing")
    if len(targets) != len(ds.test) or not torch.equal(targets, ds.test.labels):
        raise RuntimeError("the test loader must yield the whole test split in order")
    result = EvalResult.from_predictions(loss_sum, preds, targets, ds.classes, run=Path(run_dir).name,
                                         model=ckpt["model_spec"])
    run_dir = Path(run_dir)
    result.files = [*write_reports(result, run_dir, model, ckpt), run_dir / "plots" / "test_samples_grid.png",
                    run_dir / "plots" / "misclassified_grid.png"]
    write_grids(run_dir, ds, preds)
    if (run_dir / "train_log.csv").is_file():  # a training run: its curves mark this test accuracy and loss
        result.files += write_curves(run_dir)
    result.files = [str(path) for path in result.files]
    return result


def run_tta_hflip(ckpt: dict) -> bool:
    """Whether the run's recipe evaluates with the mirror images too (its tta_hflip; older runs: no)."""
    return bool(((ckpt.get("config") or {}).get("options", {}).get("recipe") or {}).get("tta_hflip", False))


def write_reports(result: EvalResult, run_dir: Path, model, ckpt) -> list:
    """classification_report.{csv,md}, confusion_matrix.csv, plots/cm.png; merge into metrics.json.
    Returns their paths."""
    from cnnscope.render import figures

    averages = [("macro avg", result.macro_avg), ("weighted avg", result.weighted_avg)]
    total = sum(r["support"] for r in result.per_class)
    atomic_write_csv(run_dir / "classification_report.csv", [
        ["class", "precision", "recall", "f1", "support"],
        *([r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]
          for r in result.per_class),
        *([name, f"{avg['precision']:.4f}", f"{avg['recall']:.4f}", f"{avg['f1']:.4f}", total]
          for name, avg in averages),
    ])
    atomic_write_text(run_dir / "classification_report.md", render.to_markdown(result))
    atomic_write_csv(run_dir / "confusion_matrix.csv", [
        ["true\\pred", *result.classes], *([name, *row] for name, row in zip(result.classes, result.confusion))])
    figures.write(result, run_dir / "plots" / "cm.png", "confusion")

    metrics_path = run_dir / "metrics.json"
    metrics = read_metrics(metrics_path, "cnnscope train") if metrics_path.is_file() else {}
    metrics.update({
        "run": metrics.get("run", result.run), "model": result.model,
        "params": sum(p.numel() for p in model.parameters()), "dataset": ckpt["dataset"],
        "test_acc": result.test_acc, "test_loss": result.test_loss,
        "macro_avg": result.macro_avg, "weighted_avg": result.weighted_avg,
    })
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    return [run_dir / name for name in ("classification_report.csv", "classification_report.md",
                                        "confusion_matrix.csv", "plots/cm.png", "metrics.json")]


def write_grids(run_dir: Path, ds, preds) -> None:
    """plots/test_samples_grid.png (first test images) and plots/misclassified_grid.png."""
    from cnnscope.render import plots

    labels = ds.test.labels

    def grid(indices, name, title):
        images = pixels(ds.test.take(indices).float().div(255))
        captions = [f"{ds.classes[labels[i]]}\n-> {ds.classes[preds[i]]}" for i in indices]
        colors = ["black" if preds[i] == labels[i] else "red" for i in indices]
        plots.image_grid(images, captions, run_dir / "plots" / name, title=title, title_colors=colors)

    first = torch.arange(min(GRID_SIZE, len(labels)))
    grid(first, "test_samples_grid.png", "Test samples: true -> predicted (red: wrong)")
    wrong = (preds != labels).nonzero().flatten()[:GRID_SIZE]
    grid(wrong, "misclassified_grid.png",
         f"Misclassified test images: {int((preds != labels).sum())} of {len(labels)} (true -> predicted)")
