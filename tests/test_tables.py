"""Tables a reviewer can read at 80 columns and up (issue 26): numbers never cut, names wrapped at their
separators, the least important columns left out by name; one number format; `to_table` that prints;
the training lines within 80 columns; commands that say what they wrote; README examples that run or
say what they need."""
import re
import shlex
from pathlib import Path

import pytest
from rich.console import Console

import cnnscope
from cnnscope.cli import cli
from cnnscope.render import numbers
from cnnscope.render.tables import Section, column_widths, sections_table, wrap
from cnnscope.runs.train_console import EPOCH_WIDTHS, epoch_header, epoch_line

ROOT = Path(__file__).resolve().parents[1]


def test_names_wrap_after_separators_and_inside_camel_case():
    assert wrap("stages.0.gate#1:avg_pool2d.1", 12) == ["stages.0.", "gate#1:avg_", "pool2d.1"]
    assert wrap("fashion-mnist", 9) == ["fashion-", "mnist"]
    assert wrap("DivisiveNorm", 10) == ["Divisive", "Norm"]
    assert wrap("    divnorm #1", 11) == ["    divnorm", "#1"]  # the indentation stays with its word
    assert wrap("abcdefghij", 4) == ["abcd", "efgh", "ij"]  # longer than a line: folded


def test_one_number_format():
    assert [numbers.macs(v) for v in (13_728_256, 200_030_000, 5_417_510_000, 999_700_000, 664_000, 640)] == [
        "13.7 M", "200 M", "5.42 G", "1.00 G", "664 K", "640"]
    assert [numbers.lr(v) for v in (0.06372, 0.0001, 0.0004786)] == ["0.0637", "0.0001", "0.000479"]
    assert numbers.count(10000) == "10,000" and numbers.scientific(-0.1) == "-1.0e-01"
    assert (numbers.plural(1, "epoch"), numbers.plural(2, "epoch"), numbers.plural(3, "batch", "batches")) == (
        "1 epoch", "2 epochs", "3 batches")


def render(view, width) -> str:
    console = Console(width=width, color_system=None)
    with console.capture() as captured:
        console.print(view)
    return captured.get()


def test_numbers_are_never_cut_and_columns_are_left_out_by_importance():
    rows = [[f"run-number-{i}", "fashion-mnist", "1,080,610", "219 M", "87.56", "1,798"] for i in range(3)]
    section = Section("Runs", ["run", "dataset", "params", "MACs", "test acc (%)", "train time (s)"], rows,
                      drop=("train time (s)", "MACs"))
    left_out_at = {80: [], 50: ["'train time (s)'"], 40: ["'MACs'", "'test acc (%)'", "'train time (s)'"]}
    for width, left_out in left_out_at.items():
        text = render(sections_table([section]), width)
        assert max(map(len, text.splitlines())) <= width and "…" not in text
        assert "1,080,610" in text and ("87.56" in text or width == 40)  # whole numbers
        note = " ".join(text.split()).partition("Not shown at ")[2]
        assert all(name in note for name in left_out) and bool(note) is bool(left_out)
    shown, widths = column_widths(section, 50)
    assert [section.columns[i] for i in shown] == ["run", "dataset", "params", "MACs", "test acc (%)"]
    assert widths[shown.index(2)] == 9  # "1,080,610": a number column is as wide as its widest number
    shown, _ = column_widths(section, 40)  # the listed columns out, and then from the right
    assert [section.columns[i] for i in shown] == ["run", "dataset", "params"]


