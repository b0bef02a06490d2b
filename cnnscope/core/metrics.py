"""Classification metrics of a model over labelled images: loss, accuracy, per-class precision,
recall, F1 and support, their macro and weighted averages, the confusion matrix and its largest
off-diagonal cells.

Metrics are computed with numpy (no sklearn); precision, recall and F1 of a class that is never
predicted / never present are 0, as in sklearn's zero_division=0.

    result = evaluate(model, images, labels, classes=names)   # or evaluate(model, loader)
    result.test_acc, result.per_class, result.to_json()
"""
import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cnnscope.core.fold import inference_copy
from cnnscope.core.memory_format import channels_last_refusal
from cnnscope.core.runtime import autocast

TOP_CONFUSIONS = 5


@torch.inference_mode()
def class_name(classes, index: int) -> str:
    """The name of class `index`, or the index itself where `classes` does not name it."""
    return classes[index] if 0 <= index < len(classes) else str(index)


def predict(model, loader, device, *, amp=False, hflip=False, progress=None, description="", channels_last=True):
    """Run `model` over `loader` -> (summed cross-entropy, predictions, targets), both on the CPU
    (empty for a loader without batches: a rank's share of a tiny split may be none).

    The batches go through fuse.inference_copy(model) on `device`, made for the first batch's shape:
    an eval-mode copy with batch norm folded into the convs, in channels_last (contiguous with
    `channels_last=False`, for a model that needs it: core.memory_format); `model` itself is left as
    it is. `hflip`: the logits are the mean of the image's and its mirror image's (test-time
    augmentation). With a rich `progress`, a task labelled `description` follows the batches.
    """
    folded = None
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    preds, targets = [], []
    task = progress.add_task(description, total=len(loader), stats="") if progress is not None else None
    for x, y in loader:
        if folded is None:
            folded = inference_copy(model, tuple(x.shape[1:]), channels_last).to(device)
        with torch.no_grad(), autocast(device, amp):  # no graph: it would hold every batch's activations
            logits = folded(x)
            if hflip:
                logits = (logits + folded(x.flip(3))) / 2
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        preds.append(logits.argmax(1))
        targets.append(y)
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    if not preds:
        return 0.0, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return loss_sum.item(), torch.cat(preds).cpu(), torch.cat(targets).cpu()


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
    """Precision, recall, F1 and support per class, and their macro and support-weighted averages.
    The macro average is over the classes that occur (as a true or a predicted label), as sklearn's
    report: a class without test images that is never predicted has no precision or recall to average."""
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    precision = _ratio(tp, cm.sum(axis=0))
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    weights = support / max(support.sum(), 1)
    occurs = (support + cm.sum(axis=0)) > 0

    def averages(w):
        return {"precision": float(precision @ w), "recall": float(recall @ w), "f1": float(f1 @ w)}

    return {
        "precision": precision, "recall": recall, "f1": f1, "support": support,
        "macro_avg": averages(occurs / max(occurs.sum(), 1)),
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

    @classmethod
    def from_predictions(cls, loss_sum: float, preds, targets, classes, *, run: str, model: str) -> "EvalResult":
        """The metrics of `preds` against `targets` (1-D tensors of class indices into `classes`)."""
        cm = confusion_counts(targets.numpy(), preds.numpy(), len(classes))
        metrics = per_class_metrics(cm)
        return cls(
            run=run, model=model, test_loss=loss_sum / len(targets),
            test_acc=100.0 * float(np.trace(cm)) / len(targets), num_test=len(targets), classes=list(classes),
            confusion=cm.tolist(),
            per_class=[
                {"class": c, "precision": float(metrics["precision"][i]), "recall": float(metrics["recall"][i]),
                 "f1": float(metrics["f1"][i]), "support": int(metrics["support"][i])}
                for i, c in enumerate(classes)
            ],
            macro_avg=metrics["macro_avg"], weighted_avg=metrics["weighted_avg"],
            top_confusions=top_confusions(cm, classes),
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(model, images, labels=None, *, classes=None, device="cpu", batch_size=256, hflip=False) -> EvalResult:
    """Loss, accuracy and per-class metrics of `model` on labelled images.

    `images` is a float tensor (N, C, H, W), prepared as the model expects it, with `labels` an int
    tensor (N,); or, without `labels`, any iterable of (images, labels) batches (a loader).
    `classes` names the classes (default: "0", "1", ... up to the largest class seen).
    `model` is left as it is: an eval-mode copy with batch norm folded runs on `device`, in
    channels_last where the model gives the same logits on the first images so (core.memory_format).
    `hflip`: each image's logits are averaged with its mirror image's (test-time augmentation).
    """
    device = torch.device(device)
    if labels is not None:
        batches = zip(torch.as_tensor(images).split(batch_size), torch.as_tensor(labels).split(batch_size))
    else:
        batches = images
    batches = iter(batches)
    first = next(batches, None)
    channels_last = first is not None and not channels_last_refusal(model, _on_model_device(model, first[0][:4]))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    on_device = ((x.to(device).contiguous(memory_format=memory_format), y.to(device))
                 for x, y in itertools.chain([first] if first is not None else [], batches))
    loss_sum, preds, targets = predict(model, on_device, device, hflip=hflip, channels_last=channels_last)
    if classes is None:
        classes = [str(i) for i in range(int(max(preds.max(), targets.max())) + 1)]
    name = type(model).__name__
    return EvalResult.from_predictions(loss_sum, preds, targets, classes, run=name, model=name)


def _on_model_device(model, x):
    param = next(model.parameters(), None)
    return x.to(param.device) if param is not None else x


@dataclass
class CompareResult:
    """Runs side by side: one row per run (its label and the `columns` of its metrics.json), the
    combined curves' figures (kind -> path), and warnings (runs on different datasets)."""
    columns: ClassVar[tuple] = ("run", "model", "dataset", "params", "macs", "rf", "best_val_acc", "test_acc",
                                "best_epoch", "epochs", "train_time_s", "images_per_s")
    rows: list
    figures: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def to_json(self) -> list:
        return self.rows
