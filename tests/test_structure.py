"""The architecture, held in place: imports point one way (cli -> runs -> core, runs -> zoo, render called
by cli and runs), no import cycles, short functions, small files.

The checker reads every module's imports with `ast`, function-level imports included: an import inside
a function is still an arrow. It is tested below on a small package written to tmp_path, so that the
checks on the real package cannot pass because the checker sees nothing.
"""
import ast
import subprocess
import sys
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"cnnscope": "cnnscope", "models": "cnnscope.zoo"}  # folder -> the package it installs as
LONG_FUNCTION, BIG_FILE = 60, 400

# importer package -> the packages it must not import (the layers of issue 12)
FORBIDDEN = {
    "cnnscope.core": ("cnnscope.runs", "cnnscope.render", "cnnscope.cli", "cnnscope.zoo"),  # models declare hooks
    "cnnscope.runs": ("cnnscope.cli",),
    "cnnscope.render": ("cnnscope.runs", "cnnscope.cli"),
    "cnnscope.zoo": ("cnnscope",),  # torch only: the zoo imports no other part of cnnscope
}
LAYERS = "cli -> runs -> core; runs -> zoo; render is called by cli and runs and may import only core"


# ---- the checker ----------------------------------------------------------------------------------

def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def module_files(root: Path, packages=PACKAGES) -> dict:
    """{dotted module name: file} for every .py under root/<folder>, named as the package the folder
    installs as; a package is its __init__.py."""
    found = {}
    for folder, package in packages.items():
        for path in sorted((root / folder).rglob("*.py")):
            name = ".".join([package, *path.relative_to(root / folder).with_suffix("").parts])
            found[name.removesuffix(".__init__")] = path
    return found


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_names(name: str, path: Path, tree: ast.Module):
    """(dotted name, its fallback, line) for every import anywhere in the module. `import a.b` gives
    (a.b, a.b); `from B import x` gives (B.x, B): the submodule B.x if there is one, else B. Relative
    imports are resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            yield from ((f"{base}.{alias.name}", base, node.lineno) for alias in node.names)


def known_module(dotted: str, known) -> str | None:
    """The module an import of `dotted` loads: the longest known prefix (cnnscope.core.rf.analyze is
    cnnscope.core.rf); None outside the packages."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def module_imports(name: str, path: Path, known) -> dict:
    """{imported module: first line} of one module, itself excluded. The parent packages Python
    initialises on the way are no arrows (else a package whose __init__ imports its submodules would be
    in a cycle with each of them)."""
    arrows = {}
    for dotted, fallback, line in imported_names(name, path, parse(path)):
        target = dotted if dotted in known else known_module(fallback, known)
        if target and target != name:
            arrows.setdefault(target, line)
    return arrows


def import_graph(files: dict) -> dict:
    """{module: {imported module: line}} over the given modules."""
    return {name: module_imports(name, path, files) for name, path in files.items()}


def cycle_through(graph: dict, start: str) -> list | None:
    """The shortest import path from `start` back to itself, or None (breadth first)."""
    came_from, queue = {start: None}, deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                path = [node]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    return None


def import_cycles(graph: dict) -> list:
    """One message per cycle, named module by module; each module is reported in one cycle at most."""
    seen, found = set(), []
    for module in sorted(graph):
        cycle = None if module in seen else cycle_through(graph, module)
        if cycle:
            seen.update(cycle)
            found.append("import cycle: " + " -> ".join(cycle))
    return found


def wrong_way_imports(graph: dict, files: dict, root: Path) -> list:
    found = []
    for module, arrows in sorted(graph.items()):
        for layer, forbidden in FORBIDDEN.items():
            if not within(module, layer):
                continue
            for target, line in sorted(arrows.items()):
                if any(within(target, f) for f in forbidden) and not within(target, layer):
                    found.append(f"{files[module].relative_to(root)}:{line}: {module} imports {target}; "
                                 f"{layer} must not import {', '.join(forbidden)}")
    return found


def long_functions(files: dict, root: Path, limit=LONG_FUNCTION) -> list:
    found = []
    for path in files.values():
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: function {node.name} is {length} "
                                 f"lines; the limit is {limit}")
    return found