def test_to_table_prints_as_a_table_and_shows_in_a_notebook(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    rf = cnnscope.receptive_field(cnnscope.build_model("basic"), (3, 32, 32))
    view = cnnscope.to_table(rf)
    print(view)
    printed = capsys.readouterr().out
    assert "rich.console" not in printed and "┃  # ┃ Layer" in printed and "│ 11 │ c4a.dw" in printed
    assert max(map(len, printed.splitlines())) <= 80
    assert view._repr_markdown_() == cnnscope.to_markdown(rf)  # what Jupyter shows


def test_compare_at_120_columns_shows_every_cell_whole(runner, tmp_path):
    runs = [str(ROOT / "reports" / name) for name in ("basic-fmnist", "basic-speed-fmnist", "egrr-fmnist")]
    result = runner.invoke(cli, ["compare", *runs, "--out", str(tmp_path), "--format", "table"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 120 and "…" not in result.stdout and "fashion-mnist" in result.stdout
    assert "1,798" in result.stdout and "135 M" in result.stdout and "Not shown" not in result.stdout
    assert result.stderr.splitlines() == [f"wrote {tmp_path}/{name}" for name in (
        "summary.csv", "summary.md", "combined_acc.png", "combined_loss.png")]


# ---- training lines -----------------------------------------------------------------------------------

def test_epoch_lines_and_their_header_fit_80_columns():
    row = {"epoch": 100, "train_loss": 2.3456, "train_acc": 100.0, "val_loss": 2.0, "val_acc": 100.0,
           "lr": 0.0004786, "epoch_time_s": 3725.0, "images_per_s": 12345.0}
    line = epoch_line(row, 200, improved=True, eta=7620.0)
    plain = line.replace("[green]", "").replace("[/]", "")
    assert len(plain) <= 80 and plain.endswith("best") and "0.000479" in plain and "12,345" in plain
    header = epoch_header("test")
    assert all(len(h) <= 80 for h in header) and "test" in header[0] and header[1].split()[0] == "epoch"
    assert len(header[1]) == len(plain) - len("  best") == sum(EPOCH_WIDTHS) + 2 * (len(EPOCH_WIDTHS) - 1)


# ---- behaviour: what commands write, and where --------------------------------------------------------

def test_augment_of_a_model_never_rewrites_a_run(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "reports" / "basic"
    (run / "plots").mkdir(parents=True)
    (run / ".cnnscope.lock").write_text("")
    (run / "plots" / "augmented_samples_grid.png").write_bytes(b"the run's own")
    result = runner.invoke(cli, ["augment", "basic", "--dataset", "fake", "--n", "4", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert (run / "plots" / "augmented_samples_grid.png").read_bytes() == b"the run's own"
    made = Path("reports") / "basic-augment" / "plots" / "augmented_samples_grid.png"
    assert (tmp_path / made).is_file() and f"wrote {made}" in result.stderr
    refused = runner.invoke(cli, ["augment", "basic", "--dataset", "fake", "--out", str(run)])
    assert refused.exit_code == 2 and "is the folder of another training run" in refused.stderr
    assert (run / "plots" / "augmented_samples_grid.png").read_bytes() == b"the run's own"


@pytest.mark.parametrize("command", [["gates", "reports/egrr"], ["attribute", "reports/basic"],
                                     ["sharing", "reports/swrn"], ["augment", "reports/basic"],
                                     ["compare", "reports/basic", "reports/tiny"]])
def test_a_missing_run_folder_is_reported_as_missing(runner, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, command)
    assert result.exit_code == 2 and "does not exist" in result.stderr and "Unknown model" not in result.stderr


# ---- the README's commands -----------------------------------------------------------------------------

NEEDS_WEIGHTS = {"evaluate", "gates", "sharing", "attribute", "export", "rf", "train"}  # with a RUN argument


def readme_commands():
    """(command line, the lines before it in its block) for every `cnnscope` line of the README's bash blocks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines = block.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            if line.startswith("cnnscope "):
                yield line, lines[:i]


def made_by(lines) -> set:
    """The run folders the `cnnscope train` lines make: reports/<--name, else the model's name>."""
    made = set()
    for line in lines:
        words = shlex.split(line.split("#")[0])
        if words[:2] == ["cnnscope", "train"] and len(words) > 2 and not words[2].startswith("-"):
            name = words[words.index("--name") + 1] if "--name" in words else words[2].split(":")[-1]
            made.add(f"reports/{name}")
    return made


def test_every_readme_command_runs_on_a_fresh_clone_or_says_what_it_needs():
    """A RUN the command reads is made by a `train` above it in its block, or is a committed run with the
    files the command reads (no command that needs weights: no checkpoint is committed), or the line's
    comment says what it needs."""
    unexplained = []
    for line, before in readme_commands():
        code, _, comment = line.partition("#")
        words = shlex.split(code)
        runs = [w.split("=")[-1] for w in words if w.split("=")[-1].startswith("reports/")]
        committed = [r for r in runs if (ROOT / r / "metrics.json").is_file()]
        needs = words[1] in NEEDS_WEIGHTS or "--erf" in words
        missing = [r for r in runs if r not in made_by(before) and (needs or r not in committed)]
        if missing and "needs" not in comment:
            unexplained.append(line)
    assert not unexplained, f"README commands that cannot run on a fresh clone and do not say so: {unexplained}"


def test_the_readme_compare_example_runs_on_the_committed_runs(runner, tmp_path, monkeypatch):
    (line,) = [line for line, _ in readme_commands() if line.startswith("cnnscope compare")]
    args = shlex.split(line.split("#")[0])[1:]
    monkeypatch.chdir(ROOT)
    args[args.index("--out") + 1] = str(tmp_path / "compared")
    result = runner.invoke(cli, [*args, "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| basic-fmnist | basic | fashion-mnist | 84,322 | 13.7 M |" in result.stdout
    assert (tmp_path / "compared" / "combined_acc.png").is_file()


@pytest.mark.parametrize("fmt", ["markdown", "json"])
def test_a_warning_is_printed_once_piped(runner, tmp_path, fmt):
    """The table and the markdown carry the warnings under the result; json leaves them to stderr: once."""
    result = runner.invoke(cli, ["attribute", "ectied", "--n", "1", "--method", "gradcam", "--out", str(tmp_path),
                                 "--format", fmt])
    assert result.exit_code == 0, result.output
    printed = result.stderr if fmt == "json" else result.stdout  # json: stdout's is the data's "warnings"
    assert printed.count("GradCAM uses stem.0") == 1
    assert result.stderr.count("GradCAM uses stem.0") == (fmt == "json")
