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
"""
import difflib
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cnnscope.runs import runfiles
from cnnscope.runs.checkpoint import atomic_write_bytes
from cnnscope.errors import CnnscopeError

# A marker is a whole line; the name is upper case. Args are parsed separately (ARG_RE).
MARKER_RE = re.compile(r"<!--[ \t]*(/?)([A-Z][A-Z0-9_]*)(?:[ \t]+(.*?))?[ \t]*-->[ \t]*")
ARG_RE = re.compile(r"""[ \t]*([a-z_]+)=(?:"([^"]*)"|'([^']*)'|([^\s"']+))""")
FENCE_RE = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")

# Images a run folder holds under plots/: kind -> (file, default title, command that writes it).
RUN_IMAGES = {
    "CM": ("cm.png", "Confusion matrix", "cnnscope evaluate {run}"),
    "TEST_SAMPLES_GRID": ("test_samples_grid.png", "Test samples", "cnnscope evaluate {run}"),
    "MISCLASSIFIED_GRID": ("misclassified_grid.png", "Misclassified test samples", "cnnscope evaluate {run}"),
    "AUGMENTED_SAMPLES_GRID": ("augmented_samples_grid.png", "Augmented training samples",
                               "cnnscope augment {run}"),
    "GATE_MAPS": ("gate_maps.png", "Entropy-gate dilation maps", "cnnscope gates {run}"),
    "GATE_SHARES": ("gate_shares.png", "Dilation share per stage and step", "cnnscope gates {run}"),
    "ATTRIBUTIONS": ("attributions.png", "Attributions", "cnnscope attribute {run}"),
    "ERF": ("erf.png", "Effective receptive field", "cnnscope rf MODEL --erf {run}"),
}
CURVES = {"acc": ("acc_curves.png", "Accuracy"), "loss": ("loss_curves.png", "Loss"),
          "lr": ("lr.png", "Learning rate")}
COMBINED_PLOTS = {"COMBINED_ACC_PLOT": ("combined_acc.png", "Accuracy, all runs"),
                  "COMBINED_LOSS_PLOT": ("combined_loss.png", "Loss, all runs")}
IMAGE_ARGS = ("title", "width")

# kind -> the arguments its opening marker accepts
KINDS = {
    "ZOO_TABLE": ("models",),
    "MODEL_SUMMARY": ("spec", "ctor", "input", "run", "title"),
    "RF": ("spec", "ctor", "input", "run", "title"),
    "RUN_METRICS": ("run",),
    "CLS_REPORT": ("run",),
    "CURVES": ("run", "kind", *IMAGE_ARGS),
    "SHARING": ("run", "bank", *IMAGE_ARGS),
    "COMBINED_SUMMARY_TABLE": ("runs", "combined"),
    "IMAGE": ("src", *IMAGE_ARGS),
    **{kind: ("run", *IMAGE_ARGS) for kind in RUN_IMAGES},
    **{kind: ("combined", *IMAGE_ARGS) for kind in COMBINED_PLOTS},
}
# The seed's per-run names: <PREFIX>_<X> is the kind <PREFIX> for the run of X.
SEED_PREFIXES = ("MODEL_SUMMARY", "CLS_REPORT", "CM", "RF")


@dataclass(frozen=True)
class Block:
    name: str  # as written in the marker: CURVES, CM_BASE, ...
    args: tuple  # ((key, value), ...) in marker order
    open_index: int  # 0-based index of the opening marker line
    close_index: int

    @property
    def line(self) -> int:
        return self.open_index + 1


