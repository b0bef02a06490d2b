"""Self-contained runs: a run of the user's own model keeps a copy of the model's source.

When a run trains a SPEC that names the user's code (path/file.py:Name, or package.module:attr not
installed in site-packages), the Python files of that code that are imported when the model is built
are copied into <run>/model_source/, keeping their layout below the package root's parent (or the
file's folder), and the options record where the copy and the original are, with a SHA-256 of each
file. Every later command on the run builds the model from the copy, by a path relative to the run
folder: it works from any folder, after the original file moved or changed (with a warning when it
changed), and after the run folder itself was moved or copied.

Building from the copy is still building a SPEC read from a file: the trust rule
(spec.check_file_spec) applies to it, and names the copy, which is what would run. A copy that is not
the code recorded at training (each file's SHA-256) is never built, trusted or not.
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


def copy_spec(run_dir: Path, spec: str, source: dict | None) -> str:
    """The SPEC that rebuilds a run's model, as the trust rule must name it: its copy in
    run_dir/model_source/ when the run kept one, else the SPEC it was trained from (also when the
    copy is missing). A copy that is not the code recorded at training (a file whose SHA-256
    differs, a file missing, a file added) is refused, whether the user trusts the run or not:
    what runs is what was recorded."""
    if not isinstance(spec, str) or not source or specs.is_registry_name(spec):  # a zoo model: built by name
        return spec
    run_dir = Path(run_dir).resolve()
    record = _checked_record(run_dir, source)
    copy_file, _, attr = record["spec"].rpartition(":")
    copy = (run_dir / copy_file).resolve()
    if not copy.is_relative_to(run_dir / SOURCE_DIR):
        raise _not_cnnscopes(run_dir, f"records its model source as {record['spec']!r}, which lies outside its "
                                      f"{SOURCE_DIR}/ folder")
    if not copy.is_file():
        return record["origin_spec"]
    _check_copy(run_dir, record["files"])
    return f"{copy}:{attr}"


def _checked_record(run_dir: Path, source) -> dict:
    """The run's record of its model source, when it has the shape save_source gives it."""
    fields = ("spec", "base", "origin_spec")
    if not (isinstance(source, dict) and all(isinstance(source.get(k), str) for k in fields)
            and isinstance(source.get("files"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in source["files"].items())):
        raise _not_cnnscopes(run_dir, "has a record of its model source that is not the one `cnnscope train` writes")
    return source


def _not_cnnscopes(run_dir: Path, what: str) -> RunError:
    return RunError(f"The run {run_dir} {what}: the run's files were not written by `cnnscope train`. Use "
                         "another checkpoint of the run, or train it again.")


def _check_copy(run_dir: Path, recorded: dict) -> None:
    """A RunError unless run_dir/model_source/ holds exactly the recorded files, each with its
    recorded SHA-256, none of them a link."""
    folder = run_dir / SOURCE_DIR
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*.py")}
    problems = []
    for name, digest in sorted(recorded.items()):
        path = folder / name
        if name not in present or path.is_symlink() or not path.is_file():
            problems.append(f"{path} is missing (or is no regular file)")
        elif (found := _sha256(path)) != digest:
            problems.append(f"{path} has SHA-256 {found}, but {digest} was recorded when the run was trained")
    problems += [f"{folder / name} was added after training" for name in sorted(present - set(recorded))]
    if problems:
        raise RunError(
            f"The run's copy of its model source is not the code recorded when the run was trained: "
            f"{'; '.join(problems[:4])}{'; ...' if len(problems) > 4 else ''}. Such a copy is never built, trust_spec "
            "or not: restore the run's model_source/ folder, or train the run again.", arguments=("trust_spec",))


def spec_to_build(run_dir: Path, spec: str, source: dict | None) -> str:
    """copy_spec, saying what the user should know: that the copy is missing (the original is
    built), that the original files changed since the run was trained (the copy is built), or that
    the copy's package hides another one of its name."""
    built = copy_spec(run_dir, spec, source)
    if built == spec:
        return spec
    run_dir = Path(run_dir).resolve()
    if built == source["origin_spec"]:
        warnings.warn(f"The run folder {run_dir} has no copy of its model source "
                      f"({run_dir / source['spec'].rpartition(':')[0]}); "
                      f"building {source['origin_spec']} instead.", CnnscopeWarning, stacklevel=2)
        return built
    changed = _differing(Path(source["base"]), source["files"])
    if changed:
        warnings.warn(f"The model source changed since the run was trained ({', '.join(changed)} in "
                      f"{source['base']}); the run's own copy in {run_dir / SOURCE_DIR} is used.",
                      CnnscopeWarning, stacklevel=2)
    _warn_if_shadowing(run_dir, Path(built.rpartition(":")[0]), source)
    return built


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
