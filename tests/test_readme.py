"""`cnnscope update-readme`: blocks are refilled from run folders, everything else is kept byte for
byte, and every malformed README is refused with exit code 2 and the file untouched."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnscope.cli import cli
from cnnscope.runs.readme.blocks import Renderer, RfEntry
from cnnscope.runs.readme.markers import update_text

METRICS = {
    "run": "basic", "model": "basic", "params": 84322, "dataset": "fake", "selected_on": "val",
    "best_val_acc": 61.25, "best_epoch": 2, "epochs": 3, "test_acc": 58.5, "test_loss": 1.23456,
    "train_time_s": 12.34, "images_per_s": 2345.6,
    "macro_avg": {"precision": 0.5861, "recall": 0.5849, "f1": 0.58},
    "weighted_avg": {"precision": 0.6012, "recall": 0.585, "f1": 0.5877},
}
# Backslashes, `$`, a code fence and a closing marker: all must come through a MODEL_SUMMARY block.
SUMMARY_TEXT = "Net, input 3x32x32\n``` not a fence end\n<!-- /MODEL_SUMMARY_BASIC -->\nC:\\nets\\new $HOME $1\n"
PLOTS = ("acc_curves.png", "loss_curves.png", "lr.png", "cm.png", "test_samples_grid.png",
         "augmented_samples_grid.png", "misclassified_grid.png", "gate_maps.png", "sharing_stage1.png",
         "sharing_stage2.png")


def write_run(folder: Path, metrics=METRICS):
    """A run folder as `cnnscope train` lays it out, with made-up numbers (fast, no training)."""
    (folder / "plots").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "model_summary.txt").write_text(SUMMARY_TEXT)
    (folder / "rf.md").write_text("### RF: Net\n\n**Final RF:** 55\n")
    for name in PLOTS:
        (folder / "plots" / name).write_bytes(b"\x89PNG\r\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A README folder with reports/basic and reports/combined."""
    root = tmp_path_factory.mktemp("site")
    write_run(root / "reports" / "basic")
    combined = root / "reports" / "combined"
    combined.mkdir()
    (combined / "summary.md").write_text("| run | test acc |\n|---|---|\n| basic | 58.50 |\n")
    (combined / "combined_acc.png").write_bytes(b"png")
    (combined / "combined_loss.png").write_bytes(b"png")
    return root


def update(site, text, **options):
    return update_text(text, Renderer(site, **options))


def body_of(text, name):
    """The lines between the opening marker of `name` and its last closing marker."""
    m = re.search(rf"^<!-- {name}\b[^\n]*-->\r?\n(.*)^<!-- /{name} -->", text, re.S | re.M)
    return m[1]


def run_cli(runner, *args):
    return runner.invoke(cli, ["update-readme", *map(str, args)])


# ---- content of each block kind ---------------------------------------------------------------------

def test_run_blocks_show_the_run_numbers(site):
    text = update(site, "<!-- RUN_METRICS run=reports/basic -->\n<!-- /RUN_METRICS -->\n"
                        "<!-- CLS_REPORT_BASIC -->\nold\n<!-- /CLS_REPORT_BASIC -->\n")
    metrics = body_of(text, "RUN_METRICS")
    for row in ("| params | 84,322 |", "| test accuracy (%) | 58.50 |", "| test loss | 1.2346 |",
                "| best val accuracy (%) | 61.25 |", "| best epoch | 2 of 3 |", "| train time (s) | 12.3 |",
                "| images/s | 2,346 |", "| dataset | fake |"):
        assert row in metrics.splitlines()
    assert body_of(text, "CLS_REPORT_BASIC") == (
        "| avg | precision | recall | f1 |\n|:---|---:|---:|---:|\n"
        "| macro avg | 0.586 | 0.585 | 0.580 |\n| weighted avg | 0.601 | 0.585 | 0.588 |\n"
    )


def test_every_block_kind_is_filled_by_a_method_named_in_the_table():
    from cnnscope.runs.readme.blocks import Renderer
    from cnnscope.runs.readme.kinds import COMBINED_PLOTS, KINDS, RUN_IMAGES

    assert sorted([*Renderer.FILLS, *RUN_IMAGES, *COMBINED_PLOTS]) == sorted(KINDS)
    assert all(callable(fill) for fill in Renderer.FILLS.values())


def test_model_summary_of_a_run_survives_fences_markers_and_backslashes(site):
    text = update(site, "<!-- MODEL_SUMMARY_BASIC -->\n<!-- /MODEL_SUMMARY_BASIC -->\n")
    assert body_of(text, "MODEL_SUMMARY_BASIC") == (
        "<details><summary><b>Model summary (Basic)</b></summary>\n\n````\n" + SUMMARY_TEXT + "````\n</details>\n"
    )
    assert update(site, text) == text


