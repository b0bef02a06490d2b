"""Files from elsewhere run no code: a SPEC read from a checkpoint, a run's training configuration or a
README marker is built only if it is a zoo model, or when the user allows it (--trust-spec) or names
that SPEC on the command line. Refusals are exit 2, name the code that would run, and run nothing."""
import hashlib
import json
import shutil
import textwrap

import pytest
import torch

from cnnscope import zoo
from cnnscope.runs import train_options
from cnnscope.runs.checkpoint import load_run_model, save_checkpoint
from cnnscope.cli import cli
from cnnscope.runs.datasets import load_dataset
from cnnscope.errors import CnnscopeWarning, SpecError, TrustError
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
    (run / ".cnnscope.lock").touch()  # a run folder, which the commands write into
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
    assert f"'{run.resolve() / 'model_source' / 'small.py'}:Small'" in message and "--trust-spec" in message
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


# ---- planted symbolic links: a command writes and deletes only its own regular files -----------------
#
# One tiny trained run (basic, 64 fake images, one epoch) is copied per case; an entry of the copy is
# replaced by a link to a victim outside the run (a file, or a folder holding a copy of what the entry
# held, so that reading through it still works). Every command that writes into a run folder must
# refuse with exit 2, name the entry, and leave the victim byte for byte as it was.

TRAIN_TINY = ["--dataset", "fake", "--epochs", "1", "--train-subset", "64", "--batch-size", "32", "--procs", "1",
              "--device", "cpu"]
