"""What a sweep searches: `--param NAME=KIND:ARGS`, each an Optuna distribution over a recipe field
(lr, weight_decay, batch_size, ...), an augmentation field (augment.cutout) or a constructor
keyword (ctor.width), laid over the sweep's training options for each trial.
"""
import ast
import dataclasses
from dataclasses import dataclass

from cnnscope.errors import CnnscopeError
from cnnscope.runs import recipes
from cnnscope.runs.recipes import Recipe

KINDS = {
    "log": "log:LOW:HIGH, a number drawn on a log scale (LOW > 0), e.g. lr=log:0.01:0.5",
    "float": "float:LOW:HIGH, a number drawn uniformly, e.g. label_smoothing=float:0:0.2",
    "int": "int:LOW:HIGH, a whole number, e.g. epochs=int:2:6",
    "choice": "choice:A,B,..., one of the values, e.g. batch_size=choice:64,128 or optimizer=choice:sgd,adamw",
}
GROUPS = ("", "augment", "ctor")  # a recipe field, augment.<field>, ctor.<keyword>


@dataclass(frozen=True)
class Param:
    name: str  # a recipe field, augment.<field> or ctor.<keyword>
    kind: str  # a key of KINDS
    values: tuple  # (low, high), or the choices
    text: str  # as the user wrote it

    def distribution(self):
        from optuna import distributions

        if self.kind == "choice":
            return distributions.CategoricalDistribution(self.values)
        if self.kind == "int":
            return distributions.IntDistribution(*self.values)
        return distributions.FloatDistribution(*self.values, log=self.kind == "log")


def bad_param(text: str, why: str) -> CnnscopeError:
    forms = "; ".join(KINDS.values())
    return CnnscopeError(
        f"Bad param {text!r}: {why}. A param is NAME=KIND:ARGS, NAME a recipe field (e.g. lr, weight_decay, "
        f"batch_size), augment.<field> or ctor.<keyword>, and KIND one of: {forms}.", arguments=("params",))


def _literal(raw: str):
    """A choice: a number, True/False, or a word (a string)."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    return value if isinstance(value, (bool, int, float, str)) else None


def parse_param(text: str) -> Param:
    """NAME=KIND:ARGS -> a Param; a clear error for anything else."""
    name, has_value, rest = text.partition("=")
    kind, has_args, args = rest.partition(":")
    name = name.strip()
    group, _, field = name.rpartition(".")
    if not has_value or not field.isidentifier() or group not in GROUPS:
        raise bad_param(text, "NAME must be a recipe field, augment.<field> or ctor.<keyword>")
    if kind not in KINDS or not has_args:
        raise bad_param(text, f"the kind must be one of {', '.join(KINDS)}, followed by ':' and its values")
    if kind == "choice":
        choices = tuple(_literal(v.strip()) for v in args.split(","))
        if not args.strip() or any(v is None or v == "" for v in choices) or len(set(choices)) != len(choices):
            raise bad_param(text, "choice takes distinct values (numbers, True/False or words) separated by commas")
        return Param(name, kind, choices, text)
    bounds = args.split(":")
    number = int if kind == "int" else float
    try:
        low, high = (number(ast.literal_eval(b.strip())) for b in bounds) if len(bounds) == 2 else (None, None)
    except (ValueError, SyntaxError, TypeError):
        low = high = None
    if low is None or (kind == "int" and any("." in b for b in bounds)):
        raise bad_param(text, f"{kind} takes two {'whole ' if kind == 'int' else ''}numbers LOW:HIGH")
    if not low < high:
        raise bad_param(text, f"LOW ({low:g}) must be below HIGH ({high:g})")
    if kind == "log" and low <= 0:
        raise bad_param(text, "a log scale needs LOW > 0")
    return Param(name, kind, (low, high), text)


def parse_params(texts) -> list[Param]:
    params = [parse_param(t) for t in texts]
    if not params:
        raise CnnscopeError("A sweep needs at least one param to search, e.g. lr=log:0.01:0.5.", arguments=("params",))
    names = [p.name for p in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CnnscopeError(f"The param(s) {', '.join(twice)} are given twice; give each one once.",
                            arguments=("params",))
    return params


def with_values(settings: dict, values: dict) -> dict:
    """run_training's keywords `settings` with a trial's values ({param name: value}) in their
    recipe, augment or ctor place."""
    places = {"": dict(settings.get("recipe_overrides") or {}), "augment": dict(settings.get("augment_overrides") or {}),
              "ctor": dict(settings.get("ctor") or {})}
    for name, value in values.items():
        group, _, field = name.rpartition(".")
        places[group][field] = value
    return {**settings, "recipe_overrides": places[""], "augment_overrides": places["augment"], "ctor": places["ctor"]}


def check_params(params: list[Param], settings: dict, recipe: Recipe) -> None:
    """Every param names a field that exists and is not also fixed by the training options, and
    each of its bounds and choices is a value the field takes (on the sweep's `recipe`)."""
    fixed = {**{k: v for k, v in (settings.get("recipe_overrides") or {}).items() if v is not None},
             **{f"augment.{k}": v for k, v in (settings.get("augment_overrides") or {}).items()},
             **{f"ctor.{k}": v for k, v in (settings.get("ctor") or {}).items()}}
    fields = {f.name for f in dataclasses.fields(Recipe)} - {"augment"}
    for param in params:
        group, _, field = param.name.rpartition(".")
        if param.name in fixed:
            raise CnnscopeError(f"{param.name} is both fixed (={fixed[param.name]!r}) and searched ({param.text}): "
                                "leave out one of them.", arguments=("params",))
        if group == "" and field not in fields:
            raise bad_param(param.text, f"{field} is no recipe field (they are: {', '.join(sorted(fields))})")
        if group == "ctor":
            continue  # the model's constructor says, in the first trial
        for value in param.values:
            try:
                recipes.resolve(recipe, {} if group else {field: value}, {field: value} if group else None)
            except CnnscopeError as e:
                raise bad_param(param.text, f"{value!r} is not a value of {param.name}: {str(e).rstrip('.')}") from None
