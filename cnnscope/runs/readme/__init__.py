"""README blocks that stay in step with the runs: `cnnscope update-readme`.

A block is a pair of marker lines, each a whole line starting at column 0:

    <!-- CURVES run=reports/basic kind=acc -->
    ...generated, replaced on every update...
    <!-- /CURVES -->

The opening marker names the block's KIND and its arguments (`key=value`, a value with spaces in
double quotes), so a bare `cnnscope update-readme` knows how to fill every block. Everything
outside the blocks is kept byte for byte, and so are the marker lines themselves. Paths in
markers, and the image paths written into blocks, are relative to the README's folder.

Markers inside fenced code (``` or ~~~) are text, not markers. An HTML comment line whose name is
not a block kind and that has no `<!-- /NAME -->` partner is an ordinary comment and is left alone.

The seed README's fixed names keep working: MODEL_SUMMARY_<X>, RF_<X>, CM_<X> and CLS_REPORT_<X>
are the kinds MODEL_SUMMARY, RF, CM and CLS_REPORT for the run of <X> (`--run X=PATH`, else
reports/<x> or reports/<x>_model); RF_<X> is computed from a model file when `--rf` names one.

kinds.py holds the block kinds, markers.py the marker parsing and the text update, blocks.py the
Renderer that fills each kind; update_readme below is the command's one entry point.

Figures: every PNG cnnscope draws records the code that drew it (render/figure_code.py); a figure a
block shows whose drawing code has changed since is stale, and fails --check like stale text. A
figure that records nothing (drawn before cnnscope stamped its figures) is named in a warning.
"""
from dataclasses import dataclass
from pathlib import Path

from cnnscope.errors import CnnscopeError
from cnnscope.runs.readme.blocks import Renderer, RfEntry
from cnnscope.runs.readme.markers import Update, parse_blocks, read_readme, split_lines, update_text
from cnnscope.runs.spec import parse_key_values

MODES = ("write", "check", "diff")


def plan_update(path, **renderer_options) -> tuple[Update, Renderer]:
    """Read the README at `path` and compute its updated text (nothing is written); the renderer
    holds the figures found stale or unchecked."""
    path = Path(path)
    old = read_readme(path)
    renderer = Renderer(path.parent, **renderer_options)
    new = update_text(old, renderer, str(path))
    return Update(path, old, new, len(parse_blocks(split_lines(old), str(path)))), renderer


def parse_run_map(items) -> dict:
    """['X=PATH', ...] -> {X: PATH}: the run folders of the seed names."""
    run_map = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise CnnscopeError(f"Bad runs item {item!r}: expected X=PATH, e.g. BASE=reports/basic.",
                                arguments=("runs",))
        run_map[key] = path
    return run_map


@dataclass(frozen=True)
class Outcome:
    """What `update_readme` did. state: "updated" or "already up to date" when writing, else "stale" or
    "up to date"; diff: the unified diff to show ("" when there is none to show); failed: the README or
    a figure it shows is stale under check (exit 1); stale_figures, unstamped_figures: one message per
    figure (Renderer)."""

    blocks: int
    state: str
    diff: str
    failed: bool
    stale_figures: tuple = ()
    unstamped_figures: tuple = ()


def update_readme(path, mode="write", *, runs=(), rf_models=(), rf_ctor=(), **renderer_options) -> Outcome:
    """Bring the README at `path` up to date (mode "write"), or only compare it ("check", "diff").

    runs: 'X=PATH' strings; rf_models: 'FILE.py:CLASS[:TITLE]' strings; rf_ctor: 'K=V' strings; the
    other options go to the Renderer (reports, rf_input, trust_spec).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    update, renderer = plan_update(path, runs=parse_run_map(runs), rf_entries=[RfEntry.parse(v) for v in rf_models],
                         rf_ctor=parse_key_values(rf_ctor, argument="rf_ctor"), **renderer_options)
    figures = dict(stale_figures=tuple(renderer.stale_figures), unstamped_figures=tuple(renderer.unstamped_figures))
    if mode == "write":
        if update.stale:
            update.write()
        return Outcome(update.blocks, "updated" if update.stale else "already up to date", "", False, **figures)
    stale = update.stale or bool(renderer.stale_figures)
    return Outcome(update.blocks, "stale" if stale else "up to date", update.diff() if update.stale else "",
                   mode == "check" and stale, **figures)
