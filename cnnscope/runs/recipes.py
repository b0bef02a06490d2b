"""Training recipes: the defaults each zoo model trains with (MODELS.md, "Training recipes").

A `Recipe` is plain data. `get_recipe(spec)` gives a registry model's recipe (a SPEC that is not a
registry name gets basic's); `resolve(recipe, overrides)` applies the command line on top of it.

Schedules measured in epochs (warm-up, depth warm-up) are written for the recipe's own epoch count;
when a run is shorter they shrink in proportion, so `--epochs 5` still gets a warm-up instead of
spending the whole run in it. Likewise the augmentation's sizes in pixels (cutout, crop padding) are
written for the recipe's 32x32 images and follow another image size. An image-folder tree's recipe is
fitted to its size (`fit_to_tree`: a small tree's batch).
"""
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from cnnscope.core.augment import AugmentSpec
from cnnscope.runs.datasets import DATASETS, is_folder
from cnnscope.errors import CnnscopeError
from cnnscope.core.fields import Choice, Flag, Number, Numbers, check_fields

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("onecycle", "cosine", "plateau", "step", "none")



@dataclass(frozen=True)
class DatasetRule:
    """A named dataset, or the path of an image-folder tree (stored absolute: see resolve)."""

    def convert(self, value):
        return value if isinstance(value, str) and (value in DATASETS or is_folder(value)) else None

    def describe(self) -> str:
        return f"one of {', '.join(DATASETS)}, or the path of an image-folder tree"


_POSITIVE = Number(float, 0, lo_open=True)
_NON_NEGATIVE = Number(float, 0)
MAX_EPOCHS = 10_000  # a bound, so that a typo (99999999999999999999) is refused, not started
MAX_RATE = 1e6  # lr and weight decay above this overflow float32 weights in the first step
_FRACTION = Number(float, 0, 1, lo_open=True, hi_open=True)
# The rule of every Recipe field but `augment` (an AugmentSpec, which checks its own: augment.AUGMENT_RULES);
# as strict as the train command's options where it has one (--lr > 0, --label-smoothing in [0, 1), ...).
RECIPE_RULES = {
    "dataset": DatasetRule(),
    "image_size": Numbers(Number(int, 1), count=2, example="image_size=(64,64)"),
    "epochs": Number(int, 1, MAX_EPOCHS),
    "batch_size": Number(int, 1),
    "optimizer": Choice(OPTIMIZERS),
    "lr": Number(float, 0, MAX_RATE, lo_open=True),
    "momentum": Number(float, 0, 1, hi_open=True),
    "nesterov": Flag(),
    "weight_decay": Number(float, 0, MAX_RATE),
    "scheduler": Choice(SCHEDULERS),
    "pct_start": _FRACTION,
    "div_factor": _POSITIVE,
    "final_div_factor": _POSITIVE,
    "warmup_epochs": _NON_NEGATIVE,
    "plateau_factor": _FRACTION,
    "plateau_patience": Number(int, 0),
    "early_stop_patience": Number(int, 0),
    "step_milestones": Numbers(_FRACTION, example="step_milestones=(0.5,0.75)"),
    "step_gamma": _POSITIVE,
    "label_smoothing": Number(float, 0, 1, hi_open=True),
    "grad_clip": _NON_NEGATIVE,
    "depth_warmup_epochs": _NON_NEGATIVE,
    "tau_start": _NON_NEGATIVE,
    "tau_end": _NON_NEGATIVE,
    "tta_hflip": Flag(),
}


@dataclass(frozen=True)
class Recipe:
    dataset: str = "cifar10"  # a name, or an image-folder tree's absolute path
    image_size: tuple = (32, 32)  # (H, W) of the images the model trains on: the dataset is resized to it
    epochs: int = 25
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # the peak learning rate (OneCycle's max_lr)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # never on soft-sharing coefficients (see train.build_optimizer)
    scheduler: str = "onecycle"  # onecycle | cosine | plateau | step | none
    # onecycle, stepped per batch: lr/div_factor -> lr over pct_start, then -> lr/div/final_div
    pct_start: float = 0.15
    div_factor: float = 10.0
    final_div_factor: float = 100.0
    # cosine, stepped per batch: linear warm-up from 0 over warmup_epochs, then cosine to 0
    warmup_epochs: float = 0.0
    # plateau, stepped per epoch on the selection loss; early stop after that many bad epochs (0: off)
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    early_stop_patience: int = 0
    # step: lr *= step_gamma at these fractions of the run (its batches; the seed's epochs when whole)
    step_milestones: tuple = (0.3, 0.6, 0.8)
    step_gamma: float = 0.2
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0: off
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    # egrr: recursion depth 1 -> full over depth_warmup_epochs (0: off); gate temperature annealed
    # exponentially from tau_start to tau_end over the run (0: off)
    depth_warmup_epochs: float = 0.0
    tau_start: float = 0.0
    tau_end: float = 0.0
    # evaluation (validation and test) averages the logits of each image and of its mirror image
    tta_hflip: bool = False

    def __post_init__(self):
        check_fields(self, RECIPE_RULES, "Recipe field")
        if self.tau_start > 0 and self.tau_end == 0:
            raise CnnscopeError(f"Recipe field tau_end=0 is not allowed with tau_start={self.tau_start:g}: the gate "
                                "temperature decays exponentially from tau_start to tau_end, so tau_end must be > 0 "
                                "(or tau_start=0 to keep the temperature fixed).")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# The seed 002 pipeline. The seed's ShiftScaleRotate had shift_limit=(0.0625, 0.0625), a fixed
