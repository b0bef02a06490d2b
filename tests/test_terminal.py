"""The terminal (issue 15): --quiet/--verbose/--device/--seed alike on every command that computes,
preparation lines, progress with an ETA, and help examples that name only folders a command makes."""
import hashlib
import json
import re

import pytest
import torch
from rich.console import Console

from cnnscope import zoo
from cnnscope.cli import cli
from cnnscope.core.runtime import resolve_device
from cnnscope.errors import CnnscopeError
from cnnscope.render.progress import NORMAL, QUIET, VERBOSE, Reporter, progress_bar
from cnnscope.runs.train_console import RunBar, duration, run_eta
from cnnscope.runs.train_options import new_options, run_dir_of

TINY_EGRR = ["egrr", "--ctor", "num_classes=10", "--ctor", "stem_channels=8", "--ctor", "stages=((8,2,1),(16,2,2))"]
COMPUTING = ("train", "evaluate", "bench", "summary", "rf", "gates", "sharing", "attribute", "augment", "export")


def option_names(command):
    return {opt for p in cli.commands[command].params for opt in getattr(p, "opts", ())}


# ---- the shared options ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMPUTING)
def test_every_computing_command_takes_quiet_and_verbose(command):
    assert {"--quiet", "-q", "--verbose", "-v"} <= option_names(command)


def test_device_and_seed_where_the_command_computes_or_draws():
    assert [c for c in COMPUTING if "--device" in option_names(c)] == ["train", "evaluate", "bench", "rf", "gates",
                                                                       "attribute"]
    assert [c for c in COMPUTING if "--seed" in option_names(c)] == ["train", "bench", "gates", "sharing",
                                                                     "attribute", "augment"]


def test_the_options_are_defined_once():
    """One decorator each in cli/common.py: the same help (after what the device is for) on every
    command that has the option."""
    for option in ("--quiet", "--verbose", "--device"):
        helps = {(p.metavar, p.help[p.help.find("cpu, cuda, cuda:N"):])
                 for c in cli.commands.values() for p in c.params if option in getattr(p, "opts", ())}
        assert len(helps) == 1, (option, helps)


def test_quiet_and_verbose_exclude_each_other(runner):
    result = runner.invoke(cli, ["summary", "basic", "-q", "-v"])
    assert result.exit_code == 2 and "--quiet and --verbose exclude each other" in result.output


def test_devices_are_named_as_torch_names_them():
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    for name in ("tpu", "cpu:1", "cuda:x", "cuda:99"):
        with pytest.raises(CnnscopeError) as caught:
            resolve_device(name)
        assert caught.value.arguments == ("device",)
    assert str(caught.value).startswith("Device 'cuda:99' was asked for but this machine has")  # not an unknown name


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", [["gates", *TINY_EGRR], ["attribute", "basic"], ["rf", "basic"]])
def test_cuda_on_a_machine_without_one_is_exit_2(runner, tmp_path, command):
    result = runner.invoke(cli, [*command, "--n" if command[0] != "rf" else "--input", *(
        ["1"] if command[0] != "rf" else ["3", "32", "32"]), "--device", "cuda", *(
        ["--out", str(tmp_path)] if command[0] != "rf" else [])])
    assert result.exit_code == 2, result.output
    assert ("Device 'cuda' was asked for but this machine has no cuda device; use auto or cpu. "
            "(On the command line: device is --device auto|cpu|cuda[:N]|mps.)") in " ".join(result.output.split())


# ---- preparation lines: quiet, normal, verbose ----------------------------------------------------

def test_gates_says_what_it_loads_only_when_verbose_and_its_seed_draws_the_weights(runner, tmp_path):
    args = ["gates", *TINY_EGRR, "--n", "1", "--out", str(tmp_path), "--format", "json", "--device", "cpu"]
    verbose, normal, quiet, seed_2 = (runner.invoke(cli, args + flag) for flag in (["-v"], [], ["-q", "--seed", "0"],
                                                                                   ["--seed", "2"]))
    assert all(r.exit_code == 0 for r in (verbose, normal, quiet, seed_2)), verbose.output
    wrote = [f"wrote {tmp_path / 'gate_maps.png'}", f"wrote {tmp_path / 'gate_shares.png'}"]
    assert verbose.stderr.splitlines() == ["building egrr with untrained weights (seed 0) on cpu",
                                           "generating fake: synthetic images, in memory: the first 1 test images",
                                           *wrote]
    assert normal.stderr.splitlines() == quiet.stderr.splitlines() == wrote  # off a terminal no bar is drawn
    assert json.loads(quiet.stdout) == json.loads(verbose.stdout) == json.loads(normal.stdout)  # seed 0 each time
    assert json.loads(seed_2.stdout)["steps"] != json.loads(normal.stdout)["steps"]