@dataclass(frozen=True)
class RfEntry:
    """One `--rf file.py:Class:"Title"`: the model whose RF table fills block RF_<CLASS>."""
    spec: str
    class_name: str
    title: str

    @classmethod
    def parse(cls, value: str) -> "RfEntry":
        # The title may hold colons ("RF: Net (32x32 input)"), so split after the file or module.
        if ".py:" in value:
            where, _, rest = value.partition(".py:")
            where += ".py"
        else:
            where, _, rest = value.partition(":")
        class_name, _, title = rest.partition(":")
        if not where or not class_name.isidentifier():
            raise CnnscopeError(
                f"Bad --rf value {value!r}: expected FILE.py:CLASS or FILE.py:CLASS:\"TITLE\" (or "
                "package.module:CLASS:\"TITLE\"), e.g. --rf model.py:Net:\"RF: Net (32x32 input)\"."
            )
        return cls(f"{where}:{class_name}", class_name, title.strip())

    def block_keys(self) -> tuple[str, ...]:
        """The <X> of the RF_<X> blocks it may fill: NetDilated -> NETDILATED, or DILATED."""
        key = self.class_name.upper()
        stripped = key.removeprefix("NET") if key.startswith("NET") else key.removesuffix("NET")
        return (key, stripped) if stripped and stripped != key else (key,)


# ---- parsing ----------------------------------------------------------------------------------

def split_lines(text: str) -> list[str]:
    """Lines with their endings ("\\n" or "\\r\\n"); joining them gives `text` back exactly."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def _is_known(name: str) -> bool:
    return name in KINDS or any(name.startswith(p + "_") and len(name) > len(p) + 1 for p in SEED_PREFIXES)


def _marker_lines(lines):
    """(index, is_close, name, raw args) for every marker-shaped line outside fenced code."""
    fence = None  # the opening fence's characters while inside fenced code
    for i, line in enumerate(lines):
        bare = line.rstrip("\r\n")
        if fence:
            if re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", bare):
                fence = None
            continue
        opener = FENCE_RE.fullmatch(bare)
        if opener and not (opener[1][0] == "`" and "`" in opener[2]):
            fence = opener[1]
            continue
        marker = MARKER_RE.fullmatch(bare)
        if marker:
            yield i, marker[1] == "/", marker[2], marker[3] or ""


def _parse_args(raw: str, where: str) -> tuple:
    args, pos = [], 0
    while pos < len(raw.rstrip()):
        m = ARG_RE.match(raw, pos)
        if not m:
            raise CnnscopeError(
                f"{where}: cannot read the marker arguments {raw[pos:].strip()!r}. Write them as "
                'key=value, a value with spaces in double quotes: title="RF: Net".'
            )
        value = next(v for v in m.groups()[1:] if v is not None)
        args.append((m[1], value))
        pos = m.end()
    keys = [k for k, _ in args]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise CnnscopeError(f"{where}: argument {', '.join(twice)} is given twice in the marker.")
    return tuple(args)


def parse_blocks(lines: list[str], source: str) -> list[Block]:
    """The blocks of a README; every structural mistake is a CnnscopeError naming the line."""
    found = list(_marker_lines(lines))
    closed_names = {name for _, is_close, name, _ in found if is_close}
    blocks, seen = [], {}
    open_marker = None  # (index, name, raw args)
    for i, is_close, name, raw in found:
        where = f"{source}:{i + 1}"
        if is_close:
            if raw:
                raise CnnscopeError(f"{where}: a closing marker takes no arguments; write <!-- /{name} -->.")
            if open_marker is None:
                raise CnnscopeError(
                    f"{where}: closing marker <!-- /{name} --> has no opening <!-- {name} ... --> above it."
                )
            start, open_name, open_raw = open_marker
            if name != open_name:
                raise CnnscopeError(
                    f"{where}: <!-- /{name} --> closes a block that is not open; the block {open_name} "
                    f"opened at line {start + 1} is. Blocks cannot nest or overlap: close {open_name} first."
                )
            args = _parse_args(open_raw, f"{source}:{start + 1}")
            key = (name, frozenset(args))
            if key in seen:
                raise CnnscopeError(
                    f"{source}:{start + 1}: block {name} with the same arguments is already at line "
                    f"{seen[key]}. Remove one of the two (or give them different arguments)."
                )
            seen[key] = start + 1
            blocks.append(Block(name, args, start, i))
            open_marker = None
        elif _is_known(name) or name in closed_names:
            if open_marker is not None:
                raise CnnscopeError(
                    f"{where}: block {name} opens inside block {open_marker[1]} (line {open_marker[0] + 1}). "
                    f"Blocks cannot nest: close {open_marker[1]} with <!-- /{open_marker[1]} --> first."
                )
            if not _is_known(name):
                raise CnnscopeError(
                    f"{where}: unknown block kind {name}. Known kinds: {', '.join(sorted(KINDS))}, and the "
                    f"seed names {', '.join(p + '_<X>' for p in SEED_PREFIXES)}."
                )
            open_marker = (i, name, raw)
    if open_marker is not None:
        start, name, _ = open_marker
        raise CnnscopeError(
            f"{source}:{start + 1}: block {name} is never closed. Add <!-- /{name} --> on its own line "
            "after the block."
        )
    return blocks


# ---- rendering ----------------------------------------------------------------------------------

def _fenced(text: str) -> str:
    """`text` in a code fence longer than any backtick run inside it, so the fence cannot break."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}\n"


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _num(value, spec: str) -> str:
    return "N/A" if value is None else format(value, spec)


