"""SPEC -> nn.Module.

A SPEC is one of
  - a registry name:            basic
  - a file and an attribute:    path/to/model.py:NetDilated
  - a module and an attribute:  package.module:attr
The attribute is a class or function; it is called with the `--ctor k=v` keywords.
"""
import ast
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
import sysconfig
import warnings
from pathlib import Path

from cnnscope.errors import CnnscopeError, CnnscopeWarning, SpecError, TrustError


def parse_key_values(items, *, argument="ctor", example="num_classes=100") -> dict:
    """['k=v', ...] -> {k: literal(v)}. Values are Python literals; a bare word is a string.

    `argument` names the parameter the items came from, so that an error can say which (the CLI
    adds the option it is); `example` is a valid item shown in the error.
    """
    out = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise SpecError(
                f"Bad {argument} item {item!r}: expected KEY=VALUE with KEY a Python identifier, e.g. {example}.",
                arguments=(argument,),
            )
        raw = raw.strip()
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            if not raw.isidentifier():
                raise SpecError(
                    f"Bad {argument} item {item!r}: {raw!r} is not a Python literal. Use numbers, quoted strings, "
                    f"True/False/None, lists, tuples or dicts, e.g. {example}.", arguments=(argument,),
                ) from None
            value = raw  # a bare word such as mode=fast reads as the string 'fast'
        if key in out:
            raise SpecError(f"Bad {argument} items: {key} is given twice ({key}={out[key]!r} and {item!r}). "
                                "Give each key once.", arguments=(argument,))
        out[key] = value
    return out


# Top-level packages that cnnscope imported from a user's folder (a package root's parent, the current
# folder, or a folder on the import path that is not an installation's), by name -> the folder they came
# from. A later SPEC that names a package of the same name in another folder must not get the cached
# one: those entries are dropped from sys.modules first.
_USER_PACKAGES: dict[str, Path] = {}


def package_root(path: Path) -> Path | None:
    """The outermost folder of the package `path` lies in (its folder has __init__.py, and so on up
    while the names are importable), or None for a plain file."""
    if not path.stem.isidentifier():
        return None
    root = None
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.name.isidentifier() and folder.parent != folder:
        root = folder
        folder = folder.parent
    return root


def _origin(module) -> Path | None:
    """Where a module was imported from: its file, or a namespace package's first folder."""
    where = getattr(module, "__file__", None)
    if where is None:
        locations = list(getattr(module, "__path__", None) or ())
        where = locations[0] if locations else None
    return Path(where).resolve() if where else None


def _spec_origin(module_spec) -> Path | None:
    if module_spec is None:
        return None
    if module_spec.has_location and module_spec.origin:
        return Path(module_spec.origin).resolve()
    locations = list(module_spec.submodule_search_locations or ())
    return Path(locations[0]).resolve() if locations else None


@functools.cache
def _installed_roots() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple({Path(paths[k]).resolve() for k in ("purelib", "platlib", "stdlib", "platstdlib")})


def installed(path: Path) -> bool:
    """A module of an installed distribution or of the standard library: importable anywhere. A
    package of the user's own (in their project folder) that shares its name with the package a
    SPEC names may be shadowed while the SPEC's is imported; an installed one never is."""
    return any(path.is_relative_to(root) for root in _installed_roots())


def _forget(top: str) -> None:
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    _USER_PACKAGES.pop(top, None)


def _make_room(top: str, wanted: Path | None, what: str) -> None:
    """Before importing the package `top` from `wanted` (its __init__.py or module file): drop a
    package of that name that cnnscope imported earlier from another folder; refuse to shadow any
    other module of that name that is already imported."""
    import importlib.machinery

    loaded = sys.modules.get(top)
    if loaded is None and top not in _USER_PACKAGES:  # not imported yet: would this import shadow another?
        other = _spec_origin(importlib.machinery.PathFinder.find_spec(top, sys.path))
        if other is not None and other != wanted and installed(other):
            raise SpecError(
                f"Cannot import {what} as the package {top!r}: an installed module of that name is on the "
                f"import path ({other}), and cnnscope or your code may need it. Rename the package folder {top!r}."
            )
    if loaded is None or _origin(loaded) == wanted:
        return
    if top in _USER_PACKAGES:
        _forget(top)
        return
    if wanted is not None:
        raise SpecError(
            f"Cannot import {what} as the package {top!r}: a module of that name is already imported from "
            f"{_origin(loaded) or 'a built-in location'}. Rename the package folder {top!r}."
        )


def _load_plain_file(path: Path):
    """A file outside any package, under a private name; its folder goes on sys.path so that it can
    import its neighbours."""
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = f"cnnscope_user_{hashlib.md5(str(path.resolve()).encode()).hexdigest()[:12]}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a file that calls sys.exit() is a broken model file too
        del sys.modules[name]
        advice = "Check that the modules it imports are installed or lie beside it."
        if isinstance(e, ImportError) and "relative import" in str(e):
            advice = (f"It uses a relative import (from .x import y), which needs a package: its folder "
                      f"{folder} has no __init__.py. Add one (cnnscope then imports the file as part of "
                      "that package), or import its neighbours by name (from x import y).")
        elif not isinstance(e, ImportError):
            advice = "The file raised while it was imported; fix the error it names."
        raise SpecError(f"Importing {path} failed: {type(e).__name__}: {e}. {advice}") from None
    return module