@pytest.mark.parametrize("marker, src, title", [
    ("CM run=reports/basic", "reports/basic/plots/cm.png", "Confusion matrix — basic"),
    ("CM_BASIC", "reports/basic/plots/cm.png", "Confusion matrix — Basic"),
    ("CURVES run=reports/basic kind=loss", "reports/basic/plots/loss_curves.png", "Loss — basic"),
    ("CURVES run=reports/basic", "reports/basic/plots/acc_curves.png", "Accuracy — basic"),
    ("GATE_MAPS run=reports/basic title=\"Gates & <maps>\" width=400", "reports/basic/plots/gate_maps.png",
     "Gates &amp; &lt;maps&gt;"),
    ("TEST_SAMPLES_GRID", "reports/basic/plots/test_samples_grid.png", "Test samples"),
    ("AUGMENTED_SAMPLES_GRID run=reports/basic", "reports/basic/plots/augmented_samples_grid.png",
     "Augmented training samples — basic"),
    ("COMBINED_ACC_PLOT", "reports/combined/combined_acc.png", "Accuracy, all runs"),
    ("COMBINED_LOSS_PLOT title=\"Loss — Base vs Dilated\"", "reports/combined/combined_loss.png",
     "Loss — Base vs Dilated"),
    ("IMAGE src=reports/basic/plots/lr.png title=LR", "reports/basic/plots/lr.png", "LR"),
])
def test_image_blocks_point_at_the_png_relative_to_the_readme(site, marker, src, title):
    name = marker.split()[0]
    width = "400" if "width=400" in marker else "800"
    text = update(site, f"<!-- {marker} -->\n<!-- /{name} -->\n")
    assert body_of(text, name) == (
        f'<p><strong>{title}</strong><br><img src="{src}" alt="{title}" width="{width}"></p>\n'
    )
    assert (site / src).is_file()


def test_readme_in_a_subfolder_gets_paths_relative_to_its_folder(site):
    """A README reads only inside its own tree, or inside the reports folder the user names: there
    ../reports/basic from docs/ is allowed, and the image paths are relative to docs/."""
    docs = site / "docs"
    docs.mkdir(exist_ok=True)
    text = update_text("<!-- SHARING run=../reports/basic -->\n<!-- /SHARING -->\n",
                       Renderer(docs, reports=site / "reports"))
    srcs = re.findall(r'src="([^"]+)"', text)
    assert srcs == ["../reports/basic/plots/sharing_stage1.png", "../reports/basic/plots/sharing_stage2.png"]
    assert all((docs / s).is_file() for s in srcs)
    guide = site / "guide"  # a README folder with its own runs: needs nothing named
    if not guide.exists():
        write_run(guide / "reports" / "basic")
    text = update_text("<!-- CM run=reports/basic -->\n<!-- /CM -->\n", Renderer(guide))
    assert re.findall(r'src="([^"]+)"', text) == ["reports/basic/plots/cm.png"]


# ---- a README reads only inside its own tree --------------------------------------------------------

SECRET = "secret line of another file\n"


@pytest.fixture
def planted(tmp_path):
    """A README folder (repo/) with a real run, and outside it a folder of files the README must not
    read: elsewhere/ holds a run's files (metrics.json, model_summary.txt, a PNG) and a secret."""
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    write_run(repo / "reports" / "basic")
    (repo / "reports" / "basic" / "train_log.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc\n")
    write_run(elsewhere)
    for name in ("model_summary.txt", "rf.md"):
        (elsewhere / name).write_text(SECRET)
    (elsewhere / "secret.txt").write_text(SECRET)
    (repo / "reports" / "out").symlink_to(elsewhere)  # a folder inside the tree that leads out
    (repo / "reports" / "linked").mkdir()
    (repo / "reports" / "linked" / "model_summary.txt").symlink_to(elsewhere / "secret.txt")
    (repo / "reports" / "linked" / "metrics.json").symlink_to(elsewhere / "metrics.json")
    (repo / "reports" / "linked" / "plots").mkdir()
    (repo / "reports" / "linked" / "plots" / "cm.png").symlink_to(elsewhere / "plots" / "cm.png")
    return repo, elsewhere


OUTSIDE_MARKERS = {
    "absolute run": ("MODEL_SUMMARY run={elsewhere}", "is an absolute path"),
    "absolute image": ("IMAGE src={elsewhere}/plots/cm.png", "is an absolute path"),
    "run up and out": ("MODEL_SUMMARY run=../elsewhere", "leads outside the README's folder"),
    "image up and out": ("IMAGE src=../elsewhere/secret.txt", "leads outside the README's folder"),
    "linked folder": ("RF run=reports/out", "leads outside the README's folder"),
    "linked text file": ("MODEL_SUMMARY run=reports/linked", "leads outside the README's folder"),
    "linked metrics": ("RUN_METRICS run=reports/linked", "leads outside the README's folder"),
    "linked image": ("CM run=reports/linked", "leads outside the README's folder"),
    "linked combined": ('COMBINED_SUMMARY_TABLE runs="reports/basic reports/out"', "leads outside the README's folder"),
    "a model file out": ("RF spec=../elsewhere/model.py:Net", "leads outside the README's folder"),
    "100,000 characters": ("MODEL_SUMMARY run=" + "a" * 100_000, "100,000 characters"),
}


