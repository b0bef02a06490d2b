"""Predictions of a classifier over a loader."""
import torch
import torch.nn.functional as F

from cnnscope.core.fold import inference_copy
from cnnscope.core.runtime import autocast


@torch.inference_mode()
def predict(model, loader, device, *, amp=False, progress=None, description=""):
    """Run `model` over `loader` -> (summed cross-entropy, predictions, targets), both on the CPU.

    The batches go through fold.inference_copy(model): an eval-mode copy with batch norm folded into
    the convs, in channels_last; `model` itself is left as it is.
    With a rich `progress`, a task labelled `description` follows the batches.
    """
    model = inference_copy(model)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    preds, targets = [], []
    task = progress.add_task(description, total=len(loader), stats="") if progress is not None else None
    for x, y in loader:
        with autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        preds.append(logits.argmax(1))
        targets.append(y)
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    return loss_sum.item(), torch.cat(preds).cpu(), torch.cat(targets).cpu()