@pytest.mark.slow
def test_train_prints_its_preparation_unless_quiet(runner, tmp_path):
    args = ["train", "basic", "--dataset", "fake", "--train-subset", "32", "--epochs", "2", "--batch-size", "32",
            "--procs", "1", "--device", "cpu"]
    verbose = runner.invoke(cli, [*args, "--out", str(tmp_path / "v"), "--verbose"])
    assert verbose.exit_code == 0, verbose.output
    said = verbose.stderr.splitlines()
    # 2 steps of a fresh model: its validation ends far below its training accuracy, and the run says why
    assert said[-1].startswith("warning: the val accuracy ended at ") and "in 2 optimizer steps batch norm" in said[-1]
    assert said[:-1] == [
        "generating fake: synthetic images, in memory",
        "building basic (10 classes, seed 0) on cpu",
        "loaders: batch backend, 32 images per process and batch",
        "writing model_summary.txt and rf.md (the receptive-field analysis)",
        "saved checkpoints/last.pth, best.pth",
        "saved checkpoints/" + ("last.pth, best.pth" if "best" in verbose.stdout.splitlines()[6] else "last.pth"),
        "testing best.pth on the 128 test images",
        f"loading the run {tmp_path / 'v' / 'basic'} onto cpu",  # the test split is the one training loaded
    ]
    lines = verbose.stdout.splitlines()  # the run (3 lines), the epochs' header (2), the epochs, the end (3)
    assert len(lines) == 10 and lines[4].split()[-1] == "ETA", lines
    assert re.fullmatch(r"[\d.]+s", lines[5].split()[8]) and lines[6].split()[8] == "-", lines  # the run's ETA

    quiet = runner.invoke(cli, [*args, "--out", str(tmp_path / "q"), "--quiet", "--epochs", "1"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and len(quiet.stdout.splitlines()) == 3 and quiet.stdout.startswith("Done in ")
    assert (tmp_path / "q" / "basic" / "checkpoints" / "best.pth").is_file()


# ---- --seed ---------------------------------------------------------------------------------------

def test_the_seed_draws_an_untrained_models_attributions(runner, tmp_path):
    def saliency(seed):
        args = ["attribute", "basic", "--n", "1", "--method", "saliency", "--out", str(tmp_path), "--format", "json",
                "--seed", str(seed)]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["images"][0]["prob"], (tmp_path / "attributions.png").read_bytes()

    assert saliency(3) == saliency(3)
    assert saliency(3)[0] != saliency(4)[0]


def test_the_seed_draws_augments_batch(runner, tmp_path):
    def grid(*seed):
        result = runner.invoke(cli, ["augment", "basic", "--dataset", "fake", "--n", "4", "--out", str(tmp_path),
                                     "--format", "json", *seed])
        assert result.exit_code == 0, result.output
        return hashlib.sha256((tmp_path / "plots" / "augmented_samples_grid.png").read_bytes()).hexdigest()

    assert grid() == grid("--seed", "0")  # a MODEL's default: seed 0
    assert grid("--seed", "5") == grid("--seed", "5") != grid()


def test_the_seed_draws_benchs_weights():
    from cnnscope.runs.bench import bench_model

    def weights(seed):
        return bench_model("tiny", None, torch.device("cpu"), False, seed).state_dict()["c1.0.conv.weight"]

    assert torch.equal(weights(1), weights(1)) and not torch.equal(weights(1), weights(2))


# ---- progress -------------------------------------------------------------------------------------

def test_stages_off_a_terminal_are_one_line_each(capsys):
    console = Console(stderr=True, force_terminal=False, width=30)
    for verbosity, expected in ((NORMAL, "one\ntwo, a long name past the width\n"), (QUIET, "")):
        with Reporter(verbosity, console).stages(2) as begin:
            begin("one")
            begin("two, a long name past the width")
        assert capsys.readouterr().err == expected


def test_reporter_levels(capsys):
    console = Console(stderr=True, force_terminal=False)
    for verbosity, expected in ((QUIET, ""), (NORMAL, "step\n"), (VERBOSE, "step\ndetail\n")):
        reporter = Reporter(verbosity, console)
        reporter.step("step")
        reporter.detail("detail")
        assert capsys.readouterr().err == expected


def test_the_run_bar_follows_every_epochs_batches():
    from types import SimpleNamespace

    from cnnscope.core.training import LoopState

    loop = SimpleNamespace(train_loader=range(10), recipe=SimpleNamespace(epochs=3),
                           state=LoopState(epoch=1, batch=4))  # resumed in epoch 2, batch 4
    with progress_bar(Console(force_terminal=False)) as progress:
        bar = RunBar(progress)
        bar.on_train_start(loop)
        assert (progress.tasks[0].total, progress.tasks[0].completed) == (30, 14)
        bar.on_step(loop, 17, torch.tensor(0.5), 0.1)  # the loop's step 17: epoch 2, batch 7
        assert progress.tasks[0].completed == 17
        bar.on_step(loop, 30, torch.tensor(0.5), 0.1)
        assert progress.tasks[0].completed == 30


def test_run_eta_is_the_mean_epoch_time_times_the_epochs_left():
    history = [{"epoch_time_s": 10.0}, {"epoch_time_s": 20.0}]
    assert run_eta(history, 5) == 45.0 and run_eta(history, 2) is None and run_eta([], 5) is None
    assert [duration(s) for s in (42.4, 185, 7620)] == ["42s", "3m05s", "2h07m"]


# ---- help examples --------------------------------------------------------------------------------

def help_texts(runner):
    yield runner.invoke(cli, ["--help"]).output
    for name in cli.commands:
        yield runner.invoke(cli, [name, "--help"]).output


def test_help_names_only_run_folders_that_a_documented_command_makes(runner):
    """Every reports/<folder> in a help text is a placeholder, a folder `cnnscope train MODEL` makes
    for a zoo MODEL (or with the --name an example gives), or compare's reports/combined."""
    texts = "\n".join(help_texts(runner))
    made = {run_dir_of(new_options(name)).as_posix() for name in zoo.list_models()}
    made |= {f"reports/{name}" for name in re.findall(r"--name (\S+)", texts)} | {"reports/combined"}
    placeholders = {"reports/<run>", "reports/<name>", "reports/<model>", "reports/<name>-untrained", "reports/*",
                    "reports/<model>-augment", "reports/<checkpoint>-checkpoint"}
    named = set(re.findall(r"reports/[^\s/\]\)\"',.]+", texts))
    assert "reports/basic" in named and "reports/combined" in named
    assert named - made - placeholders == set()


def test_the_command_freezes_its_objects_after_every_other_exit_handler(monkeypatch):
    """main() registers gc.freeze before the command runs, so it runs after every exit handler the
    command registers (atexit runs the last registered first): the interpreter's last collections
    then skip the objects torch made, the second or two a command would spend after its work."""
    import gc

    import cnnscope.cli as entry

    registered = []
    monkeypatch.setattr(entry.atexit, "register", registered.append)
    monkeypatch.setattr(entry, "tune_cpu_runtime", lambda: None)
    monkeypatch.setattr(entry, "cli", lambda prog_name: registered.append(f"{prog_name} ran"))
    entry.main()
    assert registered == [gc.freeze, "cnnscope ran"]


@pytest.mark.parametrize("code, ended", [(0, 0), (2, 2), (None, 0), ("a message", 1)])
def test_a_rank_of_torchrun_ends_as_the_launchers_ranks_end(monkeypatch, code, ended):
    """Under torchrun (WORLD_SIZE set) the command's exit skips the interpreter's finalization, in
    which a gloo thread of DDP can still take the GIL and abort the process (exit -6): its agent
    then fails and another node's agent waits out its exit barrier. Elsewhere the exit is Python's."""
    import cnnscope.cli as entry
    from cnnscope.runs import launch

    def command(prog_name):
        raise SystemExit(code)

    ends = []
    monkeypatch.setattr(entry.atexit, "register", lambda handler: None)
    monkeypatch.setattr(entry, "tune_cpu_runtime", lambda: None)
    monkeypatch.setattr(entry, "cli", command)
    monkeypatch.setattr(launch, "exit_rank", ends.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit):
        entry.main()
    assert ends == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):  # the recorded exit_rank returns; the real one ends the process
        entry.main()
    assert ends == [ended]