@pytest.mark.parametrize("case", OUTSIDE_MARKERS)
def test_a_marker_reads_nothing_outside_the_readme_tree(runner, planted, case):
    repo, elsewhere = planted
    marker, fragment = OUTSIDE_MARKERS[case]
    name = marker.split()[0]
    readme = repo / "README.md"
    text = f"# r\n<!-- {marker.format(elsewhere=elsewhere)} -->\n<!-- /{name} -->\n"
    readme.write_text(text)

    for mode in ((), ("--check",), ("--diff",)):
        result = run_cli(runner, readme, *mode)
        assert result.exit_code == 2, (mode, result.output)
        assert "Traceback" not in result.output and fragment in " ".join(result.output.split())
        assert "secret line" not in result.output and f"{readme}:2" in result.output
    assert readme.read_text() == text


def test_check_prints_only_the_blocks_own_text(runner, planted):
    repo, _ = planted
    readme = repo / "README.md"
    readme.write_text("# r\n<!-- MODEL_SUMMARY run=reports/basic -->\nold\n<!-- /MODEL_SUMMARY -->\ntail\n")
    result = run_cli(runner, readme, "--check")
    assert result.exit_code == 1
    added = [line[1:] for line in result.stdout.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert "".join(f"{line}\n" for line in added[3:-2]) == SUMMARY_TEXT  # the run's own text, in its fence
    assert [line for line in result.stdout.splitlines() if line.startswith("-") and not line.startswith("---")] == [
        "-old"]


def test_a_bom_on_line_1_and_a_bad_ctor_are_located(runner, site, tmp_path):
    bom = tmp_path / "BOM.md"
    bom.write_bytes("\ufeff<!-- RUN_METRICS run=reports/basic -->\n<!-- /RUN_METRICS -->\n".encode())
    result = run_cli(runner, bom, "--reports", site / "reports", "--check")
    assert result.exit_code == 2 and "leads outside" not in result.output  # line 1 is read as a marker ...
    assert f"{bom}:1: block RUN_METRICS: run folder reports/basic does not exist" in " ".join(result.output.split())
    (tmp_path / "reports").symlink_to(site / "reports", target_is_directory=True)
    assert run_cli(runner, bom, "--reports", site / "reports").exit_code == 0  # ... and filled, BOM kept
    assert bom.read_bytes().startswith("\ufeff<!-- RUN_METRICS".encode()) and b"| params | 84,322 |" in bom.read_bytes()

    ctor = tmp_path / "CTOR.md"
    ctor.write_text("# x\n\n<!-- RF spec=basic ctor=width -->\n<!-- /RF -->\n")
    result = run_cli(runner, ctor)
    assert result.exit_code == 2 and f"{ctor}:3: block RF: Bad ctor item 'width'" in " ".join(result.output.split())


def test_zoo_table(site, monkeypatch):
    from cnnscope import zoo

    monkeypatch.setattr(zoo, "list_models", lambda: ["basic", "tiny"])  # keep the test to two models
    text = update(site, "<!-- ZOO_TABLE -->\n<!-- /ZOO_TABLE -->\n")
    rows = body_of(text, "ZOO_TABLE").splitlines()
    assert rows[0] == "| Model | Class | Params | MACs (3x32x32) | RF | Dataset |"
    assert rows[2] == "| `basic` | Net | 84,322 | 13.73 M | 55 | cifar10 |"
    assert rows[3].startswith("| `tiny` | NetCIFAR10_Tiny | 36,170 | ") and rows[3].endswith(" M | 45 | cifar10 |")
    assert len(rows) == 4
    only_tiny = update(site, "<!-- ZOO_TABLE models=tiny -->\n<!-- /ZOO_TABLE -->\n")
    assert body_of(only_tiny, "ZOO_TABLE").splitlines()[2:] == rows[3:]


def test_model_summary_and_rf_of_a_spec(site):
    from cnnscope.core.summary import summarize
    from cnnscope.render.summary import model_summary_text
    from cnnscope.zoo.compact import Net

    nets = site / "nets"
    nets.mkdir(exist_ok=True)
    (nets / "model.py").write_text("from cnnscope.zoo.compact import NetDilated\n")
    text = update(site, "<!-- MODEL_SUMMARY spec=basic -->\n<!-- /MODEL_SUMMARY -->\n"
                        '<!-- RF spec=nets/model.py:NetDilated ctor="num_classes=100" title="RF: D" -->\n<!-- /RF -->\n'
                        '<!-- RF spec=basic input="3 64 64" -->\n<!-- /RF -->\n', trust_spec=True)
    blocks = re.findall(r"^<!-- (?:MODEL_SUMMARY|RF) [^\n]*-->\n(.*?)^<!-- /", text, re.S | re.M)
    assert blocks[0] == ("<details><summary><b>Model summary (basic)</b></summary>\n\n```\n"
                         + model_summary_text(summarize(Net(), (3, 32, 32))) + "```\n</details>\n")
    assert "84,322" in blocks[0]
    assert blocks[1].startswith("### RF: D\n\n| # | Layer |") and "**Final RF:** 45 " in blocks[1]
    assert blocks[2].startswith("### RF: basic (64x64 input)\n") and "**Final RF:** 55 " in blocks[2]
    assert "64x64 input" in blocks[2].splitlines()[-1]


def test_combined_summary_table_is_the_compare_table(site):
    text = update(site, "<!-- COMBINED_SUMMARY_TABLE -->\n<!-- /COMBINED_SUMMARY_TABLE -->\n")
    assert body_of(text, "COMBINED_SUMMARY_TABLE") == (site / "reports/combined/summary.md").read_text()


# ---- the property: only block bodies change, and a second run changes nothing ----------------------

BLOCKS = [
    ("<!-- RUN_METRICS run=reports/basic -->", "<!-- /RUN_METRICS -->"),
    ("<!-- CLS_REPORT run=reports/basic -->", "<!-- /CLS_REPORT -->"),
    ('<!-- CM run=reports/basic title="C:\\M $1" -->', "<!-- /CM -->"),
    ("<!-- CM_BASIC -->", "<!-- /CM_BASIC -->"),
    ("<!-- MODEL_SUMMARY_BASIC -->", "<!-- /MODEL_SUMMARY_BASIC -->"),
    ("<!-- CURVES run=reports/basic kind=loss -->", "<!-- /CURVES -->"),
    ("<!-- CURVES run=reports/basic kind=acc -->", "<!-- /CURVES -->"),
    ("<!-- COMBINED_SUMMARY_TABLE -->", "<!-- /COMBINED_SUMMARY_TABLE -->"),
    ("<!-- SHARING run=reports/basic -->", "<!-- /SHARING -->"),
]
# Marker-shaped lines that are text: inside fences, or comments that are no block kind.
MARKER_LIKE = ["<!-- CM_BASE -->", "<!-- /RUN_METRICS -->", "<!-- FOO -->", "<!-- /FOO -->",
               "<!-- RUN_METRICS run=reports/nowhere -->", "<!-- SHARING run=reports/basic -->"]
FREE_LINES = ["<!-- TODO: a comment -->", "<!-- NOTE keep this -->", "a <!-- CM --> inline", "$x \\n \\\\ $$",
              "    <!-- CM_BASE -->", "```inline``` code", ""]

plain_line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20).filter(
    lambda s: not s.lstrip().startswith(("<!--", "```", "~~~")))
