"""Hyperparameter sweeps on Optuna: `cnnscope sweep MODEL --trials N --param NAME=KIND:ARGS ...`.

The study (TPE sampler, median pruner) lives in a storage: by default the SQLite file study.db in
the sweep's folder (reports/<name>/), or any database URL Optuna takes, which several processes or
machines can share: each asks the study for the next trial, so `trials` is the study's total, and
the same command after a stop finishes what is left. A trial of this folder that was stopped (or
whose process died) is taken up again first: resumed from its checkpoint, or started again.

Every trial is an ordinary run folder, <sweep>/trial-NNN, trained by runs.train with the trial's
values over the sweep's training options, and evaluated on test without the curves and sample grids
(seconds a trial that few look at; `cnnscope evaluate` draws them). Each epoch's metric goes to the study (TrialReport, a
callback on rank 0 of the trial's processes); a trial the pruner stops ends after that epoch as a
finished run and is recorded as pruned. The sweep writes trials.md and trials.json (every trial:
its values, state, best metric and run folder) and Optuna's figures under <sweep>/plots/.
"""
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cnnscope.core.callbacks import Callback
from cnnscope.core.sweep import SweepResult
from cnnscope.core.training import Loop, StopRequest
from cnnscope.errors import CnnscopeError, RunError
from cnnscope.files import atomic_write_text, make_dirs, writing_into
from cnnscope.render.progress import SILENT
from cnnscope.runs import launch, run_folder, runfiles
from cnnscope.runs.sweep_params import Param, check_params, with_values
from cnnscope.runs.train import run_training, training_options

# options that may differ between the processes of one sweep (where and how, not what is trained)
RUNTIME_OPTIONS = ("data_dir", "device", "amp", "channels_last", "compile", "save_every", "tensorboard")
WHERE = ("out", "name", "source")  # each trial's own
SWEEP_ENTRIES = ("study.db", "trials.md", "trials.json", "plots")  # what the sweep writes into its folder


@dataclass
class Sweep:
    params: list[Param]
    trials: int  # the study's total
    settings: dict  # run_training's keywords for every trial, before its values (with procs and reporter)
    out: str = "reports"
    name: str | None = None  # the sweep folder's and the study's; default: sweep-<the model's name>
    metric: str = "val_acc"  # a train_log.csv column: *_acc maximised, *_loss minimised
    storage: str | None = None  # a database URL; default: sqlite in the folder
    sampler_seed: int | None = None
    prune: bool = True
    prune_startup: int = 5  # complete trials before the pruner prunes
    prune_warmup: int = 0  # epochs every trial trains before it can be pruned
    trust_spec: bool = False
    reporter: object = field(default=SILENT)

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"

    @property
    def direction(self) -> str:
        return "minimize" if self.metric.endswith("loss") else "maximize"

    def pruner_args(self) -> dict:
        return {"prune": self.prune, "startup": self.prune_startup, "warmup": self.prune_warmup}


def make_pruner(prune: bool, startup: int, warmup: int):
    """The median pruner: a trial whose best metric so far is worse than the median of the complete
    trials' at the same epoch stops, once `startup` trials are complete and after `warmup` epochs."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup + 1) if prune \
        else optuna.pruners.NopPruner()


@contextmanager
def quiet_optuna():
    """Optuna's INFO lines (a trial asked, told) are the sweep's own lines here."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


class TrialReport(Callback):
    """Each epoch's metric of the trial's runs.training_run.TrainingRun `run` to the study's trial,
    from rank 0; the pruner's answer to every rank. A pruned trial ends after that epoch
    (loop.stopped = "pruned"), marked with user attr pruned_at. Made on each rank by launch.call
    from the job run_trial gives run_training."""

    def __init__(self, run, storage: str, study: str, trial_id: int, metric: str, pruner: dict):
        self.epochs = run.opts.recipe.epochs
        self.storage, self.study, self.trial_id, self.metric, self.pruner = storage, study, trial_id, metric, pruner
        self.trial = None

    def on_train_start(self, loop: Loop) -> None:
        if loop.ddp.is_main:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.load_study(study_name=self.study, storage=self.storage, pruner=make_pruner(**self.pruner))
            self.trial = optuna.Trial(study, self.trial_id)

    def on_epoch_end(self, loop: Loop, row: dict, improved: bool) -> None:
        prune = False
        if self.trial is not None:
            self.trial.report(row[self.metric], row["epoch"])
            prune = loop.state.epoch < self.epochs and self.trial.should_prune()
            if prune:
                self.trial.set_user_attr("pruned_at", row["epoch"])
        if loop.ddp.any_rank(prune)[0]:
            loop.stopped = "pruned"


