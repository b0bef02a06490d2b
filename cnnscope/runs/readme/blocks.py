"""The block kinds' contents: a Renderer fills a block from run folders, the zoo and model SPECs."""
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cnnscope.errors import CnnscopeError
from cnnscope.render.tables import markdown_table
from cnnscope.runs import runfiles
from cnnscope.runs.readme.figures import STALE, UNKNOWN, figure_state
from cnnscope.runs.readme.kinds import COMBINED_PLOTS, CURVES, KINDS, RUN_IMAGES, SEED_PREFIXES
from cnnscope.runs.readme.markers import Block

MAX_PATH = 4096  # PATH_MAX: a longer marker value names no file


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
                f"Bad rf_models item {value!r}: expected FILE.py:CLASS or FILE.py:CLASS:\"TITLE\" (or "
                "package.module:CLASS:\"TITLE\"), e.g. model.py:Net:\"RF: Net (32x32 input)\".",
                arguments=("rf_models",),
            )
        return cls(f"{where}:{class_name}", class_name, title.strip())

    def block_keys(self) -> tuple[str, ...]:
        """The <X> of the RF_<X> blocks it may fill: NetDilated -> NETDILATED, or DILATED."""
        key = self.class_name.upper()
        stripped = key.removeprefix("NET") if key.startswith("NET") else key.removesuffix("NET")
        return (key, stripped) if stripped and stripped != key else (key,)


