"""The result of a hyperparameter sweep: its trials, as the study holds them (cnnscope.runs.sweep)."""
import dataclasses
from dataclasses import dataclass, field


@dataclass
class SweepResult:
    """One row per trial of the study: {"trial" (its number), "params" ({name: value}), "state"
    (complete, pruned, failed, running, waiting), "value" (its best `metric` over its epochs, None
    before its first), "epochs" (trained), "run" (its run folder, None when not made here)}."""
    study: str
    storage: str
    metric: str  # a train_log.csv column: val_acc (maximised) or val_loss (minimised)
    direction: str  # maximize | minimize
    params: list  # the searched names, in --param order
    trials: int  # the study's total
    rows: list
    best: int | None = None  # the number of the best complete trial
    figures: dict = field(default_factory=dict)  # name -> PNG path
    notes: list = field(default_factory=list)  # figures not drawn, trials running elsewhere

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