# ---- the study ----------------------------------------------------------------------------------

def what_is_trained(sweep: Sweep) -> dict:
    """What every process of the sweep must agree on: the model's options (without where and how
    they run) and the search. Checks the params against the options' recipe; names the sweep
    after the model when it has no name."""
    settings = {k: v for k, v in sweep.settings.items() if k not in ("procs", "reporter")}
    opts, _, _ = training_options(trust_spec=sweep.trust_spec, **settings)
    check_params(sweep.params, sweep.settings, opts.recipe)
    sweep.name = run_folder.checked_name(sweep.name) if sweep.name is not None else f"sweep-{opts.name}"
    options = {k: v for k, v in opts.to_json().items() if k not in RUNTIME_OPTIONS + WHERE}
    return {"options": options, "params": [p.text for p in sweep.params], "metric": sweep.metric}


def open_study(sweep: Sweep):
    """The sweep's study, made on first use; one made by another search is refused."""
    from sqlalchemy.exc import SQLAlchemyError

    agreed = json.loads(json.dumps(what_is_trained(sweep)))  # as the storage gives it back
    refuse_links(sweep.folder)
    if sweep.storage is None:
        make_dirs(sweep.folder)
    try:
        study = create_study(sweep)
    except (ImportError, ValueError, RuntimeError, SQLAlchemyError) as e:  # a bad URL, no driver, a refusal
        raise CnnscopeError(f"Could not open the study {sweep.folder.name!r} in {sweep.storage_url}: "
                            f"{' '.join(str(e).split())[:300]}. Give a database URL Optuna takes (e.g. "
                            "sqlite:///path/study.db, postgresql://...).", arguments=("storage",)) from None
    saved = study.user_attrs.get("cnnscope")
    if saved is None:
        study.set_user_attr("cnnscope", agreed)
    elif saved != agreed:
        differ = [k for k in ("params", "metric") if saved.get(k) != agreed[k]]
        differ += [k for k in sorted(set(saved["options"]) | set(agreed["options"]))
                   if saved["options"].get(k) != agreed["options"].get(k)]
        raise RunError(
            f"The study {sweep.folder.name!r} in {sweep.storage_url} was started with other settings "
            f"({', '.join(differ)} differ): a study goes on only with the model, options, params and metric it "
            "began with. Give the same ones, or start another sweep (another name).", arguments=("name",))
    return study


def refuse_links(folder: Path) -> None:
    """A RunError naming the symbolic links where the sweep writes: its folder, the entries of
    SWEEP_ENTRIES, the figures in plots/ and its trial folders (whose own entries each trial's run
    refuses: run_folder.refuse_links). SQLite writes study.db itself, so a link there is refused first."""
    entries = [folder, *(folder / name for name in SWEEP_ENTRIES), *folder.glob("plots/*"), *folder.glob("trial-*")] \
        if folder.is_dir() and not folder.is_symlink() else [folder]
    links = [path for path in entries if path.is_symlink()]
    if links:
        raise RunError(
            f"The sweep folder {folder} holds symbolic links where a sweep writes: "
            f"{', '.join(f'{p} -> {os.readlink(p)}' for p in links[:8])}. A sweep writes only regular files it made "
            "inside real folders, never through a link: remove the links, or give the sweep another name or out.",
            arguments=("out", "name"))