def _load_package_file(path: Path, root: Path):
    """A file inside a package: the package root's parent goes on sys.path and the file is imported
    as its dotted module (root.sub.stem), so that its relative imports work. Those folders are on
    sys.path only during the import (the package's own later imports go by its __path__): a folder left
    there would serve a stale package of the same name to a later `pkg.module:attr` SPEC."""
    path = path.resolve()
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    dotted = ".".join(parts)
    top = root.name
    _make_room(top, (root / "__init__.py").resolve(), f"{path}")
    base = str(root.parent)
    folder = str(path.parent)  # as for a plain file: a neighbour imported by its bare name still works
    added = [p for p in (base, folder) if p not in sys.path]
    sys.path[:0] = added
    _USER_PACKAGES[top] = root.parent
    try:
        module = importlib.import_module(dotted)
    except (Exception, SystemExit) as e:
        if top not in sys.modules:
            _USER_PACKAGES.pop(top, None)
        if isinstance(e, ImportError):
            advice = (f"Relative imports (from .x import y, from ..x import y) must name modules inside the "
                      f"package {root}; absolute ones must be installed or lie in {base}. Check the import "
                      "the error names.")
        else:
            advice = "The package raised while it was imported; fix the error it names."
        raise SpecError(
            f"Importing {path} as the module {dotted} (package root {root}, imported from {base}) failed: "
            f"{type(e).__name__}: {e}. {advice}"
        ) from None
    finally:
        for p in added:
            sys.path.remove(p)
    if _origin(module) != path:
        raise SpecError(
            f"Importing {path} as the module {dotted} gave {_origin(module)} instead. Another module named "
            f"{dotted!r} comes first on the import path; rename the package folder {top!r}."
        )
    return module


def _load_file(path: Path):
    if not path.is_file():
        raise SpecError(f"Model file {path} does not exist. Check the path in SPEC (file.py:Name).")
    root = package_root(path.resolve())
    return _load_plain_file(path) if root is None else _load_package_file(path, root)


def _import_module(where: str, spec: str):
    """Import `package.module` from sys.path, and else from the current folder (which a console
    script does not put on sys.path); the current folder is on sys.path only during this import."""
    import importlib.machinery
    import os

    top = where.partition(".")[0]
    cwd = Path(os.getcwd()).resolve()
    from_path = importlib.machinery.PathFinder.find_spec(top, sys.path)
    from_cwd = None if from_path is not None else importlib.machinery.PathFinder.find_spec(top, [str(cwd)])
    if top in _USER_PACKAGES:
        wanted = _spec_origin(from_path or from_cwd)
        if wanted is None or _origin(sys.modules.get(top)) != wanted:
            _forget(top)
    added = from_cwd is not None and str(cwd) not in sys.path
    if added:
        sys.path.append(str(cwd))
    fresh = top not in sys.modules
    try:
        module = importlib.import_module(where)
    except (Exception, SystemExit) as e:
        if isinstance(e, ModuleNotFoundError) and e.name is not None and where.startswith(e.name) and (
                e.name == where or where[len(e.name)] == "."):
            if e.name != top and top in sys.modules:
                advice = (f"The package {top} was found at {_origin(sys.modules[top])}, but it has no module "
                          f"{e.name}. Check the dotted name in SPEC.")
            else:
                advice = (f"Tried the import path and the current folder {cwd}. Run cnnscope from the folder "
                          f"that holds {top}/ (or {top}.py), add that folder to PYTHONPATH, or name the file: "
                          f"path/to/{where.replace('.', '/')}.py:{spec.rpartition(':')[2]}.")
        elif isinstance(e, ImportError):
            advice = (f"{where} was found, but an import inside it failed: check that the modules it imports "
                      "are installed or lie in its package.")
        else:
            advice = f"{where} raised while it was imported; fix the error it names."
        raise SpecError(
            f"Cannot import module {where!r} from SPEC {spec!r}: {type(e).__name__}: {e}. {advice}"
        ) from None
    finally:
        if added:
            sys.path.remove(str(cwd))
    found = _spec_origin(from_path or from_cwd)
    if fresh and top in sys.modules and found is not None and (from_cwd is not None or not installed(found)):
        # the user's own package: a run's copy of it may replace it later (the test after training)
        _USER_PACKAGES[top] = found.parents[1] if found.name == "__init__.py" else found.parent
    return module


def _module_classes(module) -> list[str]:
    import torch.nn as nn

    return sorted(
        n for n, v in vars(module).items()
        if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__
    )


