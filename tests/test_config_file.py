"""`cnnscope train --config FILE`: a run's config.json replays it bit for bit, YAML files with the
command line on top, --print-config, the trust rule for a file's model, and clear errors."""
import dataclasses
import json
import textwrap

import pytest
import torch
from PIL import Image

from cnnscope.cli import cli
from cnnscope.errors import CnnscopeError, TrustError
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
    ("spec: basic\nrecipe: {lr: fast}\n", "field recipe.lr='fast' is not allowed: lr takes a number in (0, 1e+06]"),
    ("spec: basic\nrecipe: {lr: .nan}\n", "field recipe.lr=nan is not allowed"),
    ("spec: basic\nrecipe: {augment: {hflip: 2}}\n", "field recipe.augment.hflip=2 is not allowed"),
    ("spec: basic\nseed: x\n", "field seed='x' is not allowed: seed takes a whole number"),
    ("spec: basic\nseed: -1\n", "field seed=-1 is not allowed: seed takes a whole number in [0, "),
    ("spec: basic\nseed: 9223372036854775808\n", "field seed=9223372036854775808 is not allowed"),
    ("spec: basic\nval_split: .nan\n", "field val_split=nan is not allowed"),
    ("spec: basic\nval_split: 1.5\n", "field val_split=1.5 is not allowed"),
    ("spec: 3\n", "field spec=3 is not allowed: spec takes a string"),
    ("- basic\n", "holds list, not the fields of a run's options"),
    ("spec: [basic\n", "is not valid YAML"),
    ("recipe: {lr: 0.1}\n", "names no model (its spec field)"),
    ("spec: my_model.py:Net\n", "is not a zoo model"),
])
def test_bad_config_files_are_exit_2_naming_the_field(runner, error_of, tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    result = invoke(runner, ["train", "--config", tmp_path / "bad.yaml", "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    error = error_of(result)
    if "zoo model" in message:  # a file's model that is code from elsewhere
        assert type(error) is TrustError
    else:
        assert type(error) is CnnscopeError and error.arguments == ("config",)


def test_config_file_errors_of_the_file_itself(runner, tmp_path):
    missing = invoke(runner, ["train", "--config", tmp_path / "none.yaml"])
    assert missing.exit_code == 2 and "Could not read the configuration file" in missing.output
    (tmp_path / "bad.json").write_text("{'spec': 'basic'}")
    bad_json = invoke(runner, ["train", "--config", tmp_path / "bad.json"])
    assert bad_json.exit_code == 2 and "is not valid JSON" in bad_json.output
    both = invoke(runner, ["train", "--config", tmp_path / "bad.json", "--resume", tmp_path])
    assert both.exit_code == 2 and "--config starts a new run" in both.output


# A model whose flatten is a view: channels_last batches make it fail, so its runs train on contiguous
# ones and record why in config.json (contiguous_because).
VIEW_MODEL = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F


    class ViewNet(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 2 * 2, num_classes)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.conv(x), 2)
            return self.fc(x.view(x.size(0), -1))
''')


def test_a_tree_runs_config_json_with_its_fitted_batch_and_memory_format_replays_it(runner, tmp_path):
    """A run on a small image tree (its batch fitted to the tree: options.adapted) of a model that
    trains on contiguous batches (contiguous_because): its config.json replays it to the same weights,
    the same recipe and the same record; its --print-config goes round through --config."""
    for split, n in (("train", 12), ("test", 3)):
        for c, colour in enumerate(((200, 0, 0), (0, 200, 0), (0, 0, 200))):
            (tmp_path / "tree" / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), tuple(max(0, v - 9 * i) for v in colour)).save(
                    tmp_path / "tree" / split / f"c{c}" / f"{i}.png")
    (tmp_path / "model").mkdir()  # apart from the runs: a run copies the .py files beside the model's
    (tmp_path / "model" / "view_net.py").write_text(VIEW_MODEL)
    args = [f"{tmp_path / 'model' / 'view_net.py'}:ViewNet", "--dataset", tmp_path / "tree", "--epochs", "1", "--seed", "2",
            "--data-dir", tmp_path / "data", "--out", tmp_path / "runs"]
    options = printed(runner, *args)
    assert options["adapted"].startswith("A small tree") and options["recipe"]["batch_size"] < 128
    (tmp_path / "printed.json").write_text(json.dumps(options))
    assert printed(runner, "--config", tmp_path / "printed.json", "--trust-spec") == options

    trained = invoke(runner, ["train", *args, "--name", "first"])
    assert trained.exit_code == 0, trained.output
    config = tmp_path / "runs" / "first" / "config.json"
    replayed = invoke(runner, ["train", "--config", config, "--name", "replay", "--trust-spec"])
    assert replayed.exit_code == 0, replayed.output
    first, replay = (json.loads((tmp_path / "runs" / run / "config.json").read_text()) for run in ("first", "replay"))
    assert first["contiguous_because"].startswith("its forward fails on channels_last batches only")
    assert replay["contiguous_because"] == first["contiguous_because"] and replay["channels_last"] is False
    assert replay["options"] == {**first["options"], "name": "replay"} and first["options"]["adapted"]
    a, b = (load_checkpoint(tmp_path / "runs" / run / "checkpoints" / "last.pth") for run in ("first", "replay"))
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