def big_files(files: dict, root: Path, limit=BIG_FILE) -> list:
    found = []
    for path in files.values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(root)} is {lines} lines; the limit is {limit}")
    return found


def report(problems: list, what: str) -> str:
    return f"{len(problems)} {what}:\n  " + "\n  ".join(problems)


# ---- the real package -----------------------------------------------------------------------------

FILES = module_files(ROOT)
GRAPH = import_graph(FILES)


def test_the_checker_sees_the_package():
    # the cli's update-readme imports runs.readme inside the command: a function-level arrow
    assert len(FILES) > 30 and "cnnscope.runs.readme" in GRAPH["cnnscope.cli.readme"]
    assert sum(map(len, GRAPH.values())) > 50


def test_no_import_cycles():
    cycles = import_cycles(GRAPH)
    assert not cycles, report(cycles, "import cycles")


def test_imports_point_one_way():
    wrong = wrong_way_imports(GRAPH, FILES, ROOT)
    assert not wrong, report(wrong, f"imports against the layers ({LAYERS})")


def test_functions_are_short():
    found = long_functions(FILES, ROOT)
    assert not found, report(found, f"functions over {LONG_FUNCTION} lines")


def test_files_are_small():
    found = big_files(FILES, ROOT)
    assert not found, report(found, f"files over {BIG_FILE} lines")


# ---- the checker itself, on a small package -----------------------------------------------------

def write(root: Path, files: dict) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def body(lines: int) -> str:
    """A function of exactly `lines` lines."""
    return "def f():\n" + "    x = 1\n" * (lines - 2) + "    return x\n"


def small_package(root: Path) -> None:
    """A package that keeps every rule, each kind of import statement in it."""
    write(root, {
        "cnnscope/__init__.py": "",
        "cnnscope/core/__init__.py": "from cnnscope.core.a import f\n",
        "cnnscope/core/a.py": body(LONG_FUNCTION),
        "cnnscope/core/b.py": "from . import a\nfrom .a import f\n",
        "cnnscope/render/__init__.py": "",
        "cnnscope/render/r.py": "from cnnscope.core import b\n",
        "cnnscope/runs/__init__.py": "",
        "cnnscope/runs/s.py": "import cnnscope.core.a\nfrom ..render import r\nimport cnnscope.zoo.nets\n",
        "cnnscope/cli/__init__.py": "",
        "cnnscope/cli/c.py": "def cmd():\n    from cnnscope.runs.s import g\n",
        "models/__init__.py": "from . import nets\n",
        "models/nets.py": "import torch\n" + "\n" * (BIG_FILE - 1),
    })


def test_checker_reads_every_kind_of_import(tmp_path):
    small_package(tmp_path)
    graph = import_graph(module_files(tmp_path))
    assert graph["cnnscope.core"] == {"cnnscope.core.a": 1}  # a name from a module: the module
    assert graph["cnnscope.core.b"] == {"cnnscope.core.a": 1}  # relative; a submodule, and a name of it
    assert graph["cnnscope.render.r"] == {"cnnscope.core.b": 1}  # a submodule, not its package
    assert graph["cnnscope.runs.s"] == {"cnnscope.core.a": 1, "cnnscope.render.r": 2,
                                        "cnnscope.zoo.nets": 3}  # models/ is cnnscope.zoo
    assert graph["cnnscope.cli.c"] == {"cnnscope.runs.s": 2}  # inside a function
    assert graph["cnnscope.zoo"] == {"cnnscope.zoo.nets": 1}
    assert graph["cnnscope.zoo.nets"] == {}  # torch is outside the packages


def test_checker_passes_a_clean_package(tmp_path):
    small_package(tmp_path)
    files = module_files(tmp_path)
    graph = import_graph(files)
    assert import_cycles(graph) == [] and wrong_way_imports(graph, files, tmp_path) == []
    assert long_functions(files, tmp_path) == [] and big_files(files, tmp_path) == []