fenced = st.tuples(st.sampled_from([("```", "```"), ("```python", "```"), ("~~~~", "~~~~~")]),
                   st.lists(st.one_of(plain_line, st.sampled_from(MARKER_LIKE)), max_size=4)
                   ).map(lambda t: [t[0][0], *t[1], t[0][1]])
segment = st.lists(st.one_of(plain_line.map(lambda s: [s]), st.sampled_from(FREE_LINES).map(lambda s: [s]), fenced),
                   max_size=4).map(lambda chunks: [line for chunk in chunks for line in chunk])


def assemble(segments, blocks, bodies, newline, final_newline):
    lines = list(segments[0])
    for (opening, closing), body, seg in zip(blocks, bodies, segments[1:]):
        lines += [opening, *body, closing, *seg]
    return newline.join(lines) + (newline if final_newline else "")


@pytest.fixture(scope="module")
def fresh_bodies(site):
    """Each block's generated body, as lines, from a README holding that block alone."""
    out = {}
    for opening, closing in BLOCKS:
        text = update(site, f"{opening}\n{closing}\n")
        out[opening] = text[len(opening) + 1:-len(closing) - 1].rstrip("\n").split("\n")
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data(), newline=st.sampled_from(["\n", "\r\n"]), final_newline=st.booleans())
def test_only_block_bodies_change_and_a_second_run_is_a_no_op(site, fresh_bodies, data, newline, final_newline):
    chosen = data.draw(st.lists(st.sampled_from(BLOCKS), unique=True, max_size=4))
    segments = [data.draw(segment) for _ in range(len(chosen) + 1)]
    old_bodies = [data.draw(segment) for _ in chosen]
    text = assemble(segments, chosen, old_bodies, newline, final_newline)

    new = update(site, text)

    assert new == assemble(segments, chosen, [fresh_bodies[o] for o, _ in chosen], newline, final_newline)
    assert update(site, new) == new