def _parse_shape(value: str, where: str) -> tuple[int, int, int]:
    parts = value.replace(",", " ").split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CnnscopeError(f'{where}: input={value!r} is not three integers; write input="3 32 32".')
    return tuple(int(p) for p in parts)


class Renderer:
    """Fills blocks from run folders, the zoo and model SPECs.

    readme_dir: paths in markers and image paths are relative to it. reports: the folder holding the
    run folders (default <readme_dir>/reports). runs: {X: run folder} for the seed names (`--run`).
    rf_entries / rf_input / rf_ctor: the seed's `--rf`, `--rf-input`, `--rf-ctor`. trust_spec: build
    a marker's spec= even when it is no zoo model (spec.check_file_spec; `--rf` models are the user's).
    """

    def __init__(self, readme_dir, *, reports=None, runs=None, rf_entries=(), rf_input=(3, 32, 32),
                 rf_ctor=None, trust_spec=False):
        self.readme_dir = Path(readme_dir)
        self.reports = Path(reports) if reports is not None else self.readme_dir / "reports"
        self.runs = {k.upper(): Path(v) for k, v in (runs or {}).items()}
        self.rf_entries = list(rf_entries)
        self.rf_input = tuple(rf_input)
        self.rf_ctor = dict(rf_ctor or {})
        self.used_rf_entries = set()
        self.trust_spec = trust_spec

    # -- dispatch

    def render(self, block: Block, where: str) -> str:
        # What the kind methods below need to know about the block at hand besides its args.
        self.where, self.block_name, self.rf_entry = where, block.name, None
        kind, args = self._resolve(block, where)
        allowed = KINDS[kind]
        unknown = [k for k in args if k not in allowed]
        if unknown:
            raise CnnscopeError(
                f"{where}: block {block.name} does not take {', '.join(unknown)}; it takes "
                f"{', '.join(allowed) or 'no arguments'}."
            )
        if kind in RUN_IMAGES:
            return self._run_image(kind, args)
        if kind in COMBINED_PLOTS:
            return self._combined_plot(kind, args)
        return getattr(self, kind.lower())(args)

    def _resolve(self, block: Block, where: str) -> tuple[str, dict]:
        """Block -> (kind, args); the seed's <PREFIX>_<X> names get the run (or --rf model) of X."""
        args = dict(block.args)
        if block.name in KINDS:
            return block.name, args
        prefix = next(p for p in SEED_PREFIXES if block.name.startswith(p + "_"))
        x = block.name[len(prefix) + 1:]
        label = x.replace("_", " ").title()
        if prefix == "RF":
            entry = next((e for e in self.rf_entries if x in e.block_keys()), None)
            if entry is not None:
                self.used_rf_entries.add(entry)
                self.rf_entry = entry
                h, w = self.rf_input[1:]
                args.setdefault("title", entry.title or f"RF: {entry.class_name} ({h}x{w} input)")
                return "RF", {"spec": entry.spec, **args}
        if "run" not in args and "spec" not in args:
            args["run"] = self._seed_run(x, where)
        if prefix == "CM":
            args.setdefault("title", f"{RUN_IMAGES['CM'][1]} — {label}")
        if prefix == "MODEL_SUMMARY":
            args.setdefault("title", f"Model summary ({label})")
        return prefix, args

    def _seed_run(self, x: str, where: str) -> str:
        if x in self.runs:
            candidates = [self.runs[x]]
        else:
            candidates = [self.reports / x.lower(), self.reports / f"{x.lower()}_model"]
        for path in candidates:
            if path.is_dir():
                return os.path.relpath(path, self.readme_dir)
        raise CnnscopeError(
            f"{where}: no run folder for {x}: {' and '.join(str(c) for c in candidates)} do not exist. "
            f"Train it (cnnscope train ... --name {x.lower()}) or name its folder with --run {x}=PATH."
        )

    # -- helpers

    def _fail(self, message: str):
        raise CnnscopeError(f"{self.where}: block {self.block_name}: {message}")

    def _path(self, value: str) -> Path:
        return self.readme_dir / value

    def _run_dir(self, args) -> Path:
        if "run" not in args:
            self._fail("needs run=PATH, the run folder (e.g. run=reports/basic).")
        run = self._path(args["run"])
        if not run.is_dir():
            self._fail(f"run folder {args['run']} does not exist (looked for {run}). Train the run or fix "
                       "the path; paths in markers are relative to the README's folder.")
        return run

    def _run_file(self, run: Path, name: str, made_by: str) -> Path:
        path = run / name
        if not path.is_file():
            self._fail(f"{path} does not exist; `{made_by.format(run=run)}` writes it.")
        return path

    def _read(self, read, *args):
        """runfiles' `read(*args)`; its error located at the block."""
        try:
            return read(*args)
        except CnnscopeError as e:
            self._fail(str(e))

    def _text(self, path: Path, made_by: str) -> str:
        """A generated text file as block content: "\\n" endings, one final newline."""
        return self._read(runfiles.read_text, path, made_by).replace("\r\n", "\n").rstrip("\n") + "\n"

    def _metrics(self, run: Path) -> dict:
        return self._read(runfiles.read_metrics, self._run_file(run, "metrics.json", "cnnscope train ..."))

    def _image(self, path: Path, title: str, args) -> str:
        src = Path(os.path.relpath(path, self.readme_dir)).as_posix()
        title = html.escape(args.get("title", title), quote=False)
        width = args.get("width", "800")
        if not width.isdigit():
            self._fail(f"width={width!r} is not a number of pixels.")
        alt = title.replace('"', "&quot;")
        return (f'<p><strong>{title}</strong><br><img src="{html.escape(src)}" alt="{alt}" '
                f'width="{width}"></p>\n')

    def _model(self, args):
        from cnnscope.runs.spec import build_model, parse_ctor

        spec, read_from = args["spec"], "The marker"
        if self.rf_entry is not None:  # --rf: a command-line path, with --rf-ctor
            ctor, read_from = self.rf_ctor, None
        else:
            where, sep, attr = spec.rpartition(":")
            if sep and (where.endswith(".py") or "/" in where):
                spec = f"{self._path(where)}:{attr}"  # a model file named in a marker: relative to the README
            ctor = parse_ctor(args.get("ctor", "").split())
        try:
            return build_model(spec, ctor, read_from=read_from, trust_spec=self.trust_spec)
        except CnnscopeError as e:
            self._fail(f"SPEC {args['spec']!r}: {e}")

    def _spec_or_run(self, args) -> bool:
        """True for spec=..., False for run=...; exactly one of them must be given."""
        if ("spec" in args) == ("run" in args):
            self._fail("give exactly one of spec=SPEC (computed from the model) or run=PATH (read from a run).")
        return "spec" in args

    # -- block kinds (one method per kind, named after it)

    def zoo_table(self, args) -> str:
        import models
        from cnnscope.core import rf, summary

        names = args.get("models", "").replace(",", " ").split()
        unknown = [n for n in names if n not in models.list_models()]
        if unknown:
            self._fail(f"unknown model {', '.join(unknown)}; registered: {', '.join(models.list_models())}.")
        rows = summary.zoo_rows(names or None)
        table = []
        for row in rows:
            final_rf = rf.analyze(models.build(row["name"]), (3, 32, 32)).final_rf
            table.append((f"`{row['name']}`", row["class"], f"{row['params']:,}", f"{row['macs'] / 1e6:.2f} M",
                          final_rf, row["dataset"]))
        return _md_table(("Model", "Class", "Params", "MACs (3x32x32)", "RF", "Dataset"), table)

    def model_summary(self, args) -> str:
        if self._spec_or_run(args):
            from cnnscope.core import summary

            shape = _parse_shape(args.get("input", "3 32 32"), self.where)
            text = summary.summarize(self._model(args), shape).to_text()
            title = args.get("title", f"Model summary ({args['spec']})")
        else:
            run = self._run_dir(args)
            text = self._text(self._run_file(run, "model_summary.txt", "cnnscope train ..."), "cnnscope train")
            title = args.get("title", f"Model summary ({run.name})")
        return f"<details><summary><b>{html.escape(title, quote=False)}</b></summary>\n\n{_fenced(text)}</details>\n"

    def rf(self, args) -> str:
        from cnnscope.core import rf

        if not self._spec_or_run(args):
            table = self._text(self._run_file(self._run_dir(args), "rf.md", "cnnscope train ..."), "cnnscope train")
            return f"### {args['title']}\n\n{table}" if "title" in args else table
        if self.rf_entry is not None:
            shape = self.rf_input
        else:
            shape = _parse_shape(args.get("input", "3 32 32"), self.where)
        title = args.get("title", f"RF: {args['spec']} ({shape[1]}x{shape[2]} input)")
        return rf.rf_markdown(self._model(args), shape, title=title)

    def run_metrics(self, args) -> str:
        m = self._metrics(self._run_dir(args))
        rows = [
            ("model", f"`{m.get('model')}`"),
            ("dataset", m.get("dataset")),
            ("params", _num(m.get("params"), ",")),
            ("test accuracy (%)", _num(m.get("test_acc"), ".2f")),
            ("test loss", _num(m.get("test_loss"), ".4f")),
            (f"best {m.get('selected_on', 'val')} accuracy (%)", _num(m.get("best_val_acc"), ".2f")),
            ("best epoch", f"{m.get('best_epoch')} of {m.get('epochs')}"),
            ("train time (s)", _num(m.get("train_time_s"), ".1f")),
            ("images/s", _num(m.get("images_per_s"), ",.0f")),
        ]
        return _md_table(("metric", "value"), rows)

    def cls_report(self, args) -> str:
        m = self._metrics(self._run_dir(args))
        rows = []
        for key in ("macro_avg", "weighted_avg"):
            avg = m.get(key) or {}
            rows.append((key.replace("_", " "), *(_num(avg.get(k), ".3f") for k in ("precision", "recall", "f1"))))
        return _md_table(("avg", "precision", "recall", "f1"), rows)

    def curves(self, args) -> str:
        kind = args.get("kind", "acc")
        if kind not in CURVES:
            self._fail(f"kind={kind!r} is not one of {', '.join(CURVES)}.")
        run = self._run_dir(args)
        name, title = CURVES[kind]
        return self._image(self._run_file(run / "plots", name, "cnnscope train ..."), f"{title} — {run.name}", args)

    def sharing(self, args) -> str:
        run = self._run_dir(args)
        if "bank" in args:
            paths = [self._run_file(run / "plots", f"sharing_{args['bank']}.png", "cnnscope sharing {run}")]
        else:
            paths = sorted((run / "plots").glob("sharing_*.png"))
            if not paths:
                self._fail(f"{run / 'plots'} has no sharing_<bank>.png; `cnnscope sharing {run}` writes them.")
        return "".join(
            self._image(p, f"Soft-sharing similarity — {p.stem.removeprefix('sharing_')}", args) for p in paths
        )

    def combined_summary_table(self, args) -> str:
        if "runs" in args:
            from cnnscope import render
            from cnnscope.core.metrics import CompareResult
            from cnnscope.runs import compare

            folders = [compare.run_folder(self._run_dir({"run": r})) for r in args["runs"].split()]
            return render.to_markdown(CompareResult(self._read(compare.summary_rows, folders)))
        return self._text(self._run_file(self._combined_dir(args), "summary.md", "cnnscope compare RUN..."),
                          "cnnscope compare RUN...")

    def image(self, args) -> str:
        if "src" not in args:
            self._fail("needs src=PATH, the image (relative to the README's folder).")
        path = self._path(args["src"])
        if not path.is_file():
            self._fail(f"image {args['src']} does not exist (looked for {path}).")
        return self._image(path, path.stem.replace("_", " "), args)

    def _run_image(self, kind: str, args) -> str:
        name, title, made_by = RUN_IMAGES[kind]
        if "run" in args or kind not in ("TEST_SAMPLES_GRID", "AUGMENTED_SAMPLES_GRID"):
            run = self._run_dir(args)
            path = self._run_file(run / "plots", name, made_by)
            return self._image(path, f"{title} — {run.name}", args)
        # The seed's sample grids name no run: any run shows them. Take the first that has one, from
        # the run folders under reports/ (by name), then the --run folders.
        runs = [*sorted(p for p in self.reports.glob("*") if p.is_dir()), *self.runs.values()]
        found = [run / "plots" / name for run in runs if (run / "plots" / name).is_file()]
        if not found:
            self._fail(f"no run under {self.reports} (nor any --run) has plots/{name}; give run=PATH, or "
                       f"write it with `{made_by.format(run='RUN')}`.")
        return self._image(found[0], title, args)

    def _combined_dir(self, args) -> Path:
        combined = self._path(args["combined"]) if "combined" in args else self.reports / "combined"
        if not combined.is_dir():
            self._fail(f"folder {combined} does not exist; `cnnscope compare RUN...` writes it.")
        return combined

    def _combined_plot(self, kind: str, args) -> str:
        name, title = COMBINED_PLOTS[kind]
        path = self._run_file(self._combined_dir(args), name, "cnnscope compare RUN...")
        return self._image(path, title, args)