def test_checker_finds_each_problem(tmp_path):
    small_package(tmp_path)
    write(tmp_path, {
        "cnnscope/runs/s.py": "from cnnscope.runs import t\n",  # s -> t -> u -> s
        "cnnscope/runs/t.py": "from .u import h\n",
        "cnnscope/runs/u.py": "import cnnscope.runs.s\n",
        "cnnscope/core/a.py": body(LONG_FUNCTION + 1) + "def g():\n    import cnnscope.render.r\n"
                              "import cnnscope.zoo.nets\n",
        "cnnscope/render/r.py": "def draw():\n    from cnnscope.cli import c\n",
        "models/nets.py": "import cnnscope\n" + "\n" * BIG_FILE,
    })
    files = module_files(tmp_path)
    graph = import_graph(files)
    assert import_cycles(graph) == [
        "import cycle: cnnscope.runs.s -> cnnscope.runs.t -> cnnscope.runs.u -> cnnscope.runs.s"
    ]
    wrong = wrong_way_imports(graph, files, tmp_path)
    assert [w.split(";")[0] for w in wrong] == [
        f"cnnscope/core/a.py:{LONG_FUNCTION + 3}: cnnscope.core.a imports cnnscope.render.r",
        f"cnnscope/core/a.py:{LONG_FUNCTION + 4}: cnnscope.core.a imports cnnscope.zoo.nets",
        "cnnscope/render/r.py:2: cnnscope.render.r imports cnnscope.cli.c",
        "models/nets.py:1: cnnscope.zoo.nets imports cnnscope",
    ]
    assert "cnnscope.core must not import cnnscope.runs, cnnscope.render, cnnscope.cli, cnnscope.zoo" in wrong[0]
    assert long_functions(files, tmp_path) == [
        f"cnnscope/core/a.py:1: function f is {LONG_FUNCTION + 1} lines; the limit is {LONG_FUNCTION}"
    ]
    assert big_files(files, tmp_path) == [f"models/nets.py is {BIG_FILE + 1} lines; the limit is {BIG_FILE}"]


def test_checker_finds_a_cycle_through_a_package(tmp_path):
    write(tmp_path, {"cnnscope/__init__.py": "from cnnscope import x\n", "cnnscope/x.py": "import cnnscope\n"})
    assert import_cycles(import_graph(module_files(tmp_path))) == ["import cycle: cnnscope -> cnnscope.x -> cnnscope"]


# ---- what a command imports -----------------------------------------------------------------------

def test_rf_and_summary_import_no_data_checkpoint_or_other_family():
    """`rf SPEC` and `summary SPEC` load the model's code and their own analysis and renderers: no
    dataset, checkpoint, attribution or inspection code (rf's --erf and the other commands use those),
    and rendering a result imports its own family of renderers alone."""
    code = ("import sys\nfrom cnnscope.cli import cli\n"
            "for args in (['rf', 'basic'], ['summary', 'basic']):\n"
            "    cli.main(args, standalone_mode=False)\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('cnnscope'))), file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(out.stderr.split())
    assert {"cnnscope.runs.rf", "cnnscope.core.summary", "cnnscope.render.rf", "cnnscope.render.summary"} <= loaded
    unused = {"cnnscope.runs.datasets", "cnnscope.runs.image_folder", "cnnscope.runs.checkpoint",
              "cnnscope.runs.inspect", "cnnscope.core.attribution", "cnnscope.core.training",
              "cnnscope.render.inspect", "cnnscope.render.evaluate", "cnnscope.render.plots"}
    assert not loaded & unused, sorted(loaded & unused)


def test_render_families_name_the_module_of_every_result_type():
    """render.FAMILIES (result type -> the module registering its renderers) is complete and right:
    rendering a result imports that module alone."""
    import importlib
    import pkgutil

    from cnnscope import render

    for info in pkgutil.iter_modules(render.__path__):
        importlib.import_module(f"cnnscope.render.{info.name}")
    registered = {cls.__name__: table.__module__ for cls, (table, _) in render._RENDERERS.items()}
    assert registered == {name: f"cnnscope.render.{module}" for name, module in render.FAMILIES.items()}