# ---- files: line endings, bytes, --check, --diff ----------------------------------------------------

def test_crlf_and_non_utf8_bytes_are_kept(site, runner):
    readme = site / "CRLF.md"
    head = "# R\xe9sum\xe9 \u2014 $x \\n\r\n".encode("utf-8") + b"latin-1 byte \xe9\r\n"
    readme.write_bytes(head + b"<!-- CLS_REPORT_BASIC -->\r\nold\r\n<!-- /CLS_REPORT_BASIC -->\r\ntail\r\n")

    result = run_cli(runner, readme)

    assert result.exit_code == 0, result.output
    data = readme.read_bytes()
    assert data.startswith(head + b"<!-- CLS_REPORT_BASIC -->\r\n| avg | precision | recall | f1 |\r\n")
    assert data.endswith(b"| weighted avg | 0.601 | 0.585 | 0.588 |\r\n<!-- /CLS_REPORT_BASIC -->\r\ntail\r\n")
    assert data.count(b"\n") == data.count(b"\r\n")
    assert run_cli(runner, readme, "--check").exit_code == 0
    assert readme.read_bytes() == data


def test_check_and_diff(site, runner):
    readme = site / "CHECK.md"
    stale = "intro\n<!-- CLS_REPORT run=reports/basic -->\nold line\n<!-- /CLS_REPORT -->\n"
    readme.write_text(stale)

    check = run_cli(runner, readme, "--check")
    assert check.exit_code == 1
    assert f"--- {readme}\n+++ {readme} (updated)\n" in check.output
    assert "\n-old line\n+| avg | precision | recall | f1 |\n" in check.output
    assert "\n+| macro avg | 0.586 | 0.585 | 0.580 |\n" in check.output
    assert readme.read_text() == stale

    diff = run_cli(runner, readme, "--diff")
    assert diff.exit_code == 0
    assert "\n-old line\n" in diff.output
    assert readme.read_text() == stale

    assert run_cli(runner, readme).exit_code == 0
    assert "old line" not in readme.read_text()
    fresh = run_cli(runner, readme, "--check")
    assert fresh.exit_code == 0 and "-old" not in fresh.output


# ---- errors: exit 2, file untouched -----------------------------------------------------------------

GOOD = "<!-- CLS_REPORT run=reports/basic -->\nstale\n<!-- /CLS_REPORT -->\n"


# (README text after GOOD and one line of text, the error's line in that text or None, its message)
ERRORS = [
    ("intro\n<!-- CM run=reports/basic -->\nbody\n", 2, "block CM is never closed"),
    ("intro\n<!-- /CM -->\n", 2, "closing marker <!-- /CM --> has no opening"),
    ("<!-- CM_BASIC -->\n<!-- /CM_BASIC -->\n<!-- CM_BASIC -->\n<!-- /CM_BASIC -->\n", 3,
     "block CM_BASIC with the same arguments is already at line 5"),
    (GOOD, 1, "block CLS_REPORT with the same arguments is already at line 1"),
    ("<!-- CM_BASIC -->\n<!-- RUN_METRICS run=reports/basic -->\n<!-- /RUN_METRICS -->\n<!-- /CM_BASIC -->\n", 2,
     "block RUN_METRICS opens inside block CM_BASIC (line 5)"),
    ("<!-- CM_BASIC -->\n<!-- /RUN_METRICS -->\n", 2, "<!-- /RUN_METRICS --> closes a block that is not open"),
    ("<!-- PICTURE run=reports/basic -->\n<!-- /PICTURE -->\n", 1, "unknown block kind PICTURE"),
    ("<!-- CM run=reports/nope -->\n<!-- /CM -->\n", 1, "block CM: run folder reports/nope does not exist"),
    ("<!-- CM_NOPE -->\n<!-- /CM_NOPE -->\n", 1, "no run folder for NOPE"),
    ("<!-- MODEL_SUMMARY spec=no_such_model -->\n<!-- /MODEL_SUMMARY -->\n", 1, "Unknown model 'no_such_model'"),
    ("<!-- RF spec=nets/missing.py:Net -->\n<!-- /RF -->\n", 1, "which is not a zoo model"),  # needs --trust-spec
    ("<!-- CM run=reports/basic oops -->\n<!-- /CM -->\n", 1, "cannot read the marker arguments 'oops'"),
    ("<!-- CM run=reports/basic colour=red -->\n<!-- /CM -->\n", 1, "block CM does not take colour"),
    ("<!-- CURVES run=reports/basic kind=f1 -->\n<!-- /CURVES -->\n", 1, "kind='f1' is not one of acc, loss, lr"),
    ("<!-- ATTRIBUTIONS run=reports/basic -->\n<!-- /ATTRIBUTIONS -->\n", 1, "`cnnscope attribute"),
    ("<!-- MODEL_SUMMARY -->\n<!-- /MODEL_SUMMARY -->\n", 1, "give exactly one of spec=SPEC"),
]


