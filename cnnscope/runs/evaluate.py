"""Test-set evaluation of a trained run: loss, accuracy, per-class report, confusion matrix, grids.

`evaluate_run(RUN)` rebuilds the model and its data from the checkpoint alone, computes the metrics
(cnnscope.core.metrics) and writes into the run folder (a checkpoint outside any run: into `out`, by
default reports/<checkpoint>-checkpoint/; run_folder.output_folder):
  classification_report.csv / .md   per-class precision, recall, F1, support; macro and weighted avgs
  confusion_matrix.csv              rows true class, columns predicted class, with class names
  plots/cm.png                      row-normalised, annotated
  plots/test_samples_grid.png       the first test images, true and predicted labels
  plots/misclassified_grid.png      the first misclassified test images
  metrics.json                      test_acc, test_loss, macro_avg, weighted_avg merged in (runfiles.RunMetrics)
  plots/acc_curves.png ...          a training run's curves, redrawn with this test accuracy marked
"""
from pathlib import Path

import torch

from cnnscope import render
from cnnscope.core.metrics import EvalResult, predict
from cnnscope.core.probe import rgb_pixels
from cnnscope.core.runtime import resolve_device
from cnnscope.render.progress import QUIET, SILENT, progress_bar
from cnnscope.runs import run_folder
from cnnscope.runs.checkpoint import load_run_model, resolve_run
from cnnscope.files import atomic_write_csv, atomic_write_text
from cnnscope.runs.datasets import run_dataset
from cnnscope.runs.loaders import contiguous_reason, first_images, make_loader
from cnnscope.runs.runfiles import RunMetrics
from cnnscope.runs.train_files import write_curves

GRID_SIZE = 32  # images in each sample grid


def evaluate_run(run, *, data_dir=None, device="auto", batch_size=256, reporter=SILENT,
                 trust_spec=False, dataset=None, out=None, metrics: RunMetrics | None = None,
                 channels_last=None, figures=True, built=None) -> EvalResult:
    """Evaluate RUN (a run folder: best.pth, else last.pth; or a checkpoint file) on its test set.
    `trust_spec`: build its model even when it is no zoo model (spec.check_file_spec); `reporter`
    (render.progress) draws the bar and says what is loaded. `dataset`: the run's dataset as its
    training loaded it, instead of loading it again. `out`: the folder to write into
    (run_folder.output_folder). `metrics`: its metrics.json as the run's training holds it, instead
    of reading it. `channels_last`: the memory format its training chose, instead of checking the
    model again (loaders.contiguous_reason). `figures`: all the figures; False: plots/cm.png alone,
    without the sample grids and a training run's curves (a sweep's trials leave them to evaluate).
    `built`: the run's model as its training built it, to take the checkpoint's weights instead of
    building it again (checkpoint.load_run_model)."""
    device = resolve_device(device)
    out_dir = run_folder.output_folder(*resolve_run(run), out)
    run_folder.refuse_links(out_dir)  # before any work
    reporter.detail(f"loading the run {run} onto {device}")
    model, ckpt, run_dir = load_run_model(run, trust_spec=trust_spec, built=built)
    model.to(device)
    if dataset is None:
        reporter.detail(f"loading the test split of {ckpt.get('dataset')}")
    ds = dataset or run_dataset(ckpt, data_dir)
    if channels_last is None:
        channels_last = not contiguous_reason(model, first_images(ds.test, ds, device=device), ckpt["model_spec"],
                                              reporter.step)
    loader = make_loader(ds.test, ds, batch_size=batch_size, train=False, device=str(device),
                         channels_last=channels_last)
    with progress_bar(reporter.console, stats=True, quiet=reporter.verbosity == QUIET) as progress:
        loss_sum, preds, targets = predict(model, loader, device, amp=device.type == "cuda", progress=progress,
                                           hflip=run_tta_hflip(ckpt), description="testing",
                                           channels_last=channels_last)
    if len(targets) != len(ds.test) or not torch.equal(targets, ds.test.labels):
        raise RuntimeError("the test loader must yield the whole test split in order")
    result = EvalResult.from_predictions(loss_sum, preds, targets, ds.classes, run=Path(run_dir).name,
                                         model=ckpt["model_spec"])
    if out_dir != Path(run_dir):
        reporter.step(f"writing the evaluation into {out_dir}")
    metrics = metrics or RunMetrics.read(out_dir)
    with run_folder.writing_into(out_dir):
        files = list(write_reports(result, out_dir, model, ckpt, metrics))
        if figures:
            files += write_grids(out_dir, ds, preds)
        if figures and (out_dir / "train_log.csv").is_file():  # a training run: its curves mark this test accuracy
            files += write_curves(out_dir)
    result.files = [str(path) for path in files]
    return result


def run_tta_hflip(ckpt: dict) -> bool:
    """Whether the run's recipe evaluates with the mirror images too (its tta_hflip; older runs: no)."""
    return bool(((ckpt.get("config") or {}).get("options", {}).get("recipe") or {}).get("tta_hflip", False))


def write_reports(result: EvalResult, run_dir: Path, model, ckpt, metrics: RunMetrics) -> list:
    """classification_report.{csv,md}, confusion_matrix.csv, plots/cm.png; the test metrics into `metrics`
    (its metrics.json). Returns their paths."""
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

    metrics.update({
        "run": metrics.values.get("run", result.run), "model": result.model,
        "params": sum(p.numel() for p in model.parameters()), "dataset": ckpt["dataset"],
        "test_acc": result.test_acc, "test_loss": result.test_loss,
        "macro_avg": result.macro_avg, "weighted_avg": result.weighted_avg,
    })
    return [run_dir / name for name in ("classification_report.csv", "classification_report.md",
                                        "confusion_matrix.csv", "plots/cm.png", "metrics.json")]


def write_grids(run_dir: Path, ds, preds) -> list:
    """plots/test_samples_grid.png (first test images) and plots/misclassified_grid.png; returns their paths."""
    from cnnscope.render import plots

    labels = ds.test.labels

    def grid(indices, name, title):
        images = rgb_pixels(ds.test.take(indices).float().div(255))
        captions = [f"{ds.classes[labels[i]]}\n-> {ds.classes[preds[i]]}" for i in indices]
        colors = ["black" if preds[i] == labels[i] else "red" for i in indices]
        plots.image_grid(images, captions, run_dir / "plots" / name, title=title, title_colors=colors)

    first = torch.arange(min(GRID_SIZE, len(labels)))
    grid(first, "test_samples_grid.png", "Test samples: true -> predicted (red: wrong)")
    wrong = (preds != labels).nonzero().flatten()[:GRID_SIZE]
    grid(wrong, "misclassified_grid.png",
         f"Misclassified test images: {int((preds != labels).sum())} of {len(labels)} (true -> predicted)")
    return [run_dir / "plots" / name for name in ("test_samples_grid.png", "misclassified_grid.png")]