def _fenced(text: str) -> str:
    """`text` in a code fence longer than any backtick run inside it, so the fence cannot break."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}\n"


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

    A README may come from anyone (a pull request), so what it reads stays inside its own tree: a
    path in a marker is relative and resolves, symbolic links followed, below the README's folder,
    and so does every file a block reads (below the folders named by `reports` and `runs` too:
    those the user named). Anything else is refused before it is read.
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
        # the folders whose files blocks may read: the README's tree and the folders the user named
        self.trees = [Path(os.path.realpath(p)) for p in (self.readme_dir, *([reports] if reports is not None else ()),
                                                          *self.runs.values())]
        # the figures shown whose drawing code has changed since they were drawn, and those that do not say
        self.stale_figures, self.unstamped_figures = [], []

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
        return self.FILLS[kind](self, args)

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
            f"Train it into {self.reports / x.lower()}, or name its folder in runs ({x}=PATH).",
            arguments=("runs",),
        )

    # -- helpers

    def _fail(self, message: str, arguments=()):
        raise CnnscopeError(f"{self.where}: block {self.block_name}: {message}", arguments=arguments)

    def _path(self, value: str) -> Path:
        """A path named in a marker: relative to the README's folder, and inside its tree."""
        if len(value) > MAX_PATH or "\0" in value:
            self._fail(f"the path {value[:60]!r}... ({len(value):,} characters) is no path a README block can name. "
                       "Name a run or image inside the README's folder.")
        if Path(value).is_absolute():
            self._fail(f"{value} is an absolute path; paths in markers are relative to the README's folder and stay "
                       f"inside it ({self.readme_dir}).")
        return self._inside(self.readme_dir / value, value)

    def _inside(self, path: Path, shown=None) -> Path:
        """`path` when it resolves (links followed) inside the README's tree or a folder the user named;
        else the block fails, and nothing there is read."""
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(tree) for tree in self.trees):
            self._fail(f"{shown or path} leads outside the README's folder {self.readme_dir} (to {real}). A README "
                       "block reads only files inside the README's own tree (or the runs and reports folders named "
                       "on the command line), so that a README from elsewhere cannot read other files.")
        return path

    def _run_dir(self, args) -> Path:
        if "run" not in args:
            self._fail("needs run=PATH, the run folder (e.g. run=reports/basic).")
        run = self._path(args["run"])
        if not run.is_dir():
            self._fail(f"run folder {args['run']} does not exist (looked for {run}). Train the run or fix "
                       "the path; paths in markers are relative to the README's folder.")
        return run

    def _run_file(self, run: Path, name: str, made_by: str) -> Path:
        path = self._inside(run / name)
        if not path.is_file():
            self._fail(f"{path} does not exist; `{made_by.format(run=run)}` writes it.")
        return path

    def _read(self, read, *args):
        """`read(*args)` (a runfiles reader, or the parse of a marker's ctor=); its error located at the block."""
        try:
            return read(*args)
        except CnnscopeError as e:
            self._fail(str(e), e.arguments)

    def _text(self, path: Path, made_by: str) -> str:
        """A generated text file as block content: "\\n" endings, one final newline."""
        return self._read(runfiles.read_text, path, made_by).replace("\r\n", "\n").rstrip("\n") + "\n"

    def _metrics(self, run: Path) -> dict:
        return self._read(runfiles.read_metrics, self._run_file(run, "metrics.json", "cnnscope train ..."))

    def _rel(self, path: Path) -> str:
        """`path` relative to the README's folder, as markers and image links name it."""
        return Path(os.path.relpath(path, self.readme_dir)).as_posix()

    def _image(self, path: Path, title: str, args, made_by=None) -> str:
        """The block body showing the figure at `path`; a figure cnnscope makes (`made_by` says how) is
        checked against the code that would draw it now."""
        src = self._rel(self._inside(path))
        self._check_figure(path, src, made_by)
        title = html.escape(args.get("title", title), quote=False)
        width = args.get("width", "800")
        if not width.isdigit():
            self._fail(f"width={width!r} is not a number of pixels.")
        alt = title.replace('"', "&quot;")
        return (f'<p><strong>{title}</strong><br><img src="{html.escape(src)}" alt="{alt}" '
                f'width="{width}"></p>\n')

    def _check_figure(self, path: Path, src: str, made_by) -> None:
        state = figure_state(path)
        redraw = f"; redraw it with `{made_by}`" if made_by else ""
        if state == STALE:
            self.stale_figures.append(f"{self.where}: {src} was drawn by figure code that has changed since{redraw}.")
        elif state == UNKNOWN and made_by:
            self.unstamped_figures.append(f"{self.where}: {src} does not record the code that drew it (drawn "
                                          f"before cnnscope stamped its figures), so it cannot be checked{redraw}.")

    def _model(self, args):
        from cnnscope.runs.spec import build_model, parse_key_values

        spec, read_from = args["spec"], "The marker"
        if self.rf_entry is not None:  # --rf: a command-line path, with --rf-ctor
            ctor, read_from = self.rf_ctor, None
        else:
            where, sep, attr = spec.rpartition(":")
            if sep and (where.endswith(".py") or "/" in where):
                spec = f"{self._path(where)}:{attr}"  # a model file named in a marker: relative to the README
            ctor = self._read(parse_key_values, args.get("ctor", "").split())
        try:
            return build_model(spec, ctor, read_from=read_from, trust_spec=self.trust_spec)
        except CnnscopeError as e:
            self._fail(f"SPEC {args['spec']!r}: {e}", e.arguments)

    def _spec_or_run(self, args) -> bool:
        """True for spec=..., False for run=...; exactly one of them must be given."""
        if ("spec" in args) == ("run" in args):
            self._fail("give exactly one of spec=SPEC (computed from the model) or run=PATH (read from a run).")
        return "spec" in args

    # -- block kinds: one method per kind (FILLS, below), the image families (RUN_IMAGES, COMBINED_PLOTS) apart

    def zoo_table(self, args) -> str:
        from cnnscope import zoo
        from cnnscope.core.rf import receptive_field
        from cnnscope.runs.zoo import zoo_table

        names = args.get("models", "").replace(",", " ").split()
        unknown = [n for n in names if n not in zoo.list_models()]
        if unknown:
            self._fail(f"unknown model {', '.join(unknown)}; registered: {', '.join(zoo.list_models())}.")
        rows = zoo_table(names or None).rows
        table = []
        for row in rows:
            final_rf = receptive_field(zoo.build(row["name"]), (3, 32, 32)).final_rf
            table.append((f"`{row['name']}`", row["class"], f"{row['params']:,}", f"{row['macs'] / 1e6:.2f} M",
                          final_rf, row["dataset"]))
        return markdown_table(("Model", "Class", "Params", "MACs (3x32x32)", "RF", "Dataset"), table) + "\n"

    def model_summary(self, args) -> str:
        if self._spec_or_run(args):
            from cnnscope.core.summary import summarize
            from cnnscope.render.summary import model_summary_text

            shape = _parse_shape(args.get("input", "3 32 32"), self.where)
            text = model_summary_text(summarize(self._model(args), shape))
            title = args.get("title", f"Model summary ({args['spec']})")
        else:
            run = self._run_dir(args)
            text = self._text(self._run_file(run, "model_summary.txt", "cnnscope train ..."), "cnnscope train")
            title = args.get("title", f"Model summary ({run.name})")
        return f"<details><summary><b>{html.escape(title, quote=False)}</b></summary>\n\n{_fenced(text)}</details>\n"

    def rf(self, args) -> str:
        from cnnscope import render
        from cnnscope.core.rf import receptive_field

        if not self._spec_or_run(args):
            table = self._text(self._run_file(self._run_dir(args), "rf.md", "cnnscope train ..."), "cnnscope train")
            return f"### {args['title']}\n\n{table}" if "title" in args else table
        if self.rf_entry is not None:
            shape = self.rf_input
        else:
            shape = _parse_shape(args.get("input", "3 32 32"), self.where)
        title = args.get("title", f"RF: {args['spec']} ({shape[1]}x{shape[2]} input)")
        return render.to_markdown(receptive_field(self._model(args), shape), title)

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
        return markdown_table(("metric", "value"), rows) + "\n"

    def cls_report(self, args) -> str:
        m = self._metrics(self._run_dir(args))
        rows = []
        for key in ("macro_avg", "weighted_avg"):
            avg = m.get(key) or {}
            rows.append((key.replace("_", " "), *(_num(avg.get(k), ".3f") for k in ("precision", "recall", "f1"))))
        return markdown_table(("avg", "precision", "recall", "f1"), rows) + "\n"

    def curves(self, args) -> str:
        kind = args.get("kind", "acc")
        if kind not in CURVES:
            self._fail(f"kind={kind!r} is not one of {', '.join(CURVES)}.")
        run = self._run_dir(args)
        name, title = CURVES[kind]
        return self._image(self._run_file(run / "plots", name, "cnnscope train ..."), f"{title} — {run.name}", args,
                           made_by=f"cnnscope evaluate {self._rel(run)}")

    def sharing(self, args) -> str:
        run = self._run_dir(args)
        if "bank" in args:
            paths = [self._run_file(run / "plots", f"sharing_{args['bank']}.png", "cnnscope sharing {run}")]
        else:
            paths = sorted((run / "plots").glob("sharing_*.png"))
            if not paths:
                self._fail(f"{run / 'plots'} has no sharing_<bank>.png; `cnnscope sharing {run}` writes them.")
        return "".join(
            self._image(p, f"Soft-sharing similarity — {p.stem.removeprefix('sharing_')}", args,
                        made_by=f"cnnscope sharing {self._rel(run)}") for p in paths
        )

    def combined_summary_table(self, args) -> str:
        if "runs" in args:
            from cnnscope import render
            from cnnscope.runs import compare

            folders = [self._read(compare.run_folder, self._run_dir({"run": r})) for r in args["runs"].split()]
            for folder in folders:
                self._inside(folder / "metrics.json")
            return render.to_markdown(self._read(compare.comparison, folders))
        return self._text(self._run_file(self._combined_dir(args), "summary.md", "cnnscope compare RUN..."),
                          "cnnscope compare RUN...")

    def image(self, args) -> str:
        if "src" not in args:
            self._fail("needs src=PATH, the image (relative to the README's folder).")
        path = self._path(args["src"])
        if not path.is_file():
            self._fail(f"image {args['src']} does not exist (looked for {path}).")
        return self._image(path, path.stem.replace("_", " "), args)

    # kind -> the method that fills its block
    FILLS = {"ZOO_TABLE": zoo_table, "MODEL_SUMMARY": model_summary, "RF": rf, "RUN_METRICS": run_metrics,
             "CLS_REPORT": cls_report, "CURVES": curves, "SHARING": sharing,
             "COMBINED_SUMMARY_TABLE": combined_summary_table, "IMAGE": image}

    def _run_image(self, kind: str, args) -> str:
        name, title, made_by = RUN_IMAGES[kind]
        if "run" in args or kind not in ("TEST_SAMPLES_GRID", "AUGMENTED_SAMPLES_GRID"):
            run = self._run_dir(args)
            path = self._run_file(run / "plots", name, made_by)
            return self._image(path, f"{title} — {run.name}", args, made_by=made_by.format(run=self._rel(run)))
        # The seed's sample grids name no run: any run shows them. Take the first that has one, from
        # the run folders under reports/ (by name), then the --run folders.
        runs = [*sorted(p for p in self.reports.glob("*") if p.is_dir()), *self.runs.values()]
        found = [run / "plots" / name for run in runs if (run / "plots" / name).is_file()]
        if not found:
            self._fail(f"no run under {self.reports} (nor any of runs) has plots/{name}; give run=PATH, or "
                       f"write it with `{made_by.format(run='RUN')}`.", arguments=("runs",))
        return self._image(found[0], title, args, made_by=made_by.format(run=self._rel(found[0].parent.parent)))

    def _combined_dir(self, args) -> Path:
        combined = self._path(args["combined"]) if "combined" in args else self.reports / "combined"
        if not combined.is_dir():
            self._fail(f"folder {combined} does not exist; `cnnscope compare RUN...` writes it.")
        return combined

    def _combined_plot(self, kind: str, args) -> str:
        name, title = COMBINED_PLOTS[kind]
        path = self._run_file(self._combined_dir(args), name, "cnnscope compare RUN...")
        return self._image(path, title, args, made_by="cnnscope compare RUN...")