def _registry_entry(name: str):
    from cnnscope import zoo

    if name in zoo.list_models():
        return zoo.get_entry(name)
    close = difflib.get_close_matches(name, zoo.list_models(), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise SpecError(f"Unknown model {name!r}.{hint} Registered models: {', '.join(zoo.list_models())}. "
                    "A SPEC can also be path/to/file.py:ClassName or package.module:attr.")


def is_registry_name(spec: str) -> bool:
    """A SPEC without ':' is resolved by the zoo's registry alone (a zoo model, or an "unknown model"
    error): it imports no code but the zoo's."""
    return ":" not in spec


def names_file(where: str) -> bool:
    """The part of a SPEC before ':' names a file (else a module)."""
    return where.endswith(".py") or "/" in where or "\\" in where


def _what_would_run(spec: str, ctor: dict) -> str:
    where, _, attr = spec.rpartition(":")
    call = f"{attr}({', '.join(f'{k}={v!r}' for k, v in ctor.items())})"
    if names_file(where):
        return f"import and execute the Python file {where} and call its {call}"
    return f"import the module {where} and call {where}.{call}"


def check_file_spec(spec, ctor, read_from: str, trust_spec: bool = False) -> None:
    """Refuse to build a SPEC read from a file (`read_from` says which) when building it would import
    code, unless the user trusts it (`trust_spec`: --trust-spec, or they named that SPEC themselves).
    Runs before anything is imported: importing a model file executes it."""
    if not isinstance(spec, str) or not isinstance(ctor, dict) or not all(isinstance(k, str) for k in ctor):
        raise SpecError(
            f"{read_from} names the model {spec!r} with constructor keywords {ctor!r}, which is not a SPEC "
            "string and a dict of keywords: it was not written by `cnnscope train`. Use a checkpoint of a run."
        )
    if trust_spec or is_registry_name(spec):
        return
    raise TrustError(
        f"{read_from} asks to build the model {spec!r} with constructor keywords {ctor}, which is not a zoo "
        f"model: building it would {_what_would_run(spec, ctor)}, which runs code. cnnscope builds only zoo "
        "models from files it is handed; if you trust that code, allow it with trust_spec.",
        arguments=("trust_spec",),
    )


def resolve_target(spec: str):
    """SPEC -> (the callable that builds the model, a display name)."""
    if ":" not in spec:
        entry = _registry_entry(spec)
        return entry.builder, spec
    where, _, attr = spec.rpartition(":")
    if not attr or not where:
        raise SpecError(f"Bad SPEC {spec!r}: expected NAME, path/file.py:Name or package.module:attr.")
    if names_file(where):
        module = _load_file(Path(where))
    else:
        module = _import_module(where, spec)
    if not hasattr(module, attr):
        classes = _module_classes(module)
        listing = f" It defines these nn.Module classes: {', '.join(classes)}." if classes else (
            " It defines no nn.Module class.")
        raise SpecError(f"{where} has no attribute {attr!r}.{listing}")
    return getattr(module, attr), attr


def build_model(spec: str, ctor: dict | None = None, device=None, *, read_from: str | None = None,
                trust_spec: bool = False):
    """Build the nn.Module a SPEC names, with constructor keywords `ctor`; on `device` when given
    (`"meta"`: shapes without data, no weight initialisation). `read_from`: the file the SPEC and
    `ctor` were read from (None: the user typed them); such a SPEC passes check_file_spec first."""
    import contextlib

    import torch
    import torch.nn as nn

    ctor = {} if ctor is None else ctor
    if read_from is not None:
        check_file_spec(spec, ctor, read_from, trust_spec)
    target, name = resolve_target(spec)
    ctor = dict(ctor)
    if not callable(target):
        raise SpecError(f"{spec!r} is not a class or function (it is a {type(target).__name__}).")
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**ctor)
        except TypeError as e:
            params = [
                p for p in sig.parameters.values()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            required = [p.name for p in params if p.default is p.empty and p.name not in ctor]
            accepted = ", ".join(p.name for p in params) or "none"
            need = f" Give the required ones as ctor keywords, e.g. {', '.join(f'{r}=...' for r in required)}." \
                if required else ""
            raise SpecError(f"Cannot construct {name}: {e}. It accepts: {accepted}.{need}",
                                arguments=("ctor",)) from None
    count = ctor.get("num_classes", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SpecError(f"num_classes={count!r} builds no classifier: num_classes is a whole number of at least "
                            "1 (the classes the model tells apart).", arguments=("ctor",))
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext(), \
                warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            model = target(**ctor)
        for warning in said:  # one `warning:` line each, without the source line of the library that warned
            warnings.warn(warning.message if issubclass(warning.category, CnnscopeWarning) else
                          f"Constructing {name}: {warning.category.__name__}: {warning.message}",
                          CnnscopeWarning, stacklevel=2)
    except CnnscopeError:
        raise
    except (Exception, SystemExit) as e:  # a constructor that calls sys.exit() is a broken model too
        raise SpecError(
            f"Constructing {name}({', '.join(f'{k}={v!r}' for k, v in ctor.items())}) failed: "
            f"{type(e).__name__}: {e}. Check the ctor keywords.", arguments=("ctor",),
        ) from None
    if not isinstance(model, nn.Module):
        raise SpecError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model
