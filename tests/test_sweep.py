"""`cnnscope sweep`: Optuna trials as run folders, pruning, a study that resumes to its total,
Optuna's figures, and bad params refused before anything trains."""
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from cnnscope.cli import cli
from cnnscope.errors import RunError
from cnnscope.runs.checkpoint import load_checkpoint
from cnnscope.runs.sweep_params import parse_param
from conftest import LoaderAt, wrap_training_loaders

# One searched value, a good lr and a useless one: the seeded TPE draws [0.1, 0.1, 1e-06, 0.1] for
# trials 0-3 (asserted below). The 1e-06 trial scores below the two complete trials before it at
# epoch 1, so the median pruner (active after 1 complete trial) stops it; the others train the
# same weights (same seed), equal to the median, which is not below it.
SEARCH = ["--param", "lr=choice:0.1,0.000001", "--sampler-seed", "2", "--prune-startup", "1"]
LRS = [0.1, 0.1, 1e-06, 0.1]


def sweep_args(spec, out, trials, *extra):
    return ["sweep", "--trials", str(trials), *SEARCH, "--out", str(out), "--name", "s", "--quiet", *extra, spec,
            "--dataset", "fake", "--epochs", "2", "--batch-size", "32", "--train-subset", "256", "--device", "cpu"]


