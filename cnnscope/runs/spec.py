"""SPEC -> nn.Module.

A SPEC is one of
  - a registry name:            basic
  - a file and an attribute:    path/to/model.py:NetDilated
  - a module and an attribute:  package.module:attr
The attribute is a class or function; it is called with the `--ctor k=v` keywords.
"""
import ast
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from cnnscope.errors import CnnscopeError


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
            raise CnnscopeError(
                f"Bad {argument} item {item!r}: expected KEY=VALUE with KEY a Python identifier, e.g. {example}.",
                arguments=(argument,),
            )
        raw = raw.strip()
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            if not raw.isidentifier():
                raise CnnscopeError(
                    f"Bad {argument} item {item!r}: {raw!r} is not a Python literal. Use numbers, quoted strings, "
                    f"True/False/None, lists, tuples or dicts, e.g. {example}.", arguments=(argument,),
                ) from None
            value = raw  # a bare word such as mode=fast reads as the string 'fast'
        out[key] = value
    return out


def _load_file(path: Path):
    if not path.is_file():
        raise CnnscopeError(f"Model file {path} does not exist. Check the path in SPEC (file.py:Name).")
    # The file's folder goes on sys.path so that it can import its neighbours.
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
        raise CnnscopeError(
            f"Importing {path} failed: {type(e).__name__}: {e}. Fix the file, or check that the "
            "modules it imports are installed or lie beside it."
        ) from None
    return module


def _module_classes(module) -> list[str]:
    import torch.nn as nn

    return sorted(
        n for n, v in vars(module).items()
        if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__
    )


def _registry_entry(name: str):
    import models

    if name in models.list_models():
        return models.get_entry(name)
    close = difflib.get_close_matches(name, models.list_models(), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise CnnscopeError(
        f"Unknown model {name!r}.{hint} Registered models: {', '.join(models.list_models())}. "
        "A SPEC can also be path/to/file.py:ClassName or package.module:attr."
    )


def is_registry_name(spec: str) -> bool:
    """A SPEC without ':' is resolved by the zoo's registry alone (a zoo model, or an "unknown model"
    error): it imports no code but the zoo's."""
    return ":" not in spec


def _names_file(where: str) -> bool:
    """The part of a SPEC before ':' names a file (else a module)."""
    return where.endswith(".py") or "/" in where or "\\" in where


def _what_would_run(spec: str, ctor: dict) -> str:
    where, _, attr = spec.rpartition(":")
    call = f"{attr}({', '.join(f'{k}={v!r}' for k, v in ctor.items())})"
    if _names_file(where):
        return f"import and execute the Python file {where} and call its {call}"
    return f"import the module {where} and call {where}.{call}"


def check_file_spec(spec, ctor, read_from: str, trust_spec: bool = False) -> None:
    """Refuse to build a SPEC read from a file (`read_from` says which) when building it would import
    code, unless the user trusts it (`trust_spec`: --trust-spec, or they named that SPEC themselves).

    Runs before anything is imported: importing a model file executes it.
    """
    if not isinstance(spec, str) or not isinstance(ctor, dict) or not all(isinstance(k, str) for k in ctor):
        raise CnnscopeError(
            f"{read_from} names the model {spec!r} with constructor keywords {ctor!r}, which is not a SPEC "
            "string and a dict of keywords: it was not written by `cnnscope train`. Use a checkpoint of a run."
        )
    if trust_spec or is_registry_name(spec):
        return
    raise CnnscopeError(
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
        raise CnnscopeError(f"Bad SPEC {spec!r}: expected NAME, path/file.py:Name or package.module:attr.")
    if _names_file(where):
        module = _load_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise CnnscopeError(
                f"Cannot import module {where!r} from SPEC {spec!r}: {e}. Use path/to/file.py:Name for a file."
            ) from None
    if not hasattr(module, attr):
        classes = _module_classes(module)
        listing = f" It defines these nn.Module classes: {', '.join(classes)}." if classes else (
            " It defines no nn.Module class.")
        raise CnnscopeError(f"{where} has no attribute {attr!r}.{listing}")
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
        raise CnnscopeError(f"{spec!r} is not a class or function (it is a {type(target).__name__}).")
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
            raise CnnscopeError(f"Cannot construct {name}: {e}. It accepts: {accepted}.{need}",
                                arguments=("ctor",)) from None
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = target(**ctor)
    except CnnscopeError:
        raise
    except (Exception, SystemExit) as e:  # a constructor that calls sys.exit() is a broken model too
        raise CnnscopeError(
            f"Constructing {name}({', '.join(f'{k}={v!r}' for k, v in ctor.items())}) failed: "
            f"{type(e).__name__}: {e}. Check the ctor keywords.", arguments=("ctor",),
        ) from None
    if not isinstance(model, nn.Module):
        raise CnnscopeError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model