# +6.25% shift; here the shift is drawn from [-6.25%, +6.25%] as intended.
_COMPACT_AUGMENT = AugmentSpec(hflip=0.5, affine_p=0.5, translate=0.0625, scale=(0.9, 1.1), rotate=15,
                               cutout=16, cutout_p=0.5, cutout_fill="mean")
_CROP_FLIP = AugmentSpec(hflip=0.5, crop_pad=4)

_COMPACT = Recipe(epochs=25, augment=_COMPACT_AUGMENT)

RECIPES = {
    "basic": _COMPACT,
    "dilated": _COMPACT,
    "tiny": Recipe(
        epochs=50, lr=0.045, scheduler="plateau", plateau_factor=0.1, plateau_patience=2,
        early_stop_patience=6,
        augment=AugmentSpec(hflip=0.5, affine_p=0.7, translate=0.0625, scale=(0.9, 1.1), rotate=10,
                            cutout=16, cutout_p=0.5, cutout_fill="mean"),
    ),
    "ectied": Recipe(epochs=200, lr=0.1, nesterov=False, scheduler="cosine", augment=_CROP_FLIP),
    "egrr": Recipe(
        epochs=200, lr=0.1, scheduler="cosine", warmup_epochs=5, grad_clip=5.0, label_smoothing=0.1,
        depth_warmup_epochs=20, tau_start=1.0, tau_end=0.1,
        augment=AugmentSpec(hflip=0.5, crop_pad=4, autoaugment=True, cutout=8, cutout_p=1.0),
    ),
    # Cutout 16 is optional in the seed: --augment cutout=16 --augment cutout_p=1
    "swrn": Recipe(epochs=200, lr=0.1, scheduler="step", step_milestones=(0.3, 0.6, 0.8), step_gamma=0.2,
                   augment=_CROP_FLIP),
}

# Time to accuracy, the airbench way (`cnnscope train basic --speed`; benchmarks/README.md): the
# fewest epochs that reach the target, so no augmentation but the mirror image, twice the peak LR,
# label smoothing against the over-confidence of a short run, and the mirror image again at
# evaluation; 28x28 images (Fashion-MNIST's own, 23% fewer pixels than 32x32).
SPEED_RECIPES = {
    "basic": dataclasses.replace(_COMPACT, epochs=2, image_size=(28, 28), lr=0.2, label_smoothing=0.1,
                                 tta_hflip=True, augment=AugmentSpec(hflip=0.5)),
}


def get_recipe(spec: str, speed: bool = False) -> Recipe:
    """The recipe of a registry model (with `speed`, its speed recipe), its dataset the registry's;
    any other SPEC gets basic's."""
    from cnnscope import zoo

    table = SPEED_RECIPES if speed else RECIPES
    if speed and spec not in SPEED_RECIPES:
        raise CnnscopeError(f"{spec} has no speed recipe; the models with one are: {', '.join(SPEED_RECIPES)}. "
                            "Train it with its own recipe (leave out speed), changing epochs or lr as you like.",
                            arguments=("speed",))
    if spec in zoo.list_models():
        return dataclasses.replace(table.get(spec, _COMPACT), dataset=zoo.get_entry(spec).dataset)
    return _COMPACT


# A small image-folder tree: the recipes' batch of 128 was chosen for 50,000 images (390 optimizer steps an
# epoch); on 1,200 images it leaves 10, too few for the schedule and for batch norm's running statistics
# (which evaluation uses) to follow the weights. A tree's batch is halved, down to SMALL_TREE_BATCH, until an
# epoch has SMALL_TREE_STEPS steps; more steps with the same peak LR train such a tree better (on scikit-learn's
# digits, 5 epochs: 81% test at batch 128, 96% at 32; benchmarks/README.md), and a smaller batch is not a
# smaller learning rate: at 32 with a quarter of the LR, 86%.
SMALL_TREE_STEPS = 30
SMALL_TREE_BATCH = 32
MIN_RUN_STEPS = 300  # fewer optimizer steps in all: a tree's run warns that they may not be enough