# ---- the update ---------------------------------------------------------------------------------

def _newline(text: str) -> str:
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf >= text.count("\n") - crlf else "\n"


def update_text(text: str, renderer: Renderer, source: str = "README.md") -> str:
    """`text` with every block body regenerated; raises CnnscopeError and changes nothing on error."""
    lines = split_lines(text)
    blocks = parse_blocks(lines, source)
    newline = _newline(text)
    out, pos = [], 0
    for block in blocks:
        where = f"{source}:{block.line}"
        out += lines[pos:block.open_index + 1]
        out.append(renderer.render(block, where).replace("\n", newline))
        pos = block.close_index
    out += lines[pos:]
    unused = [e for e in renderer.rf_entries if e not in renderer.used_rf_entries]
    if unused:
        raise CnnscopeError(
            f"--rf {unused[0].spec} fills no block: {source} has no "
            f"{' or '.join('RF_' + k for k in unused[0].block_keys())} block. Add one, or drop the --rf."
        )
    new = "".join(out)
    # Generated content must not change the block structure (a stray fence or marker line in a run's
    # file would swallow the closing marker on the next update).
    try:
        after = [(b.name, b.args) for b in parse_blocks(split_lines(new), source)]
    except CnnscopeError:
        after = None
    if after != [(b.name, b.args) for b in blocks]:
        raise CnnscopeError(
            f"{source}: the generated content would change the README's block structure (an unbalanced "
            "code fence or a marker line in a run's text file). Check the run files the blocks read."
        )
    return new


@dataclass
class Update:
    path: Path
    old: str
    new: str
    blocks: int

    @property
    def stale(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        name = str(self.path)
        return "".join(difflib.unified_diff(
            split_lines(self.old), split_lines(self.new), fromfile=name, tofile=f"{name} (updated)"
        ))

    def write(self) -> None:
        data = self.new.encode("utf-8", "surrogateescape")
        atomic_write_bytes(self.path, lambda f: f.write(data))


def read_readme(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise CnnscopeError(f"README {path} does not exist. Pass the README to update: cnnscope update-readme PATH.")
    # surrogateescape: bytes that are not UTF-8 pass through unchanged.
    return path.read_bytes().decode("utf-8", "surrogateescape")


def plan_update(path, **renderer_options) -> Update:
    """Read the README at `path` and compute its updated text (nothing is written)."""
    path = Path(path)
    old = read_readme(path)
    renderer = Renderer(path.parent, **renderer_options)
    new = update_text(old, renderer, str(path))
    return Update(path, old, new, len(parse_blocks(split_lines(old), str(path))))
