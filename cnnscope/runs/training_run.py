"""One training run, as the parts that train it see it: made by runs.train, read by the loop's
callbacks in runs.train_state (checkpoints), runs.train_files (the run folder's files),
runs.train_console (what it prints), runs.tensorboard (its events) and runs.sweep (a trial's report)."""
from dataclasses import dataclass, field
from pathlib import Path

from cnnscope.core.training import Loop
from cnnscope.render.progress import Reporter
from cnnscope.runs.datasets import Dataset
from cnnscope.runs.runfiles import RunMetrics
from cnnscope.runs.train_options import TrainOptions


@dataclass
class TrainingRun:
    opts: TrainOptions
    run_dir: Path
    console: object  # a rich Console: the run's lines on stdout (quiet on the ranks other than 0)
    reporter: Reporter  # preparation lines (stderr) and the verbosity
    ds: Dataset
    loop: Loop  # the model, its step and schedule, the loaders, the process group, and where training stands
    contiguous_because: str = ""  # why the weights and batches are not channels_last ("": they are), config.json's
    config: dict = field(default_factory=dict)  # config.json, from runs.train.start_run on
    metrics: RunMetrics | None = None  # metrics.json, from runs.train.start_run on
    # the caller's loop callbacks (run_training's), as jobs each rank makes: launch.call(job, run)
    callback_jobs: list = field(default_factory=list)
    figures: bool = True  # False: the confusion matrix alone at the end, no curves or grids (a sweep's trials)

    @property
    def selected_on(self) -> str:
        return "val" if self.ds.val is not None else "test"