def fit_to_tree(recipe: Recipe, train_images: int) -> tuple[Recipe, str]:
    """The recipe for an image-folder tree of `train_images` training images (its batch no larger
    than the split, and halved while an epoch has fewer than SMALL_TREE_STEPS steps), and one line
    saying what changed ("" when nothing did)."""
    batch = min(recipe.batch_size, max(1, train_images))
    while batch > SMALL_TREE_BATCH and math.ceil(train_images / batch) < SMALL_TREE_STEPS:
        batch = max(SMALL_TREE_BATCH, batch // 2)
    if batch == recipe.batch_size:
        return recipe, ""
    steps, before = math.ceil(train_images / batch), math.ceil(train_images / recipe.batch_size)
    why = f"so that an epoch has {steps} optimizer steps, not {before}" if steps > before else "the whole split"
    return dataclasses.replace(recipe, batch_size=batch), (
        f"A small tree ({train_images:,} training images): batch {batch} instead of the recipe's {recipe.batch_size}, "
        f"{why} (a batch size given by hand is kept).")


def too_few_steps(recipe: Recipe, train_images: int) -> str:
    """A warning when a run of `recipe` over `train_images` images takes fewer than MIN_RUN_STEPS
    optimizer steps in all, with the epochs that would give that many; "" otherwise."""
    per_epoch = math.ceil(train_images / recipe.batch_size)
    if per_epoch * recipe.epochs >= MIN_RUN_STEPS:
        return ""
    return (f"{recipe.epochs} epochs of {per_epoch} batches are {recipe.epochs * per_epoch} optimizer steps in all: "
            "likely too few for the learning-rate schedule, and for batch norm's running statistics (which "
            f"evaluation uses) to settle. Train {math.ceil(MIN_RUN_STEPS / per_epoch)} epochs or more.")


_EPOCH_SCHEDULES = ("warmup_epochs", "depth_warmup_epochs")
_PIXEL_SIZES = ("cutout", "crop_pad")  # augmentation fields in pixels of the recipe's image size


def resolve(recipe: Recipe, overrides: dict, augment_overrides: dict | None = None) -> Recipe:
    """Apply command-line values (None = not given) to `recipe`; every value is checked by its rule
    (RECIPE_RULES, augment.AUGMENT_RULES).

    A shorter --epochs shrinks the epoch-measured schedules in proportion unless they are given too;
    another image size scales the augmentation's sizes in pixels (_PIXEL_SIZES) with it unless they
    are given too (a 16-pixel cutout hides half the side of a 32x32 image, all of a 16x16 one).
    """
    _check_names("recipe", overrides, Recipe, exclude={"augment"})
    _check_names("augmentation", augment_overrides or {}, AugmentSpec)
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(given.get("dataset"), str) and is_folder(given["dataset"]):  # a run finds its tree from anywhere
        given["dataset"] = str(Path(given["dataset"]).expanduser().resolve())
    augment = dataclasses.replace(recipe.augment, **_scaled_pixels(recipe, given.get("image_size"),
                                                                   augment_overrides or {}))
    resolved = dataclasses.replace(recipe, augment=augment, **given)
    if resolved.epochs < recipe.epochs:
        scaled = {name: getattr(recipe, name) * resolved.epochs / recipe.epochs
                  for name in _EPOCH_SCHEDULES if name not in given}
        resolved = dataclasses.replace(resolved, **scaled)
    return resolved


def _scaled_pixels(recipe: Recipe, image_size, augment_overrides: dict) -> dict:
    """The augmentation fields to set: `augment_overrides`, and the recipe's sizes in pixels scaled
    from its image size to `image_size` (by the shorter side; a size that was on stays at least 1)."""
    if image_size is None or tuple(image_size) == tuple(recipe.image_size):
        return dict(augment_overrides)
    ratio = min(image_size) / min(recipe.image_size)
    scaled = {name: max(1, round(getattr(recipe.augment, name) * ratio)) for name in _PIXEL_SIZES
              if getattr(recipe.augment, name) and name not in augment_overrides}
    return {**scaled, **augment_overrides}


def _check_names(what, values: dict, cls, exclude=()):
    known = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    unknown = sorted(set(values) - known)
    if unknown:
        raise CnnscopeError(f"Unknown {what} field(s) {', '.join(unknown)}. The {what} fields are: "
                            f"{', '.join(sorted(known))}.")


def recipe_from_json(obj: dict) -> Recipe:
    """Inverse of Recipe.to_json (config.json and checkpoints store the resolved recipe)."""
    obj = dict(obj)  # lists stand for tuples: the field rules convert them
    return Recipe(augment=AugmentSpec(**obj.pop("augment")), **obj)
