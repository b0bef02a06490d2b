"""The points of the training loop (cnnscope.core.training.run_loop) where a caller hooks in:
subclass Callback and override the methods of the points you need.

What the runs layer adds to a training run is callbacks (cnnscope.runs: checkpoints, the run
folder's files, console lines and the bar over the whole run); an event log (TensorBoard) is one
more: loss and lr per optimizer step (on_step, whose `step` goes on across a resume), metrics per
epoch (on_epoch_end), closed at on_train_end; rank 0 writes (loop.ddp.is_main).
"""
import torch


class Callback:
    """What a caller adds to the loop, at its fixed points; each method does nothing unless
    overridden. `loop` is the cnnscope.core.training.Loop being run. Every process calls them (a
    callback that writes checks loop.ddp.is_main)."""

    def on_train_start(self, loop) -> None:
        """Before the first batch; after a resume, loop.state says where the loop goes on from."""

    def on_step(self, loop, step: int, loss: torch.Tensor, lr: float) -> None:
        """After optimizer step `step`, counted over the whole run from 1 (a resumed run goes on
        from its last): `loss` is the batch's, on the device (reading it waits for the device),
        `lr` the learning rate the step used."""

    def on_checkpoint(self, loop, improved: bool) -> None:
        """Where the loop can be saved and resumed exactly: after each epoch's validation
        (`improved`: the best selection accuracy so far), and when a stop request ends an epoch
        early (loop.state.batch > 0). Every process must take part in a checkpoint."""

    def on_epoch_end(self, loop, row: dict, improved: bool) -> None:
        """After each epoch and its checkpoint: its log row (epoch, train_loss, train_acc,
        val_loss, val_acc, lr, epoch_time_s, images_per_s)."""

    def on_train_end(self, loop) -> None:
        """The loop is over; loop.stopped says why: "" after the last epoch, "early" for early
        stopping, "request" for a stop request. Not called when an error ends it."""