def create_study(sweep: Sweep, tries: int = 5):
    """The study, made or loaded. Processes that start together on a new database race to make its
    tables (the loser's CREATE TABLE fails): it tries again once the other has."""
    import optuna
    from sqlalchemy.exc import OperationalError

    for attempt in range(tries):
        try:
            return optuna.create_study(study_name=sweep.folder.name, storage=sweep.storage_url, load_if_exists=True,
                                       direction=sweep.direction, pruner=make_pruner(**sweep.pruner_args()))
        except OperationalError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def this_worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def stale(trial, folder: Path) -> bool:
    """A RUNNING trial of this sweep folder that no process trains any more: stopped, or its
    process (on this machine) is gone."""
    attrs = trial.user_attrs
    if attrs.get("run_dir") != str(folder / trial_name(trial.number)):
        return False
    worker = attrs.get("worker") or {}
    return attrs.get("stopped", False) or (worker.get("host") == socket.gethostname()
                                           and not _running(worker.get("pid", 0)))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return pid > 0


def trial_name(number: int) -> str:
    return f"trial-{number:03d}"


# ---- the trials ---------------------------------------------------------------------------------

def require_optuna():
    try:
        import optuna
    except ImportError:
        raise CnnscopeError("A sweep runs on Optuna, which is not installed. Install it with cnnscope's extra: pip "
                            "install 'cnnscope[sweep]' (or pip install optuna scikit-learn).") from None
    return optuna


def run_sweep(sweep: Sweep) -> tuple[SweepResult, int]:
    """Trials until the study holds `trials` of them (this process's and others'), or a stop.
    -> (the study's trials, exit code: 0, or launch.STOPPED_EXIT after a stop)."""
    optuna = require_optuna()
    with quiet_optuna():
        study = open_study(sweep)
        stop, code = StopRequest(), 0
        queue = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                 if stale(t, sweep.folder)]
        while not code:
            with stop.installed():  # the processes' launcher leaves its own handler behind: ours again
                if stop.requested or (not queue and len(study.get_trials(deepcopy=False)) >= sweep.trials):
                    break
                trial, resume = (queue.pop(0), True) if queue else (ask(study, sweep), False)
                try:
                    code = run_trial(study, sweep, trial, resume)
                except KeyboardInterrupt:
                    code = launch.STOPPED_EXIT
            if code == launch.STOPPED_EXIT:  # saved where it stopped: the next start takes it up
                set_attr(study, trial, "stopped", True)
        if stop.requested and not code:
            code = launch.STOPPED_EXIT
        return write_results(study, sweep), code


def ask(study, sweep: Sweep):
    """The study's next trial, its values drawn by TPE: with a sampler seed, seeded by (seed, the
    number of trials before it), so that a sweep stopped and resumed draws what it would have drawn."""
    import numpy as np
    import optuna

    if sweep.sampler_seed is not None:
        entropy = [sweep.sampler_seed, len(study.get_trials(deepcopy=False))]
        study.sampler = optuna.samplers.TPESampler(seed=int(np.random.SeedSequence(entropy).generate_state(1)[0]))
    trial = study.ask({p.name: p.distribution() for p in sweep.params})
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    return frozen


def set_attr(study, trial, key: str, value) -> None:
    import optuna

    optuna.Trial(study, trial._trial_id).set_user_attr(key, value)


def run_trial(study, sweep: Sweep, trial, resume: bool) -> int:
    """Train one trial (or take up a stale one: from its last.pth, else afresh) and tell the study
    how it ended. -> 0 to go on, or the exit code that ends the sweep."""
    import optuna

    folder = sweep.folder / trial_name(trial.number)
    for key, value in (("run_dir", str(folder)), ("worker", this_worker()), ("stopped", False)):
        set_attr(study, trial, key, value)
    values = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    which = "taken up again" if resume else f"{len(study.get_trials(deepcopy=False))} of {sweep.trials}"
    sweep.reporter.step(f"trial {trial.number} ({which}): {values} -> {folder}")
    report = {"target": f"{__name__}:TrialReport", "args": {
        "storage": sweep.storage_url, "study": sweep.folder.name, "trial_id": trial._trial_id,
        "metric": sweep.metric, "pruner": sweep.pruner_args()}}
    if "pruned_at" in trial.user_attrs:  # pruned, then stopped before its run ended: pruned it stays
        tell_outcome(study, sweep, trial.number, folder)
        return 0
    try:
        code = train_trial(sweep, folder, trial.params, resume, report)
    except CnnscopeError as e:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        set_attr(study, trial, "error", str(e))
        if not (folder / "config.json").is_file():
            raise  # it failed before training: every trial would
        sweep.reporter.step(f"trial {trial.number} failed: {e}")
        return 0
    if code == launch.STOPPED_EXIT:
        return code
    if code:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        return code
    tell_outcome(study, sweep, trial.number, folder)
    return 0