WRITING_COMMANDS = {
    "evaluate": ["evaluate", "{run}", "--device", "cpu"],
    "gates": ["gates", "{run}", "--n", "1"],
    "sharing": ["sharing", "{run}"],
    "attribute": ["attribute", "{run}", "--n", "1", "--method", "saliency"],
    "rf --erf": ["rf", "basic", "--erf", "{run}", "--erf-images", "2"],
    "augment": ["augment", "{run}", "--n", "2"],
    "export": ["export", "{run}"],
    "train --resume": ["train", "--resume", "{run}", "--epochs", "2"],
    "train --overwrite": ["train", "basic", *TRAIN_TINY, "--out", "{out}", "--name", "run", "--overwrite"],
}
RUN_ENTRIES = ["classification_report.md", "classification_report.csv", "confusion_matrix.csv", "metrics.json",
               "config.json", "train_log.csv", "model_summary.txt", "rf.md", ".cnnscope.lock", "plots",
               "plots/cm.png", "checkpoints", "checkpoints/last.pth", "model_source", "export", "tensorboard"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("tiny_run")
    result = invoke(CliRunner(), "train", "basic", *TRAIN_TINY, "--out", out, "--name", "run")
    assert result.exit_code == 0, result.output
    return out / "run"


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def plant(run, entry, victims):
    """Replace `entry` of the run by a link to a victim outside it; the victim's folder."""
    path = run / entry
    victim = victims / entry.replace("/", "_")
    if path.is_dir():  # a folder: the victim holds a copy of it (so reading through the link works) and more
        shutil.copytree(path, victim)
        shutil.rmtree(path)
    else:  # a file (or an entry the run has not written yet): the victim is someone else's file
        victim.parent.mkdir(parents=True, exist_ok=True)
        if entry.endswith((".pth", ".png")) and path.is_file():
            shutil.copy(path, victim)
        elif entry in ("model_source", "export", "tensorboard"):
            victim.mkdir()
        else:
            victim.write_text("the victim's own file\n")
        path.unlink(missing_ok=True)
    if victim.is_dir():
        (victim / "victim.txt").write_text("the victim's own file\n")
    path.symlink_to(victim)
    return victim


@pytest.mark.parametrize("entry", RUN_ENTRIES)
@pytest.mark.parametrize("command", WRITING_COMMANDS)
def test_a_planted_link_in_a_run_folder_is_refused_and_the_victim_untouched(runner, tiny_run, tmp_path, command,
                                                                           entry):
    run = tmp_path / "reports" / "run"
    shutil.copytree(tiny_run, run)
    victims = tmp_path / "victims"
    victims.mkdir()
    victim = plant(run, entry, victims)
    before = snapshot(victims)

    result = invoke(runner, *(a.format(run=run, out=run.parent) for a in WRITING_COMMANDS[command]))

    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "symbolic link" in message and f"{entry} -> {victim}" in message, message
    assert snapshot(victims) == before and (run / entry).is_symlink()


def test_a_linked_entry_in_an_output_folder_is_refused(runner, tiny_run, tmp_path):
    victim = tmp_path / "victim.md"
    victim.write_text("the victim's own file\n")
    combined = tmp_path / "combined"
    combined.mkdir()
    (combined / "summary.md").symlink_to(victim)
    result = invoke(runner, "compare", tiny_run, "--out", combined)
    assert result.exit_code == 2
    assert f"{combined / 'summary.md'} is a symbolic link (to {victim})" in " ".join(result.stderr.split())
    assert victim.read_text() == "the victim's own file\n"


# ---- the image cache: its folder and files are cnnscope's ---------------------------------------------

CACHE_ENTRIES = ["the cache folder", "*.u8", "*.json", "*.stats-0.1.json"]


@pytest.fixture(scope="module")
def cached_tree(tmp_path_factory):
    """An image-folder tree of 2 x 6 tiny PNGs, decoded once into its cache."""
    from PIL import Image

    from cnnscope.runs.datasets import load_dataset

    tree = tmp_path_factory.mktemp("tree")
    for name in ("ant", "bee"):
        (tree / name).mkdir()
        for i in range(6):
            Image.new("RGB", (8, 8), (40 * i, 100 if name == "ant" else 200, 0)).save(tree / name / f"{i}.png")
    load_dataset(str(tree), tree / "data")
    return tree


@pytest.mark.parametrize("entry", CACHE_ENTRIES)
def test_a_planted_link_in_the_image_cache_is_refused_and_the_victim_untouched(runner, cached_tree, tmp_path, entry):
    tree = tmp_path / "tree"
    shutil.copytree(cached_tree, tree, symlinks=True)
    cache = tree / ".cnnscope-cache"
    victim = tmp_path / "victim"
    if entry == "the cache folder":
        shutil.copytree(cache, victim)
        shutil.rmtree(cache)
        linked = cache
    else:
        (linked,) = [p for p in cache.glob(entry) if not p.name.endswith(".stats-0.1.json") or "stats" in entry]
        victim.write_bytes(linked.read_bytes())
        linked.unlink()
    linked.symlink_to(victim)
    before = snapshot(tmp_path / "victim") if victim.is_dir() else victim.read_bytes()

    result = invoke(runner, "augment", "basic", "--dataset", tree, "--data-dir", tmp_path / "data", "--n", "2",
                    "--out", tmp_path / "out")

    assert result.exit_code == 2, result.output
    assert f"{linked} is a symbolic link" in " ".join(result.stderr.split())
    assert (snapshot(victim) if victim.is_dir() else victim.read_bytes()) == before


def test_a_tampered_cache_is_decoded_again(runner, cached_tree, tmp_path):
    """Rows overwritten with 0xFF (same size): the SHA-256 in the header no longer matches."""
    from cnnscope.runs.datasets import load_dataset

    tree = tmp_path / "tree"
    shutil.copytree(cached_tree, tree)
    good = load_dataset(str(tree), tmp_path / "data").train.images.clone()
    (u8,) = (tree / ".cnnscope-cache").glob("*.u8")
    u8.write_bytes(b"\xff" * u8.stat().st_size)
    with pytest.warns(CnnscopeWarning, match="does not match the SHA-256 it was written with"):
        again = load_dataset(str(tree), tmp_path / "data")
    assert torch.equal(again.train.images, good) and u8.read_bytes() != b"\xff" * u8.stat().st_size


# ---- a checkpoint outside any run: its folder is left alone -----------------------------------------

def test_evaluate_of_a_checkpoint_outside_a_run_writes_into_its_own_folder(runner, tiny_run, tmp_path, monkeypatch):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.pth", downloads / "model.pth")
    (downloads / "classification_report.md").write_text("the user's own report\n")
    (downloads / "metrics.json").write_text('{"mine": 1}\n')
    before = snapshot(downloads)
    monkeypatch.chdir(tmp_path)

    result = invoke(runner, "evaluate", downloads / "model.pth", "--device", "cpu", "--format", "json")
    assert result.exit_code == 0, result.output
    assert snapshot(downloads) == before
    out = tmp_path / "reports" / "model-checkpoint"
    assert json.loads((out / "metrics.json").read_text())["test_acc"] == json.loads(result.stdout)["test_acc"]
    assert (out / "plots" / "cm.png").is_file() and (out / "classification_report.md").is_file()

    named = invoke(runner, "evaluate", downloads / "model.pth", "--device", "cpu", "--out", tmp_path / "mine")
    assert named.exit_code == 0 and (tmp_path / "mine" / "confusion_matrix.csv").is_file()
    assert snapshot(downloads) == before


# ---- --trust-spec runs only what it names ---------------------------------------------------------------

@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """A trained run of a user's model file: it keeps a copy in model_source/."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("user_run")
    spec = user_model(root / "mine")
    result = invoke(CliRunner(), "train", spec, *TRAIN_TINY, "--out", root / "reports", "--name", "small")
    assert result.exit_code == 0, result.output
    run = root / "reports" / "small"
    # train imported the user's file once; its test evaluation took that model, not one built from the copy
    assert (root / "mine" / "IMPORTED").exists() and not (run / "model_source" / "IMPORTED").exists()
    return run


def test_the_refusal_names_the_copy_that_would_run(runner, user_run, tmp_path):
    run = tmp_path / "small"
    shutil.copytree(user_run, run)
    for args in (["evaluate", run], ["train", "--resume", run, "--epochs", "2"]):
        refused = invoke(runner, *args)
        assert refused.exit_code == 2
        message = " ".join(refused.stderr.split())
        assert f"import and execute the Python file {run.resolve() / 'model_source' / 'small.py'}" in message
        assert "--trust-spec" in message and not (run / "model_source" / "IMPORTED").exists()
    trusted = invoke(runner, "evaluate", run, "--trust-spec", "--device", "cpu")
    assert trusted.exit_code == 0, trusted.output
    assert (run / "model_source" / "IMPORTED").exists()  # what ran is the copy the message named


TAMPERINGS = {
    "changed": lambda copy: copy.write_text(copy.read_text() + "\nopen(__file__ + '.PWNED', 'w')\n"),
    "replaced by a link": lambda copy: (copy.unlink(), copy.symlink_to(copy.parent.parent / "evil.py")),
    "a file added": lambda copy: (copy.parent / "torchvision.py").write_text("open(__file__ + '.PWNED', 'w')\n"),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
@pytest.mark.parametrize("trust", [[], ["--trust-spec"]])
def test_a_tampered_copy_is_refused_even_when_trusted(runner, user_run, tmp_path, tampering, trust):
    run = tmp_path / "small"
    shutil.copytree(user_run, run)
    (run / "evil.py").write_text("open(__file__ + '.PWNED', 'w')\n")
    copy = run / "model_source" / "small.py"
    recorded = hashlib.sha256(copy.read_bytes()).hexdigest()
    TAMPERINGS[tampering](copy)

    result = invoke(runner, "evaluate", run, "--device", "cpu", *trust)

    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    if tampering == "replaced by a link":  # refused as a planted link, before anything is read
        assert f"model_source/small.py -> {run / 'evil.py'}" in message
    else:
        assert "is not the code recorded when the run was trained" in message and str(copy.parent) in message
    if tampering == "changed":
        assert f"has SHA-256 {hashlib.sha256(copy.read_bytes()).hexdigest()}, but {recorded} was recorded" in message
    assert not list(tmp_path.rglob("*.PWNED")) and not (run / "model_source" / "IMPORTED").exists()