def invoke(runner, args):
    result = runner.invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def sweep4(tiny_spec, tmp_path_factory):
    """A whole 4-trial sweep of the tiny model on fake data (2 epochs of 8 batches each)."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("sweep4")
    result = invoke(CliRunner(), sweep_args(tiny_spec, out, 4))
    assert result.exit_code == 0, result.output
    return out / "s", json.loads((out / "s" / "trials.json").read_text())


def read_log(run_dir):
    import csv

    with open(run_dir / "train_log.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_a_sweep_prunes_the_bad_trial_and_every_trial_is_a_run(sweep4):
    folder, table = sweep4
    rows = table["rows"]
    assert [r["trial"] for r in rows] == [0, 1, 2, 3] and table["trials"] == 4
    assert [r["params"]["lr"] for r in rows] == LRS
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned", "complete"]
    assert [r["epochs"] for r in rows] == [2, 2, 1, 2]
    for row in rows:
        run = folder / f"trial-{row['trial']:03d}"
        assert row["run"] == str(run)
        config = json.loads((run / "config.json").read_text())
        assert config["options"]["recipe"]["lr"] == row["params"]["lr"] and config["options"]["name"] == run.name
        log = read_log(run)
        assert len(log) == row["epochs"]  # the pruned trial stopped after its first epoch
        assert row["value"] == pytest.approx(max(r["val_acc"] for r in log), abs=1e-6)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["epochs"] == row["epochs"] and "test_acc" in metrics  # a finished run, evaluated
        assert sorted(p.name for p in (run / "plots").iterdir()) == ["cm.png"]  # no curves, no grids
    good = [r["value"] for r in rows if r["state"] == "complete"]
    assert len(set(good)) == 1 and rows[2]["value"] < good[0]
    assert table["best"] == 0 and table["metric"] == "val_acc" and table["direction"] == "maximize"

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert [t.intermediate_values for t in study.trials][2] == {1: rows[2]["value"]}
    assert study.trials[0].value == good[0]
    assert (folder / "trials.md").read_text().count("| pruned |") == 1
    for name in ("optimization_history", "parallel_coordinate"):
        assert table["figures"][name] == str(folder / "plots" / f"{name}.png")
        assert (folder / "plots" / f"{name}.png").stat().st_size > 10_000
    # the complete trials share one lr: no spread to explain, and the sweep says so
    assert "param_importances" not in table["figures"] and any("param_importances" in n for n in table["notes"])


def test_evaluate_draws_the_figures_a_trial_left_out(runner, sweep4):
    run = sweep4[0] / "trial-000"
    result = invoke(runner, ["evaluate", run, "--device", "cpu", "--trust-spec", "--quiet"])
    assert result.exit_code == 0, result.output
    for name in ("acc_curves", "loss_curves", "lr", "cm", "test_samples_grid", "misclassified_grid"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 10_000


def test_a_stopped_sweep_resumes_to_its_total_with_the_same_trials(runner, tmp_path, monkeypatch, tiny_spec, sweep4):
    """Stopped in its second trial, the same command takes that trial up from its checkpoint: the 2
    trials are the uninterrupted sweep's first 2, weights included."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = sweep_args(tiny_spec, tmp_path, 2, "--storage", storage)
    made = itertools.count()
    with monkeypatch.context() as m:  # Ctrl-C in the second trial's first epoch
        wrap_training_loaders(m, lambda loader: LoaderAt(loader, 0, 2) if next(made) == 1 else loader)
        stopped = invoke(runner, args)
    assert stopped.exit_code == 130, stopped.output
    assert "Stopped. The study keeps its trials; the same command goes on" in stopped.output
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    assert load_checkpoint(tmp_path / "s" / "trial-001" / "checkpoints" / "last.pth")["epoch"] == 1
    assert not (tmp_path / "s" / "study.db").exists()  # the study is where --storage says

    resumed = invoke(runner, args)
    assert resumed.exit_code == 0, resumed.output
    rows = json.loads((tmp_path / "s" / "trials.json").read_text())["rows"]
    whole = sweep4[1]["rows"][:2]
    strip = ("run",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows] == \
           [{k: v for k, v in r.items() if k not in strip} for r in whole]
    a = load_checkpoint(tmp_path / "s" / "trial-001" / "checkpoints" / "last.pth")["model"]
    b = load_checkpoint(sweep4[0] / "trial-001" / "checkpoints" / "last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2

    again = invoke(runner, args)  # the study is whole: nothing more to train
    assert again.exit_code == 0 and not (tmp_path / "s" / "trial-002").exists()


def test_a_study_goes_on_only_with_its_own_search(runner, tiny_spec, sweep4):
    folder = sweep4[0]
    args = sweep_args(tiny_spec, folder.parent, 5)
    args[args.index("lr=choice:0.1,0.000001")] = "lr=choice:0.1,0.2"
    result = invoke(runner, args)
    assert result.exit_code == 2 and "was started with other settings (params differ)" in result.output
    assert not (folder / "trial-004").exists()


@pytest.mark.parametrize("param, message", [
    ("lr", "NAME must be a recipe field"),
    ("lr=uniform:0.1:1", "the kind must be one of log, float, int, choice"),
    ("lr=log:0:1", "a log scale needs LOW > 0"),
    ("lr=log:0.5:0.1", "LOW (0.5) must be below HIGH (0.1)"),
    ("lr=float:a:b", "float takes two numbers LOW:HIGH"),
    ("epochs=int:1.5:3", "int takes two whole numbers LOW:HIGH"),
    ("lr=choice:", "choice takes distinct values"),
    ("lr=choice:0.1,0.1", "choice takes distinct values"),
    ("lrr=log:0.01:0.1", "lrr is no recipe field"),
    ("opt.lr=log:0.01:0.1", "NAME must be a recipe field, augment.<field> or ctor.<keyword>"),
    ("batch_size=float:32:64", "32.0 is not a value of batch_size"),
    ("augment.cutout_p=float:0:2", "2.0 is not a value of augment.cutout_p"),
])
def test_bad_params_are_exit_2_before_anything_trains(runner, tmp_path, param, message):
    result = invoke(runner, ["sweep", "--trials", "2", "--param", param, "--out", tmp_path, "basic",
                             "--dataset", "fake"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "A param is NAME=KIND:ARGS" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--param", "lr=log:0.01:0.1", "basic", "--lr", "0.1"], "lr is both fixed (=0.1) and searched"),
    (["basic"], "A sweep needs at least one param"),
    (["--param", "lr=log:0.01:0.1", "basic", "--resume", "x"], "--resume cannot be given to a sweep"),
    (["--param", "lr=log:0.01:0.1", "basic", "--overwrite"], "--overwrite cannot be given to a sweep"),
    (["--param", "lr=log:0.01:0.1", "basic", "--bogus"], "No such option '--bogus'"),
    (["--param", "lr=log:0.01:0.1"], "Name the MODEL to search"),
    (["--param", "lr=log:0.01:0.1", "--storage", "nosuchdb://x", "basic"], "Could not open the study"),
])
def test_bad_sweep_commands_are_exit_2(runner, tmp_path, args, message):
    result = invoke(runner, ["sweep", "--trials", "2", "--out", tmp_path, *args, "--dataset", "fake"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not any(tmp_path.rglob("trial-*"))


@pytest.mark.parametrize("entry", ["trials.md", "study.db", "plots", "trial-000"])
def test_a_link_in_the_sweep_folder_is_refused_before_anything_trains(runner, error_of, tmp_path, entry):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / entry).symlink_to(victim)
    result = invoke(runner, ["sweep", "--trials", "1", "--param", "lr=log:0.01:0.1", "--out", tmp_path, "--name", "s",
                             "basic", "--dataset", "fake"])
    assert isinstance(error_of(result), RunError) and f"{tmp_path / 's' / entry} -> {victim}" in result.output
    assert list(victim.iterdir()) == [] and sorted(p.name for p in (tmp_path / "s").iterdir()) == [entry]


def test_a_sweep_name_is_one_folder_name(runner, error_of, tmp_path):
    result = invoke(runner, ["sweep", "--trials", "1", "--param", "lr=log:0.01:0.1", "--out", tmp_path, "--name",
                             "../elsewhere", "basic", "--dataset", "fake"])
    assert isinstance(error_of(result), RunError) and error_of(result).arguments == ("name",)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_optuna_is_exit_2_naming_the_extra(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import fails as if not installed
    result = invoke(runner, ["sweep", "--trials", "2", "--param", "lr=log:0.01:0.1", "--out", tmp_path, "basic"])
    assert result.exit_code == 2 and "pip install 'cnnscope[sweep]'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_params_become_optuna_distributions():
    lr, bs, opt = (parse_param(t) for t in ("lr=log:1e-3:0.5", "batch_size=choice:64,128", "optimizer=choice:sgd,adamw"))
    assert lr.distribution() == optuna.distributions.FloatDistribution(1e-3, 0.5, log=True)
    assert bs.distribution() == optuna.distributions.CategoricalDistribution((64, 128))
    assert opt.values == ("sgd", "adamw")
    assert parse_param("epochs=int:2:6").distribution() == optuna.distributions.IntDistribution(2, 6)
    assert parse_param("augment.cutout=choice:0,8,16").name == "augment.cutout"


def test_the_figures_of_a_study_with_spread(tmp_path):
    """Optuna's three figures, the importances by a seeded fANOVA, once the trials differ."""
    from cnnscope.render.sweep import study_figures

    study = optuna.create_study(direction="maximize", study_name="spread")
    for i in range(6):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1, log=True),
                           "batch_size": optuna.distributions.CategoricalDistribution((64, 128))})
        study.tell(trial, 50 + 40 * math.log10(trial.params["lr"] * 1000) / 3 + i % 2)
    figures, notes = study_figures(study, tmp_path, "val_acc")
    assert notes == [] and sorted(figures) == ["optimization_history", "parallel_coordinate", "param_importances"]
    for path in figures.values():
        assert (tmp_path / os.path.basename(path)).stat().st_size > 10_000


@pytest.mark.slow
def test_two_processes_run_one_study_against_one_storage(tmp_path, tiny_spec):
    """Two sweeps started together on one --storage share the study: each asks for the next trial,
    every trial is trained once, and the study stops at its total (each may add one as they end
    together)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = [sys.executable, "-m", "cnnscope", "sweep", "--trials", "4", "--param", "lr=log:0.01:0.2", "--storage",
            storage, "--out", str(tmp_path), "--name", "s", "--quiet", tiny_spec, "--dataset", "fake", "--epochs", "2",
            "--batch-size", "32", "--train-subset", "256", "--device", "cpu"]
    workers = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=400) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, out + err
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert 4 <= len(trials) <= 5 and [t.number for t in trials] == list(range(len(trials)))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {w.pid for w in workers}  # both took trials
    for t in trials:
        assert len(read_log(tmp_path / "s" / f"trial-{t.number:03d}")) == max(t.intermediate_values)
