"""Self-contained runs: a run of the user's own model keeps a copy of the model's source.

When a run trains a SPEC that names the user's code (path/file.py:Name, or package.module:attr not
installed in site-packages), the Python files of that code that are imported when the model is built
are copied into <run>/model_source/, keeping their layout below the package root's parent (or the
file's folder), and the options record where the copy and the original are, with a SHA-256 of each
file. Every later command on the run builds the model from the copy, by a path relative to the run
folder: it works from any folder, after the original file moved or changed (with a warning when it
changed), and after the run folder itself was moved or copied.

Building from the copy is still building a SPEC read from a file: the trust rule
(spec.check_file_spec) applies to it exactly as to the SPEC it was copied from.
"""
import hashlib
import importlib.machinery
import os
import sys
import warnings
from pathlib import Path

from cnnscope.errors import CnnscopeWarning, RunError
from cnnscope.files import atomic_write_bytes
from cnnscope.runs import spec as specs

SOURCE_DIR = "model_source"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _own_packages() -> list[Path]:
    """cnnscope's and the zoo's package folders: never part of a user's model source."""
    import cnnscope
    from cnnscope import zoo

    return [Path(m.__file__).resolve().parent for m in (cnnscope, zoo)]


def _main_file(spec: str) -> Path:
    """The file a (non-zoo) SPEC names: its path, or the imported module's file."""
    where = spec.rpartition(":")[0]
    if specs.names_file(where):
        return Path(where).resolve()
    specs.resolve_target(spec)  # imports the module when it is not yet
    return Path(sys.modules[where].__file__).resolve()


def source_files(spec: str) -> tuple[Path, Path, list[Path]] | None:
    """(base folder, the SPEC's file, every file of its code imported so far) for a SPEC that names
    the user's own code; None for a zoo name or an installed module. The base folder is the package
    root's parent for a file inside a package, else the file's folder."""
    if specs.is_registry_name(spec):
        return None
    main = _main_file(spec)
    if specs.installed(main):
        return None
    root = specs.package_root(main)
    base = root.parent if root is not None else main.parent
    own = _own_packages()
    files = {main}
    for module in list(sys.modules.values()):
        where = getattr(module, "__file__", None)
        if not where or not where.endswith(".py"):
            continue
        path = Path(where).resolve()
        if path.is_relative_to(base) and path.is_file() and not specs.installed(path) and not any(path.is_relative_to(p) for p in own):
            files.add(path)
    folder = main.parent  # a package file needs every __init__.py from its root down
    while root is not None and folder.is_relative_to(root):
        files.add(folder / "__init__.py")
        folder = folder.parent
    return base, main, sorted(files)


def save_source(run_dir: Path, spec: str) -> dict | None:
    """Copy the model source of `spec` into run_dir/model_source/; the record the run keeps of it
    (None: a zoo or installed model, nothing to keep)."""
    found = source_files(spec)
    if found is None:
        return None
    base, main, files = found
    attr = spec.rpartition(":")[2]
    hashes = {}
    for path in files:
        relative = path.relative_to(base).as_posix()
        data = path.read_bytes()
        atomic_write_bytes(Path(run_dir) / SOURCE_DIR / relative, lambda f, data=data: f.write(data))
        hashes[relative] = hashlib.sha256(data).hexdigest()
    return {"spec": f"{SOURCE_DIR}/{main.relative_to(base).as_posix()}:{attr}", "base": str(base),
            "origin_spec": f"{main}:{attr}", "files": hashes}


def spec_to_build(run_dir: Path, spec: str, source: dict | None) -> str:
    """The SPEC that rebuilds a run's model: its copy in run_dir/model_source/ when the run kept one
    (warning when the original files changed since), else the SPEC it was trained from."""
    if not source or specs.is_registry_name(spec):  # a zoo model is built by name, never from a file
        return spec
    run_dir = Path(run_dir).resolve()
    copy_file, _, attr = source["spec"].rpartition(":")
    copy = (run_dir / copy_file).resolve()
    if not copy.is_relative_to(run_dir / SOURCE_DIR):
        raise RunError(
            f"The run {run_dir} records its model source as {source['spec']!r}, which lies outside its "
            f"{SOURCE_DIR}/ folder: the run's files were not written by `cnnscope train`."
        )
    if not copy.is_file():
        warnings.warn(f"The run folder {run_dir} has no copy of its model source ({copy}); building "
                      f"{source['origin_spec']} instead.", CnnscopeWarning, stacklevel=2)
        return source["origin_spec"]
    changed = _differing(Path(source["base"]), source["files"])
    if changed:
        warnings.warn(f"The model source changed since the run was trained ({', '.join(changed)} in "
                      f"{source['base']}); the run's own copy in {run_dir / SOURCE_DIR} is used.",
                      CnnscopeWarning, stacklevel=2)
    _warn_if_shadowing(run_dir, copy, source)
    return f"{copy}:{attr}"


def _differing(base: Path, files: dict) -> list[str]:
    """The recorded files that exist below `base` with other contents than the run's record."""
    return [name for name, digest in files.items() if (base / name).is_file() and _sha256(base / name) != digest]


def _warn_if_shadowing(run_dir: Path, copy: Path, source: dict) -> None:
    """The run's copy of a package is imported under the package's own name, before any package of
    that name on the import path (the current folder's, say). That one is the same code when its
    files equal the run's record (the user's own unchanged package): nothing to say. Else it is
    another package, which the copy hides while the model is built: one warning."""
    relative = copy.relative_to(run_dir / SOURCE_DIR)
    if len(relative.parts) < 2:  # a plain file is imported under a private name: it hides nothing
        return
    top = relative.parts[0]
    found = importlib.machinery.PathFinder.find_spec(top, [*sys.path, os.getcwd()])
    if found is None or not found.submodule_search_locations:
        return
    other_base = Path(list(found.submodule_search_locations)[0]).resolve().parent
    if other_base == Path(source["base"]).resolve():
        return  # the original place: _differing above has said whether it changed
    package_files = {name: digest for name, digest in source["files"].items() if name.split("/")[0] == top}
    if _differing(other_base, package_files) or not all((other_base / name).is_file() for name in package_files):
        warnings.warn(f"Another package named {top!r} ({other_base / top}) is on the import path and differs "
                      f"from the run's; the run's own copy in {run_dir / SOURCE_DIR} is built.",
                      CnnscopeWarning, stacklevel=3)
