"""`cnnscope train --config FILE`: a run's config.json replays it bit for bit, YAML files with the
command line on top, --print-config, the trust rule for a file's model, and clear errors."""
import dataclasses
import json

import pytest
import torch

from cnnscope.cli import cli
from cnnscope.runs.checkpoint import load_checkpoint
from cnnscope.runs.config_file import OPTION_RULES, with_config
from cnnscope.runs.recipes import get_recipe
from cnnscope.runs.train_options import TrainOptions


def invoke(runner, args):
    result = runner.invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def printed(runner, *args) -> dict:
    result = invoke(runner, ["train", *args, "--print-config"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_runs_config_json_replays_it_to_the_same_weights(runner, tmp_path, tiny_spec):
    trained = invoke(runner, ["train", tiny_spec, "--dataset", "fake", "--epochs", "2", "--batch-size", "32",
                              "--seed", "5", "--lr", "0.05", "--augment", "cutout=8", "--device", "cpu",
                              "--out", tmp_path])
    assert trained.exit_code == 0, trained.output
    config = tmp_path / "Tiny" / "config.json"
    refused = invoke(runner, ["train", "--config", config, "--name", "replay"])  # a file's model is code from elsewhere
    assert refused.exit_code == 2 and "is not a zoo model" in refused.output and "--trust-spec" in refused.output
    assert not (tmp_path / "replay").exists()
    replayed = invoke(runner, ["train", "--config", config, "--name", "replay", "--trust-spec"])
    assert replayed.exit_code == 0, replayed.output
    for name in ("best.pth", "last.pth"):
        a, b = (load_checkpoint(tmp_path / run / "checkpoints" / name) for run in ("Tiny", "replay"))
        assert a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    options = [json.loads((tmp_path / run / "config.json").read_text())["options"] for run in ("Tiny", "replay")]
    assert {**options[0], "name": "replay"} == options[1]


def test_a_yaml_file_with_the_command_line_on_top(runner, tmp_path):
    (tmp_path / "run.yaml").write_text(
        "spec: basic\nseed: 7\ntrain_subset: 256\nrecipe:\n  dataset: fake\n  epochs: 3\n  lr: 5e-2\n"
        "  weight_decay: 1e-4\n  augment: {cutout: 0, hflip: 0.25}\nctor: {num_classes: 10}\n")
    options = printed(runner, "--config", tmp_path / "run.yaml", "--epochs", "2", "--augment", "hflip=0.5")
    recipe, basic = options["recipe"], get_recipe("basic")
    assert options["spec"] == "basic" and options["seed"] == 7 and options["train_subset"] == 256
    assert recipe["lr"] == 0.05 and recipe["weight_decay"] == 1e-4 and recipe["epochs"] == 2  # YAML's 5e-2 is a number
    assert recipe["augment"]["cutout"] == 0 and recipe["augment"]["hflip"] == 0.5
    assert recipe["augment"]["rotate"] == basic.augment.rotate and recipe["momentum"] == basic.momentum
    assert options["ctor"] == {"num_classes": 10}
    assert printed(runner, "tiny", "--config", tmp_path / "run.yaml")["spec"] == "tiny"  # MODEL named wins


def test_print_config_is_a_config_file(runner, tmp_path):
    options = printed(runner, "basic", "--dataset", "fake", "--epochs", "2", "--seed", "3", "--tensorboard")
    assert options["tensorboard"] == "tensorboard" and options["recipe"]["epochs"] == 2
    (tmp_path / "printed.json").write_text(json.dumps(options))
    assert printed(runner, "--config", tmp_path / "printed.json") == options
    assert set(options) == {f.name for f in dataclasses.fields(TrainOptions)} == set(OPTION_RULES)


def test_a_cpu_runs_process_count_comes_with_its_config(tmp_path):
    config = {"options": {"spec": "basic"}, "versions": {"cnnscope": "0"}, "device": "cpu", "world_size": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    given = {"model": None, "ctor": {}, "recipe_overrides": {}, "augment_overrides": {}, "procs": "auto"}
    assert with_config(tmp_path / "config.json", given)["procs"] == "2"
    assert with_config(tmp_path / "config.json", {**given, "procs": "1"})["procs"] == "1"
    (tmp_path / "gpu.json").write_text(json.dumps({**config, "device": "cuda:0"}))
    assert with_config(tmp_path / "gpu.json", given)["procs"] == "auto"  # torchrun's GPUs: the user starts them


@pytest.mark.parametrize("text, message", [
    ("spec: basic\nlrr: 0.1\n", "unknown option field(s) lrr"),
    ("spec: basic\nrecipe: {bogus: 1}\n", "unknown recipe field(s) recipe.bogus"),
    ("spec: basic\nrecipe: {augment: {cutot: 8}}\n", "unknown augmentation field(s) recipe.augment.cutot"),
    ("spec: basic\nrecipe: {lr: fast}\n", "field recipe.lr='fast' is not allowed: lr takes a number > 0"),
    ("spec: basic\nrecipe: {augment: {hflip: 2}}\n", "field recipe.augment.hflip=2 is not allowed"),
    ("spec: basic\nseed: x\n", "field seed='x' is not allowed: seed takes a whole number"),
    ("spec: basic\nval_split: 1.5\n", "field val_split=1.5 is not allowed"),
    ("spec: 3\n", "field spec=3 is not allowed: spec takes a string"),
    ("- basic\n", "holds list, not the fields of a run's options"),
    ("spec: [basic\n", "is not valid YAML"),
    ("recipe: {lr: 0.1}\n", "names no model (its spec field)"),
    ("spec: my_model.py:Net\n", "is not a zoo model"),
])
def test_bad_config_files_are_exit_2_naming_the_field(runner, tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    result = invoke(runner, ["train", "--config", tmp_path / "bad.yaml", "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_config_file_errors_of_the_file_itself(runner, tmp_path):
    missing = invoke(runner, ["train", "--config", tmp_path / "none.yaml"])
    assert missing.exit_code == 2 and "Could not read the configuration file" in missing.output
    (tmp_path / "bad.json").write_text("{'spec': 'basic'}")
    bad_json = invoke(runner, ["train", "--config", tmp_path / "bad.json"])
    assert bad_json.exit_code == 2 and "is not valid JSON" in bad_json.output
    both = invoke(runner, ["train", "--config", tmp_path / "bad.json", "--resume", tmp_path])
    assert both.exit_code == 2 and "--config starts a new run" in both.output