@pytest.mark.parametrize("text, line, message", ERRORS)
def test_errors_exit_2_and_leave_the_file_alone(site, runner, text, line, message):
    readme = site / "BAD.md"
    data = (GOOD + "text $1 \\ \n" + text).encode()
    readme.write_bytes(data)

    result = run_cli(runner, readme)

    assert result.exit_code == 2, result.output
    assert f"{readme}:{line + 4}:" in result.output  # GOOD and the text line come first
    assert message in result.output
    assert "Traceback" not in result.output
    assert readme.read_bytes() == data


def test_content_that_would_break_the_blocks_is_refused(site, runner):
    broken = site / "reports" / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "rf.md").write_text("| unclosed fence |\n```\n")
    readme = site / "BROKEN.md"
    data = GOOD + "<!-- RF run=reports/broken -->\n<!-- /RF -->\n"
    readme.write_text(data)

    result = run_cli(runner, readme)

    assert result.exit_code == 2 and "would change the README's block structure" in result.output
    assert readme.read_text() == data


def test_missing_readme_and_unused_rf_are_errors(site, runner, error_of):
    error_of(run_cli(runner, site / "NOPE.md"))  # no such README
    readme = site / "RF.md"
    readme.write_text(GOOD)
    unused = run_cli(runner, readme, "--rf", "model.py:Net")
    assert error_of(unused).arguments == ("rf_models",) and "RF_NET" in unused.output  # the block it would fill
    assert readme.read_text() == GOOD


def test_rf_option_parsing():
    entry = RfEntry.parse("nets/model.py:NetDilated:RF: NetDilated (32x32 input)")
    assert entry == RfEntry("nets/model.py:NetDilated", "NetDilated", "RF: NetDilated (32x32 input)")
    assert entry.block_keys() == ("NETDILATED", "DILATED")
    assert RfEntry.parse("pkg.mod:ResNet").block_keys() == ("RESNET", "RES")
    assert RfEntry.parse("model.py:Net").block_keys() == ("NET",)


# ---- writing: the mode, a symlink, a read-only README, stale temporary files -------------------------

def test_the_readme_keeps_its_mode_and_link_and_stale_temps_go(site, runner):
    """update-readme writes as an editor would: the mode stays, a symlinked README stays a link to
    its updated target, and temporary files of a killed earlier run are removed."""
    docs = site / "docs"
    docs.mkdir(exist_ok=True)
    target = docs / "LINKED.md"
    target.write_text(GOOD)
    target.chmod(0o664)
    link = site / "LINKED.md"
    link.symlink_to(Path("docs") / "LINKED.md")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = docs / f".LINKED.md.{dead.pid}.x1y2z3w4.tmp"  # left by a write that was killed
    stale.write_text("half a README")

    result = run_cli(runner, link)

    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(Path("docs") / "LINKED.md")
    assert "| macro avg |" in target.read_text() and "stale" not in target.read_text()
    assert target.stat().st_mode & 0o777 == 0o664
    assert sorted(p.name for p in docs.iterdir()) == ["LINKED.md"]


def test_a_read_only_readme_is_refused(site, runner):
    readme = site / "READONLY.md"
    readme.write_text(GOOD)
    readme.chmod(0o444)

    result = run_cli(runner, readme)

    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{readme} is read-only, so it is left as it is" in " ".join(result.output.split())
    assert readme.read_text() == GOOD and readme.stat().st_mode & 0o777 == 0o444


# ---- the seed 002 README's marker set, filled from real short runs ----------------------------------

