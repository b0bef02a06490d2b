"""TensorBoard events of a run, read back with TensorBoard's own reader: the same numbers as
train_log.csv and metrics.json, every step once across a crash or a stop and --resume, the
hyperparameters of the HParams view, the figures and texts; inspections adding theirs. (Two processes
stopped by SIGTERM and resumed: test_train's SIGTERM test reads their events too.)"""
import csv
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cnnscope.cli import cli
from cnnscope.core.augment import AugmentSpec
from cnnscope.runs.recipes import Recipe
from conftest import LoaderAt, wrap_training_loaders

COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")
FIGURES = ("acc_curves", "loss_curves", "lr", "cm", "test_samples_grid", "misclassified_grid")


def events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps(acc, tag):
    return [e.step for e in acc.Scalars(tag)]


def read_log(run):
    with open(run / "train_log.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def check_events_mirror_the_run(run: Path, epochs: int, per_epoch: int) -> EventAccumulator:
    """Every optimizer step once, the lr of each as metrics.json has it, each epoch's row as
    train_log.csv has it, the final metrics, every recipe field as a hyperparameter, the figures
    and texts."""
    acc = events(run / "tensorboard")
    metrics, log = json.loads((run / "metrics.json").read_text()), read_log(run)
    total = epochs * per_epoch
    assert steps(acc, "train/loss") == steps(acc, "train/lr") == list(range(1, total + 1))
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx(metrics["lr_per_step"], rel=1e-5)
    assert len(log) == epochs
    for column in COLUMNS:
        scalars = acc.Scalars(f"epoch/{column}")
        assert [e.step for e in scalars] == [per_epoch * (i + 1) for i in range(epochs)]
        assert [e.value for e in scalars] == pytest.approx([row[column] for row in log], rel=1e-5, abs=1e-5)
    for name in ("best_val_acc", "best_epoch", "test_acc", "test_loss"):
        assert [(e.step, e.value) for e in acc.Scalars(f"final/{name}")] == [(total, pytest.approx(metrics[name]))]

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    fields = {f.name for f in dataclasses.fields(Recipe)} - {"augment"}
    fields |= {f"augment.{f.name}" for f in dataclasses.fields(AugmentSpec)}
    assert fields <= set(start.hparams) and {"model", "seed", "ctor.num_classes"} <= set(start.hparams)
    recipe = json.loads((run / "config.json").read_text())["options"]["recipe"]
    assert start.hparams["lr"].number_value == pytest.approx(recipe["lr"])
    assert start.hparams["optimizer"].string_value == recipe["optimizer"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {f"final/{k}" for k in
                                                             ("best_val_acc", "best_epoch", "test_acc", "test_loss",
                                                              "train_time_s")}

    assert {f"figures/{name}" for name in FIGURES} <= set(acc.Tags()["images"])
    image = acc.Images("figures/cm")[0]
    assert image.step == total and image.width > 100
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert texts["texts/rf/text_summary"] == (run / "rf.md").read_text()
    assert (run / "model_summary.txt").read_text().splitlines()[0] in texts["texts/model_summary/text_summary"]
    return acc


def crash():
    raise RuntimeError("the machine went away")


@pytest.fixture(scope="module")
def crashed_and_resumed(tiny_spec, tmp_path_factory):
    """3 epochs of 15 steps; a crash at step 28 (last.pth holds step 15, the events steps 1-25),
    then --resume: its writer purges steps 16-25 and writes 16-45."""
    from click.testing import CliRunner

    out, runner = tmp_path_factory.mktemp("tb"), CliRunner()
    args = ["train", tiny_spec, "--dataset", "fake", "--epochs", "3", "--batch-size", "32", "--device", "cpu",
            "--out", str(out), "--tensorboard"]
    with pytest.MonkeyPatch.context() as m:  # a crash, no stop request: the events since last.pth are on disk
        wrap_training_loaders(m, lambda loader: LoaderAt(loader, 1, 12, crash))
        crashed = runner.invoke(cli, args)
    assert isinstance(crashed.exception, RuntimeError), crashed.output
    run = out / "Tiny"
    before = events(run / "tensorboard")
    assert steps(before, "train/loss") == list(range(1, 26)) and steps(before, "epoch/val_acc") == [15]
    resumed = runner.invoke(cli, ["train", "--resume", str(run), "--device", "cpu", "--trust-spec"])
    assert resumed.exit_code == 0, resumed.output
    return run


def test_events_mirror_the_run_across_a_crash_and_resume(crashed_and_resumed):
    check_events_mirror_the_run(crashed_and_resumed, epochs=3, per_epoch=15)


def test_an_inspection_adds_its_figures_and_table_to_the_runs_events(runner, crashed_and_resumed):
    run = crashed_and_resumed
    result = runner.invoke(cli, ["attribute", str(run), "--method", "saliency", "--n", "2", "--tensorboard",
                                 "--trust-spec", "--format", "json"])
    assert result.exit_code == 0, result.output
    acc = events(run / "tensorboard")
    image = acc.Images("attribute/attributions")[0]
    assert image.step == 45 and image.width > 100
    table = acc.Tensors("attribute/report/text_summary")[0]
    text = table.tensor_proto.string_val[0].decode()
    assert table.step == 45 and "methods: Saliency" in text
    for image in json.loads(result.stdout)["images"]:  # the numbers the command printed
        assert f"| {image['index']} | {image['class']} | {image['pred_class']} | {image['prob']:.3f} |" in text


def test_the_erf_of_a_run_joins_its_events(runner, crashed_and_resumed):
    run = crashed_and_resumed
    result = runner.invoke(cli, ["rf", "--erf", str(run), "--erf-images", "4", "--tensorboard", "--trust-spec",
                                 "--device", "cpu", "--format", "json"])
    assert result.exit_code == 0, result.output
    acc = events(run / "tensorboard")
    image = acc.Images("erf/erf")[0]
    assert image.step == 45 and image.width > 100
    text = acc.Tensors("erf/report/text_summary")[0].tensor_proto.string_val[0].decode()
    erf = json.loads(result.stdout)["erf"]
    assert f"lies within {erf['radius95']:.1f} px of the centre" in text and "| RF_out |" in text
    no_run = runner.invoke(cli, ["rf", "basic", "--tensorboard"])
    assert no_run.exit_code == 2 and "give the run with --erf RUN" in no_run.output


def test_tensorboard_into_a_folder_of_ones_choice_and_spec_targets(runner, tmp_path, tiny_spec):
    result = runner.invoke(cli, ["sharing", "swrn", "--ctor", "depth=16", "--ctor", "width=1", "--tensorboard",
                                 "--format", "json", "--out", str(tmp_path / "plots")])
    assert result.exit_code == 2 and "has no run, so no events folder of its own" in result.output
    assert not (tmp_path / "plots").exists()  # refused before it ran
    folder = tmp_path / "tb"
    result = runner.invoke(cli, ["sharing", "swrn", "--ctor", "depth=16", "--ctor", "width=1", "--tensorboard",
                                 str(folder), "--format", "json", "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    acc = events(folder)
    assert acc.Tags()["images"] and all(t.startswith("sharing/") for t in acc.Tags()["images"])
    assert acc.Images(acc.Tags()["images"][0])[0].step == 0  # untrained: no steps


def test_events_are_never_written_through_a_link_below_the_run_folder(crashed_and_resumed, tmp_path):
    """TensorBoard's writer opens its files itself: a linked folder on the way to the events folder
    is refused before it opens one, and a planted link among the events stops a new run in the folder."""
    from contextlib import ExitStack

    from cnnscope.errors import RunError
    from cnnscope.runs import run_folder
    from cnnscope.runs.tensorboard import open_writer

    run, victim = tmp_path / "run", tmp_path / "victim"
    shutil.copytree(crashed_and_resumed, run)
    victim.mkdir()
    (run / "tb").symlink_to(victim)
    with pytest.raises(RunError, match="The TensorBoard folder .*/tb is a symbolic link"):
        open_writer(run / "tb" / "events", run)
    assert list(victim.iterdir()) == []
    event_file = next((run / "tensorboard").glob("events.out.tfevents.*"))
    event_file.unlink()
    event_file.symlink_to(victim / "theirs")
    with ExitStack() as held, pytest.raises(RunError, match=f"tensorboard/{event_file.name} -> {victim / 'theirs'}"):
        run_folder.claim(run, held, resuming=False, overwrite=True)
    assert event_file.is_symlink() and (run / "checkpoints" / "last.pth").is_file()  # nothing removed


def test_a_missing_tensorboard_package_is_exit_2_naming_the_extra(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    result = runner.invoke(cli, ["train", "basic", "--dataset", "fake", "--out", str(tmp_path), "--tensorboard"])
    assert result.exit_code == 2 and "pip install 'cnnscope[tensorboard]'" in result.output
    assert list(tmp_path.iterdir()) == []