def train_trial(sweep: Sweep, folder: Path, values: dict, resume: bool, report: dict) -> int:
    settings = sweep.settings
    if resume and (folder / "checkpoints" / "last.pth").is_file():
        runtime = {k: settings.get(k) for k in RUNTIME_OPTIONS}
        return run_training(settings["model"], resume=str(folder), trust_spec=True, procs=settings["procs"],
                            reporter=settings["reporter"], callbacks=[report], figures=False, **runtime)
    return run_training(**{**with_values(settings, values), "out": str(sweep.folder), "name": folder.name},
                        trust_spec=sweep.trust_spec, overwrite=folder.exists(), callbacks=[report], figures=False)


def tell_outcome(study, sweep: Sweep, number: int, folder: Path) -> None:
    """Complete with its best metric over its epochs (train_log.csv), or pruned."""
    import optuna

    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    values = [row[sweep.metric] for row in runfiles.read_csv(folder / "train_log.csv", numeric=(sweep.metric,))]
    best = (max if sweep.direction == "maximize" else min)(values)
    if "pruned_at" in trial.user_attrs:
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
        sweep.reporter.step(f"trial {number} pruned after epoch {trial.user_attrs['pruned_at']}: "
                            f"{sweep.metric} {best:.4g}")
        return
    study.tell(number, best)
    sweep.reporter.step(f"trial {number} complete: {sweep.metric} {best:.4g} (best trial so far: "
                        f"{study.best_trial.number}, {study.best_value:.4g})")


# ---- the results --------------------------------------------------------------------------------

def sweep_result(study, sweep: Sweep) -> SweepResult:
    """Every trial of the study, as a row."""
    rows, notes = [], []
    pick = max if sweep.direction == "maximize" else min
    for t in study.get_trials(deepcopy=False):
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(t.state.name, t.state.name.lower())
        steps = t.intermediate_values
        run = t.user_attrs.get("run_dir")
        rows.append({"trial": t.number, "params": dict(t.params), "state": state,
                     "value": t.value if t.value is not None and state == "complete" else (
                         pick(steps.values()) if steps else None),
                     "epochs": max(steps) if steps else 0, "run": run if run and Path(run).is_dir() else None})
        if state == "running" and not stale(t, sweep.folder):
            worker = t.user_attrs.get("worker") or {}
            notes.append(f"trial {t.number} is still running (host {worker.get('host')}, pid {worker.get('pid')})")
    complete = [r for r in rows if r["state"] == "complete"]
    best = pick(complete, key=lambda r: r["value"])["trial"] if complete else None
    return SweepResult(sweep.folder.name, sweep.storage_url, sweep.metric, sweep.direction,
                       [p.name for p in sweep.params], sweep.trials, rows, best, notes=notes)


def write_results(study, sweep: Sweep) -> SweepResult:
    """trials.md, trials.json and the figures (plots/) in the sweep's folder."""
    from cnnscope import render
    from cnnscope.render.sweep import study_figures

    result = sweep_result(study, sweep)
    make_dirs(sweep.folder)
    with writing_into(sweep.folder):  # never through a link below it
        figures, notes = study_figures(study, sweep.folder / "plots", sweep.metric)
        result.figures, result.notes = figures, result.notes + notes
        atomic_write_text(sweep.folder / "trials.md", render.to_markdown(result))
        atomic_write_text(sweep.folder / "trials.json", json.dumps(render.to_json(result), indent=2) + "\n")
    return result