SMALL_MODEL = '''
import torch.nn as nn

from cnnscope.zoo.compact import Net, NetDilated  # the seed's two classes, for --rf


class Small(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.body(x)
'''
# The seed README's blocks in its order, each with the stale body the seed shipped (abridged).
SEED_README = """# CIFAR-10 \u2014 Compact CNNs \xf0\x9f\xa7\xa0 $HOME \\\\ C:\\\\results

```bash
python update_readme.py   # <!-- RF_NET --> in a fence is text
```

<!-- TEST_SAMPLES_GRID -->
<p><strong>Test Samples (grid)</strong><br><img src="results/base_model/plots/test_samples_grid.png" alt="Test Samples (grid)" width="800"></p>
<!-- /TEST_SAMPLES_GRID -->

<!-- AUGMENTED_SAMPLES_GRID -->
<!-- /AUGMENTED_SAMPLES_GRID -->

### 4.1 Base Model
<!-- MODEL_SUMMARY_BASE -->
<details><summary><b>Model summary (Base)</b></summary>

```
Trainable parameters: 84322
```
</details>
<!-- /MODEL_SUMMARY_BASE -->

**Receptive Field per Layer \u2014 Net**
<!-- RF_NET -->
### RF: Net (32x32 input)
<!-- /RF_NET -->

### 4.2 Dilated Model
<!-- MODEL_SUMMARY_DILATED -->
<!-- /MODEL_SUMMARY_DILATED -->
<!-- RF_DILATED -->
<!-- /RF_DILATED -->

### 5.1 Summary Table
<!-- COMBINED_SUMMARY_TABLE -->
| exp_name | params | best_test_acc |
|---|---|---|
| base_model | 84322 | 87.71 |
<!-- /COMBINED_SUMMARY_TABLE -->
<!-- COMBINED_ACC_PLOT -->
<!-- /COMBINED_ACC_PLOT -->
<!-- COMBINED_LOSS_PLOT -->
<!-- /COMBINED_LOSS_PLOT -->

### 6.1 Base Model
<!-- CM_BASE -->
<!-- /CM_BASE -->
<!-- CLS_REPORT_BASE -->
| avg | precision | recall | f1 |
|---|---|---|---|
| macro avg | 0.876 | 0.877 | 0.876 |
| weighted avg | 0.876 | 0.877 | 0.876 |
<!-- /CLS_REPORT_BASE -->

### 6.2 Dilated Model
<!-- CM_DILATED -->
<!-- /CM_DILATED -->
<!-- CLS_REPORT_DILATED -->
<!-- /CLS_REPORT_DILATED -->

## Conclusion
Both CNNs achieve strong accuracy.
"""


def outside_blocks(text):
    """The README with every block body cut out: what must never change."""
    return re.sub(r"^(<!-- ([A-Z_]+) -->\n).*?^(<!-- /\2 -->)", r"\1\3", text, flags=re.S | re.M)


def averages(run):
    """{'macro avg': (p, r, f1), 'weighted avg': ...} from the run's classification_report.csv."""
    with open(run / "classification_report.csv", newline="") as f:
        return {row["class"]: tuple(float(row[k]) for k in ("precision", "recall", "f1"))
                for row in csv.DictReader(f) if row["class"].endswith(" avg")}


def test_seed_readme_markers_filled_from_short_runs(tmp_path, runner):
    (tmp_path / "model.py").write_text(SMALL_MODEL)
    reports = tmp_path / "reports"
    base, dilated = reports / "base_model", tmp_path / "elsewhere" / "second"
    for out, name in ((reports, "base_model"), (dilated.parent, "second")):
        result = runner.invoke(cli, ["train", f"{tmp_path}/model.py:Small", "--dataset", "fake", "--epochs", "1",
                                     "--batch-size", "128", "--device", "cpu", "--procs", "1", "--out", str(out),
                                     "--name", name])
        assert result.exit_code == 0, result.output
    assert runner.invoke(cli, ["augment", str(dilated), "--n", "4"]).exit_code == 0
    assert runner.invoke(cli, ["compare", str(base), str(dilated), "--out", str(reports / "combined")]).exit_code == 0
    readme = tmp_path / "README.md"
    readme.write_text(SEED_README, encoding="utf-8")

    # the seed's own command line, plus --run for the run that is not under reports/<x>[_model]
    args = [readme, "--run", f"DILATED={dilated}",
            "--rf", f"{tmp_path}/model.py:Net:RF: Net (32x32 input)",
            "--rf", f"{tmp_path}/model.py:NetDilated:RF: NetDilated (32x32 input)",
            "--rf-input", "3", "32", "32", "--rf-ctor", "num_classes=10"]
    result = run_cli(runner, *args)
    assert result.exit_code == 0, result.output
    text = readme.read_text(encoding="utf-8")

    assert outside_blocks(text) == outside_blocks(SEED_README)
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert srcs == ["reports/base_model/plots/test_samples_grid.png",
                    "elsewhere/second/plots/augmented_samples_grid.png",
                    "reports/combined/combined_acc.png", "reports/combined/combined_loss.png",
                    "reports/base_model/plots/cm.png", "elsewhere/second/plots/cm.png"]
    assert all((tmp_path / src).is_file() for src in srcs)
    assert (base / "model_summary.txt").read_text() in body_of(text, "MODEL_SUMMARY_BASE")
    assert (dilated / "model_summary.txt").read_text() in body_of(text, "MODEL_SUMMARY_DILATED")
    assert body_of(text, "RF_NET").startswith("### RF: Net (32x32 input)\n\n| # | Layer |")
    assert "**Final RF:** 55 &nbsp;&nbsp; **Final jump:** 8" in body_of(text, "RF_NET")
    assert body_of(text, "RF_DILATED").startswith("### RF: NetDilated (32x32 input)\n")
    assert "**Final RF:** 45 &nbsp;&nbsp; **Final jump:** 1" in body_of(text, "RF_DILATED")
    summary = body_of(text, "COMBINED_SUMMARY_TABLE")
    assert summary == (reports / "combined" / "summary.md").read_text()
    for run in (base, dilated):
        metrics = json.loads((run / "metrics.json").read_text())
        row = next(line for line in summary.splitlines() if line.startswith(f"| {run.name} |"))
        assert (f"| {metrics['params']:,} | {metrics['macs'] / 1e6:,.2f} M | {metrics['rf']} | "
                f"{metrics['best_val_acc']:.2f} | {metrics['test_acc']:.2f} |") in row
        x = "BASE" if run == base else "DILATED"
        want = [f"| {avg} | " + " | ".join(f"{v:.3f}" for v in values) + " |"
                for avg, values in averages(run).items()]
        assert body_of(text, f"CLS_REPORT_{x}").splitlines()[2:] == want

    assert run_cli(runner, *args, "--check").exit_code == 0
    assert readme.read_text(encoding="utf-8") == text
    # the same table computed from the runs' metrics.json instead of compare's summary.md
    computed = update_text('<!-- COMBINED_SUMMARY_TABLE runs="reports/base_model elsewhere/second" -->\n'
                           "<!-- /COMBINED_SUMMARY_TABLE -->\n", Renderer(tmp_path))
    assert body_of(computed, "COMBINED_SUMMARY_TABLE") == summary


