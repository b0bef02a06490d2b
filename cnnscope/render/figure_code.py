"""Which code drew a figure, so that a committed figure that would now be drawn differently is found.

Every PNG cnnscope writes (plots.save) carries a PNG text chunk, KEY, naming the function that built
the figure (plots.drawn marks it), the function that saved it and the cnnscope function that called
that with the data (when one did), and a hash of their code:
the source of each, and of every function and the value of every constant of its module that it
uses, followed transitively. `cnnscope update-readme --check` recomputes the hash for every figure
a README shows (runs/readme/figures.py): a figure whose code changed since it was drawn is stale.

What the hash cannot see: code in other modules (a reader of run files, matplotlib itself) and the
data. It sees the drawing (colours, labels, axes) and how the calling command prepares the data.
"""
import hashlib
import inspect
import types

KEY = "cnnscope-figure"
_SCALARS = (str, int, float, bool, type(None))


def _names(code: types.CodeType):
    """The global names a code object and the functions defined inside it use."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def code_hash(module: types.ModuleType, function: str) -> str | None:
    """12 hex digits over the source of `function` of `module` and of the module's functions and
    constants it uses (transitively); None when the module has no such function."""
    if not inspect.isfunction(vars(module).get(function)):
        return None
    parts, seen, todo = [], set(), [function]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        obj = vars(module).get(name)
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            parts.append(_source(obj))
            todo += sorted(set(_names(obj.__code__)) - seen)
        elif _plain(obj):
            parts.append(f"{name} = {obj!r}")
        elif isinstance(obj, dict):  # a table of functions (a dispatch): its keys and the functions it names
            parts.append(f"{name} = {sorted(map(repr, obj))}")
            todo += sorted({f.__name__ for f in _values(obj) if inspect.isfunction(f)} - seen)
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()[:12]


def _values(table: dict):
    """The values of a dict, and of the dicts inside it."""
    for value in table.values():
        yield from _values(value) if isinstance(value, dict) else (value,)


def _plain(obj) -> bool:
    """A constant made of plain values only, whose repr is the same in every process (a registry of
    functions is not: its repr holds their addresses)."""
    if isinstance(obj, _SCALARS):
        return True
    if isinstance(obj, (tuple, list, frozenset)):
        return all(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return all(_plain(k) and _plain(v) for k, v in obj.items())
    return False


def _source(function) -> str:
    try:
        return inspect.getsource(function)
    except OSError:  # installed without sources: the bytecode says what the function does
        return repr((function.__code__.co_code, function.__code__.co_consts))


def drawers_hash(drawers) -> str:
    """The hash of a figure's code: of each (module, function name) that drew it."""
    return hashlib.sha256(" ".join(str(code_hash(m, f)) for m, f in drawers).encode()).hexdigest()[:12]


def _drawers(frame) -> list:
    """(module, function name) of the cnnscope functions on the stack that drew the figure: the one
    that called save, and the cnnscope function above it that prepared the data (not a test or a
    notebook)."""
    found = []
    while frame is not None and len(found) < 2:
        function = drawer(frame)
        if function:
            found.append(function)
        elif found:  # the drawing function was called from outside cnnscope
            break
        frame = frame.f_back
    return found


def drawer(frame):
    """(module, function name) of the module-level cnnscope function running in `frame`; None for
    any other code."""
    module = inspect.getmodule(frame)
    name = module.__name__ if module else ""
    if name.startswith("cnnscope.") and inspect.isfunction(vars(module).get(frame.f_code.co_name)):
        return module, frame.f_code.co_name
    return None


def stamp(frame, built_by=None) -> str:
    """KEY's text for a figure saved from `frame` (the frame that called plots.save):
    'module:function [module:function ...] hash'; `built_by`: the (module, function) that built the
    figure, when another function saves it."""
    drawers = [d for d in [built_by] if d] + [d for d in _drawers(frame) if d != built_by]
    return " ".join([*(f"{m.__name__}:{f}" for m, f in drawers), drawers_hash(drawers)])
