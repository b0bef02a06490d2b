"""Training configuration files: `cnnscope train --config FILE`.

A file (YAML, or JSON when it ends in .json) holds fields of a run's options, the "options" of its
config.json (TrainOptions), any of them: the model (spec) and its ctor keywords, recipe fields (laid
over the model's own recipe; augment's fields too), and the run's settings (seed, val_split,
train_subset, data_dir, out, name, ...). A run's whole config.json is such a file: its options replay
the run, with as many processes as it trained with on the CPU (its world_size), so the replay ends
with the same weights bit for bit; a batch the run fitted to its image tree (its options' adapted)
is fitted again as it was (recipes.fit_to_tree). Values given on the command line override the file's.

A file's model that is no zoo model is code from elsewhere: it is built only when the user trusts
it (trust_spec) or names the model on the command line (spec.check_file_spec).
"""
import dataclasses
import json
import re
from pathlib import Path

from cnnscope.core.augment import AUGMENT_RULES
from cnnscope.core.fields import Choice, Flag, Number
from cnnscope.errors import CnnscopeError
from cnnscope.runs.recipes import RECIPE_RULES
from cnnscope.runs.spec import check_file_spec


@dataclasses.dataclass(frozen=True)
class Text:
    def convert(self, value):
        return value if isinstance(value, str) else None

    def describe(self) -> str:
        return "a string"


@dataclasses.dataclass(frozen=True)
class Mapping:
    def convert(self, value):
        return value if isinstance(value, dict) and all(isinstance(k, str) for k in value) else None

    def describe(self) -> str:
        return "a mapping of names to values"


@dataclasses.dataclass(frozen=True)
class Maybe:
    """`rule`'s values, or null (which check_values lets through: convert's None means refused)."""
    rule: object

    def convert(self, value):
        return self.rule.convert(value)

    def describe(self) -> str:
        return f"{self.rule.describe()}, or null"


# every TrainOptions field (a test keeps them in step); `source` and `adapted` are what a run records, not read
OPTION_RULES = {
    "spec": Text(), "ctor": Mapping(), "recipe": Mapping(), "val_split": Number(float, 0, 1, hi_open=True),
    "seed": Number(int, 0, 2**63 - 1), "aug_backend": Choice(("batch", "albumentations")), "train_subset": Number(int, 0),
    "init_from": Text(), "source": Maybe(Mapping()), "adapted": Text(), "data_dir": Text(), "out": Text(), "name": Text(),
    "device": Text(), "amp": Maybe(Flag()), "channels_last": Maybe(Flag()), "compile": Flag(),
    "save_every": Number(int, 0), "tensorboard": Maybe(Text()),
}
# the options a file gives as they are (run_training's keywords of the same name)
RUN_SETTINGS = ("val_split", "seed", "aug_backend", "train_subset", "init_from", "data_dir", "out", "name", "device",
                "amp", "channels_last", "compile", "save_every", "tensorboard")


def _yaml_loader():
    """PyYAML's safe loader, reading 1e-3 as a number as YAML 1.2 and JSON do (YAML 1.1 reads it
    as a string)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
    return Loader


def parse_file(path: Path) -> object:
    """The file's data: JSON for .json, else YAML (read safely: plain data, no objects)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CnnscopeError(f"Could not read the configuration file {path}: {e}. Give a YAML or JSON file.",
                            arguments=("config",)) from None
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.load(text, Loader=_yaml_loader())
    except (ValueError, yaml.YAMLError) as e:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise CnnscopeError(f"{path} is not valid {kind}: {' '.join(str(e).split())}. Fix the file, or give a run's "
                            "config.json.", arguments=("config",)) from None


def read_config(path) -> tuple[dict, int | None]:
    """FILE -> (its option fields, checked; the CPU process count of the run whose config.json it is,
    else None). Unknown fields and values of the wrong type are errors that name them."""
    path = Path(path)
    data = parse_file(path)
    world_size = None
    if isinstance(data, dict) and isinstance(data.get("options"), dict) and "versions" in data:  # a run's config.json
        if str(data.get("device", "")).startswith("cpu") and isinstance(data.get("world_size"), int):
            world_size = data["world_size"]
        data = data["options"]
    if not isinstance(data, dict):
        raise CnnscopeError(f"{path} holds {type(data).__name__ if data is not None else 'nothing'}, not the fields "
                            f"of a run's options (e.g. spec: basic, recipe: {{epochs: 5}}).", arguments=("config",))
    check_values(path, "", data, OPTION_RULES, "option")
    recipe = dict(data.get("recipe") or {})
    check_values(path, "recipe.", recipe, {**RECIPE_RULES, "augment": Mapping()}, "recipe")
    check_values(path, "recipe.augment.", recipe.get("augment") or {}, AUGMENT_RULES, "augmentation")
    return data, world_size


def check_values(path: Path, prefix: str, values: dict, rules: dict, what: str) -> None:
    unknown = sorted(set(values) - set(rules))
    if unknown:
        raise CnnscopeError(
            f"{path} has unknown {what} field(s) {', '.join(prefix + k for k in unknown)}. The {what} fields are: "
            f"{', '.join(sorted(rules))}.", arguments=("config",))
    for name, value in values.items():
        if (value is not None or not isinstance(rules[name], Maybe)) and rules[name].convert(value) is None:
            raise CnnscopeError(f"{path}: field {prefix}{name}={value!r} is not allowed: {name} takes "
                                f"{rules[name].describe()}.", arguments=("config",))


def with_config(path, settings: dict, trust_spec: bool = False) -> dict:
    """run_training's keywords `settings` (the command line's; None = not given) laid over the
    configuration file `path`: the command line's values win, key by key within ctor, recipe and
    augment. The file's model is checked by the trust rule unless the command line names one."""
    options, world_size = read_config(path)
    merged = dict(settings)
    if settings.get("model") is None:
        if "spec" not in options:
            raise CnnscopeError(f"{path} names no model (its spec field) and none is given: add spec to the file "
                                "or name the MODEL to train.", arguments=("config",))
        check_file_spec(options["spec"], options.get("ctor") or {}, f"The configuration file {path}", trust_spec)
        merged["model"] = options["spec"]
    recipe = dict(options.get("recipe") or {})
    augment = recipe.pop("augment", None) or {}
    if options.get("adapted"):  # its batch was fitted to its image tree, not given: fitted again, to the same
        recipe.pop("batch_size", None)
    given = {k: v for k, v in (settings.get("recipe_overrides") or {}).items() if v is not None}
    merged["recipe_overrides"] = {**recipe, **given}
    merged["augment_overrides"] = {**augment, **(settings.get("augment_overrides") or {})}
    merged["ctor"] = {**(options.get("ctor") or {}), **(settings.get("ctor") or {})}
    for key in RUN_SETTINGS:
        if merged.get(key) is None and key in options:
            merged[key] = options[key]
    if merged.get("procs", "auto") == "auto" and world_size:
        merged["procs"] = str(world_size)
    return merged