# ---- the project's own README ---------------------------------------------------------------------

PROJECT_README = Path(__file__).resolve().parents[1] / "README.md"


def test_project_readme_is_up_to_date(runner, monkeypatch):
    """The README's result blocks are filled from the committed reports/ and the live zoo."""
    monkeypatch.chdir(PROJECT_README.parent)
    result = runner.invoke(cli, ["update-readme", "--check", str(PROJECT_README)])
    assert result.exit_code == 0, result.output


def test_project_readme_documents_every_block_kind():
    from cnnscope.runs.readme.kinds import KINDS

    text = PROJECT_README.read_text(encoding="utf-8")
    missing = [kind for kind in KINDS if f"`{kind}`" not in text]
    assert not missing, f"README.md does not document block kinds {missing}"


# ---- figures: the code that drew them ---------------------------------------------------------------

def test_figure_code_hash_follows_what_the_drawing_uses(monkeypatch):
    from cnnscope.render import figure_code, plots

    def hashes():
        return {f: figure_code.code_hash(plots, f) for f in ("gate_maps", "gate_shares", "curves")}

    before = hashes()
    monkeypatch.setattr(plots, "GATE_LEGEND_TITLE", "another legend")  # used by gate_maps alone
    after = hashes()
    assert after["gate_maps"] != before["gate_maps"]
    assert after["gate_shares"] == before["gate_shares"] and after["curves"] == before["curves"]
    monkeypatch.setattr(plots, "DILATION_COLOURS", ((0, 0, 0),) * 3)  # used by both gate figures
    assert hashes()["gate_shares"] != before["gate_shares"]


def test_check_fails_on_a_figure_whose_code_changed_and_warns_on_an_unstamped_one(tmp_path, runner, monkeypatch):
    import numpy as np

    from cnnscope.render import plots
    from cnnscope.runs.readme.figures import read_stamp

    run = tmp_path / "reports" / "egrr"
    (run / "plots").mkdir(parents=True)
    plots.gate_shares(["s0.t0", "s0.t1"], np.full((2, 3), 1 / 3), ["d=1", "d=2", "d=4"], groups=[0, 0],
                      path=run / "plots" / "gate_shares.png")
    assert read_stamp(run / "plots" / "gate_shares.png").startswith("cnnscope.render.plots:gate_shares ")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- GATE_SHARES run=reports/egrr -->\n<!-- /GATE_SHARES -->\n")
    assert run_cli(runner, readme).exit_code == 0
    assert run_cli(runner, readme, "--check").exit_code == 0  # drawn by the code there is now

    monkeypatch.setattr(plots, "DILATION_COLOURS", plots.DILATION_COLOURS[::-1])  # the code changes
    stale = run_cli(runner, readme, "--check")
    assert stale.exit_code == 1 and "reports/egrr/plots/gate_shares.png was drawn by figure code that has " \
        "changed since; redraw it with `cnnscope gates reports/egrr`" in " ".join(stale.output.split())
    monkeypatch.undo()

    (run / "plots" / "gate_shares.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # from before figures were stamped
    unknown = run_cli(runner, readme, "--check")
    assert unknown.exit_code == 0 and "does not record the code that drew it" in unknown.output


def test_a_figures_code_hash_is_the_same_in_every_process():
    """A module constant that holds functions (a method registry) has a repr with their addresses,
    which differ from process to process: the hash must not depend on it (or every figure of such
    code would read as stale)."""
    import subprocess
    import sys

    script = ("import importlib; from cnnscope.render.figure_code import code_hash; "
              "print(code_hash(importlib.import_module('cnnscope.runs.inspect'), 'inspect_attributions'))")
    hashes = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
              for _ in range(2)}
    assert len(hashes) == 1 and len(hashes.pop().strip()) == 12
