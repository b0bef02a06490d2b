"""Files from elsewhere run no code: a SPEC read from a checkpoint, a run's training configuration or a
README marker is built only if it is a zoo model, or when the user allows it (--trust-spec) or names
that SPEC on the command line. Refusals are exit 2, name the code that would run, and run nothing."""
import json
import textwrap

import pytest
import torch

from cnnscope import zoo
from cnnscope.runs import train_options
from cnnscope.runs.checkpoint import load_run_model, save_checkpoint
from cnnscope.cli import cli
from cnnscope.runs.datasets import load_dataset
from cnnscope.errors import SpecError, TrustError
from cnnscope.runs.spec import build_model, check_file_spec

# A user's model file whose top-level code leaves a mark: importing it at all is running it.
MODEL_FILE = textwrap.dedent('''
    import pathlib

    import torch.nn as nn

    pathlib.Path(__file__).with_name("IMPORTED").touch()


    class Small(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(4, num_classes))

        def forward(self, x):
            return self.body(x)
''')


def user_model(folder):
    """path/small.py:Small, a user's model file in `folder` (not imported yet)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "small.py").write_text(MODEL_FILE)
    return f"{folder / 'small.py'}:Small"


def save_run(run, spec, ctor, state_dict):
    """A run folder whose checkpoint names `spec`, as `cnnscope train` saves one (fake data), with
    the training state that `train --resume` needs."""
    fake = load_dataset("fake")
    options = train_options.new_options("basic", recipe_overrides={"dataset": "fake"}).to_json()
    options.update(spec=spec, ctor=ctor)
    path = run / "checkpoints" / "last.pth"
    save_checkpoint({"model_spec": spec, "ctor": ctor, "model": state_dict, "dataset": "fake",
                     "classes": fake.classes, "mean": fake.mean, "std": fake.std, "optimizer": {},
                     "config": {"options": options, "world_size": 1}}, path)
    return path


def invoke(runner, *args):
    result = runner.invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


# ---- a checkpoint -------------------------------------------------------------------------------

RUN_COMMANDS = {
    "evaluate": ["evaluate", "{run}"],
    "gates": ["gates", "{run}"],
    "sharing": ["sharing", "{run}"],
    "attribute": ["attribute", "{run}"],
    "rf --erf": ["rf", "--erf", "{run}"],
    "train --resume": ["train", "--resume", "{run}"],
}


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_evil_checkpoint_runs_no_code(runner, error_of, tmp_path, command):
    pwned = tmp_path / "PWNED"
    ckpt = save_run(tmp_path / "run", "os:system", {"command": f"touch {pwned}"}, {})

    result = invoke(runner, *(a.format(run=ckpt) for a in RUN_COMMANDS[command]))

    assert isinstance(error_of(result), TrustError)  # and what would have run is what the message names:
    message = " ".join(result.stderr.split())
    assert "'os:system'" in message and f"os.system(command='touch {pwned}')" in message
    assert str(ckpt) in message and "--trust-spec" in message
    assert not pwned.exists()


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_user_model_file_of_a_checkpoint_is_not_even_imported(runner, tmp_path, command):
    spec = user_model(tmp_path / "elsewhere")
    ckpt = save_run(tmp_path / "run", spec, {"num_classes": 10}, {})

    result = invoke(runner, *(a.format(run=ckpt) for a in RUN_COMMANDS[command]))

    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert f"import and execute the Python file {tmp_path / 'elsewhere' / 'small.py'}" in message
    assert "Small(num_classes=10)" in message and "--trust-spec" in message
    assert not (tmp_path / "elsewhere" / "IMPORTED").exists()


def test_zoo_checkpoint_needs_no_flag(runner, tmp_path):
    torch.manual_seed(0)
    ckpt = save_run(tmp_path / "run", "basic", {}, zoo.build("basic").state_dict())
    result = invoke(runner, "evaluate", ckpt, "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "basic"


def trained_weights_of(spec_in_another_folder):
    torch.manual_seed(0)
    return build_model(spec_in_another_folder, {"num_classes": 10}).state_dict()


def test_user_model_runs_when_trusted_or_named(runner, tmp_path):
    state = trained_weights_of(user_model(tmp_path / "source"))
    spec = user_model(tmp_path / "mine")
    ckpt = save_run(tmp_path / "run", spec, {"num_classes": 10}, state)

    assert invoke(runner, "evaluate", ckpt).exit_code == 2
    assert not (tmp_path / "mine" / "IMPORTED").exists()
    trusted = invoke(runner, "evaluate", ckpt, "--trust-spec", "--format", "json", "--device", "cpu")
    assert trusted.exit_code == 0, trusted.output
    assert json.loads(trusted.stdout)["model"] == spec and (tmp_path / "mine" / "IMPORTED").exists()

    named = invoke(runner, "rf", spec, "--erf", ckpt, "--erf-images", "2", "--format", "json")
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout)["erf"]["images"] == 2
    sharing = invoke(runner, "sharing", ckpt, "--trust-spec")
    assert sharing.exit_code == 2 and "no soft-shared layers" in sharing.stderr  # built, then inspected


def test_library_refuses_unless_trusted(tmp_path):
    state = trained_weights_of(user_model(tmp_path / "source"))
    spec = user_model(tmp_path / "mine")
    ckpt = save_run(tmp_path / "run", spec, {"num_classes": 10}, state)
    with pytest.raises(TrustError) as refused:
        load_run_model(ckpt)
    assert refused.value.arguments == ("trust_spec",)  # the library speaks of its argument, not a flag
    assert not (tmp_path / "mine" / "IMPORTED").exists()
    model, _, _ = load_run_model(ckpt, trust_spec=True)
    torch.testing.assert_close(model.state_dict(), state)


@pytest.mark.parametrize("spec, ctor, kind", [
    (["os", "system"], {}, SpecError),  # not a SPEC string and keywords: not written by cnnscope
    ("basic", ["width", 2], SpecError),
    ("basic", {1: 2}, SpecError),
    ("pkg.mod:attr", {}, TrustError),
])
def test_check_file_spec_refusals(spec, ctor, kind):
    with pytest.raises(kind) as error:
        check_file_spec(spec, ctor, "Checkpoint x.pth")
    if kind is TrustError:  # it says what would run, and where the SPEC was read
        assert str(error.value).startswith("Checkpoint x.pth asks to build the model 'pkg.mod:attr'")
        assert "import the module pkg.mod and call pkg.mod.attr()" in str(error.value)


def test_registry_names_pass_and_resolve_through_the_zoo_alone():
    check_file_spec("egrr", {"num_classes": 3}, "Checkpoint x.pth")
    check_file_spec("no_such_model", {}, "Checkpoint x.pth")  # the registry refuses it, importing nothing
    with pytest.raises(SpecError):  # no such model
        build_model("no_such_model", {}, read_from="Checkpoint x.pth")


# ---- a run's training configuration (train --resume) --------------------------------------------

def test_resume_of_a_user_model_needs_trust_or_the_named_spec(runner, error_of, tmp_path):
    spec = user_model(tmp_path / "mine")
    trained = invoke(runner, "train", spec, "--dataset", "fake", "--epochs", "1", "--batch-size", "128",
                     "--device", "cpu", "--procs", "1", "--out", tmp_path / "reports", "--name", "small")
    assert trained.exit_code == 0, trained.output
    run = tmp_path / "reports" / "small"

    refused = invoke(runner, "train", "--resume", run)
    assert isinstance(error_of(refused), TrustError)
    message = " ".join(refused.stderr.split())
    assert f"The training configuration in {run / 'checkpoints' / 'last.pth'}" in message
    assert f"{spec!r}" in message and "--trust-spec" in message
    for allowed in (["train", "--resume", run, "--trust-spec"], ["train", spec, "--resume", run]):
        result = invoke(runner, *allowed)
        assert result.exit_code == 0, result.output


def test_printed_resume_command_trusts_only_the_users_own_model(tmp_path):
    for spec, trusted in (("basic", False), (user_model(tmp_path), True)):
        opts = train_options.new_options(spec, recipe_overrides={"dataset": "fake"})
        command = train_options.resume_command(tmp_path / "run", opts, 1)
        assert command.endswith("--trust-spec") == trusted, command


# ---- a README marker ----------------------------------------------------------------------------

def test_readme_marker_runs_no_code(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the payload touches PWNED in the current folder
    readme = tmp_path / "README.md"
    text = "# x\n<!-- RF spec=os:system ctor='command=\"touch${IFS}PWNED\"' -->\n<!-- /RF -->\n"
    readme.write_text(text)

    result = invoke(runner, "update-readme", readme, "--check")

    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert f"{readme}:2" in message and "os.system(command='touch${IFS}PWNED')" in message
    assert "--trust-spec" in message
    assert not (tmp_path / "PWNED").exists() and readme.read_text() == text


def test_readme_marker_with_a_model_file_needs_trust(runner, tmp_path):
    user_model(tmp_path / "nets")
    readme = tmp_path / "README.md"
    text = '<!-- RF spec=nets/small.py:Small title="RF: Small" -->\n<!-- /RF -->\n'
    readme.write_text(text)

    refused = invoke(runner, "update-readme", readme, "--check")
    assert refused.exit_code == 2 and "--trust-spec" in refused.stderr
    assert f"file {tmp_path / 'nets' / 'small.py'}" in " ".join(refused.stderr.split())
    assert not (tmp_path / "nets" / "IMPORTED").exists() and readme.read_text() == text

    stale = invoke(runner, "update-readme", readme, "--check", "--trust-spec")
    assert stale.exit_code == 1 and "+### RF: Small" in stale.stdout
    written = invoke(runner, "update-readme", readme, "--trust-spec")
    assert written.exit_code == 0 and "**Final RF:** 3 " in readme.read_text()

    missing = tmp_path / "MISSING.md"
    missing.write_text("<!-- RF spec=nets/missing.py:Net -->\n<!-- /RF -->\n")
    result = invoke(runner, "update-readme", missing, "--trust-spec")
    assert result.exit_code == 2 and "missing.py does not exist" in result.stderr


# ---- help ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["summary", "rf", "train", "bench", "gates"])
def test_help_says_a_spec_file_is_executed(runner, command):
    text = " ".join(invoke(runner, command, "--help").output.split())
    assert "is imported, which executes its code" in text


@pytest.mark.parametrize("command", ["evaluate", "gates", "sharing", "attribute", "rf", "train", "update-readme"])
def test_help_of_run_commands_explains_trust_spec(runner, command):
    text = " ".join(invoke(runner, command, "--help").output.split())
    assert "--trust-spec" in text and "imported and executed" in text
