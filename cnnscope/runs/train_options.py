"""The options of a training run: a new run's (the model's recipe with the caller's values on top),
a resumed run's (the checkpoint's, of which only the how-and-where may change), and the command
that resumes a run.
"""
import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path

from cnnscope.errors import CnnscopeError, DataError, RunError
from cnnscope.runs import datasets, model_source, recipes, run_folder
from cnnscope.runs.checkpoint import load_checkpoint
from cnnscope.runs.recipes import Recipe
from cnnscope.runs.spec import check_file_spec, is_registry_name


@dataclass
class TrainOptions:
    # what is trained: fixed for the life of a run (a resumed run keeps them)
    spec: str
    ctor: dict
    recipe: Recipe
    val_split: float = 0.1
    seed: int = 0
    aug_backend: str = "batch"
    train_subset: int = 0  # train on this many images of the training split (0: all of it)
    init_from: str = ""  # the checkpoint whose weights the run started from (runs.transfer)
    source: dict | None = None  # the copy of the user's model source in the run folder (runs.model_source)
    adapted: str = ""  # what the recipe changed to fit the data (a small tree's batch), said at the start
    # how and where: may change when resuming without changing the result
    data_dir: str = "data"
    out: str = "reports"
    name: str = ""
    device: str = "auto"
    amp: bool | None = None  # None: on with CUDA
    channels_last: bool | None = None  # None: on (faster on the CPU too; benchmarks/README.md)
    compile: bool = False  # torch.compile the model on CUDA, the step's fused passes on the CPU (opt-in)
    save_every: int = 0
    tensorboard: str | None = None  # the events folder: inside the run folder when relative (runs.tensorboard)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "recipe": self.recipe.to_json()}

    @classmethod
    def from_json(cls, obj: dict) -> "TrainOptions":
        return cls(**{**obj, "recipe": recipes.recipe_from_json(obj["recipe"])})


def new_options(spec, *, ctor=None, recipe_overrides=None, augment_overrides=None, val_split=None, seed=None,
                aug_backend=None, train_subset=None, init_from=None, name=None, speed=False,
                **runtime) -> TrainOptions:
    """Options of a new run: the model's recipe (its speed recipe with `speed`) with the command
    line on top (None = not given)."""
    from cnnscope.runs.checkpoint import resolve_run
    from cnnscope.runs.spec import resolve_target

    _, display_name = resolve_target(spec)  # fails early and clearly on a bad SPEC
    if init_from:
        init_from = str(resolve_run(init_from)[1].resolve())
    recipe = recipes.resolve(recipes.get_recipe(spec, speed), recipe_overrides or {}, augment_overrides)
    if recipe.dataset not in datasets.DATASETS and not datasets.is_folder(recipe.dataset):
        raise DataError(f"Unknown dataset {recipe.dataset!r}; choose one of {', '.join(datasets.DATASETS)}.")
    given = {k: v for k, v in dict(val_split=val_split, seed=seed, aug_backend=aug_backend, train_subset=train_subset,
                                   init_from=init_from, **runtime).items() if v is not None}
    opts = TrainOptions(spec=spec, ctor=dict(ctor or {}), recipe=recipe, name=display_name if name is None else run_folder.checked_name(name), **given)
    if datasets.is_folder(recipe.dataset) and (recipe_overrides or {}).get("batch_size") is None:
        fitted, adapted = recipes.fit_to_tree(recipe, tree_train_images(opts))
        opts = dataclasses.replace(opts, recipe=fitted, adapted=adapted)
    return opts


def tree_train_images(opts: TrainOptions) -> int:
    """The training images of the run's image-folder tree (its train_subset, if smaller), counted
    from the file listing."""
    from cnnscope.runs.image_folder import split_sizes

    count = split_sizes(opts.recipe.dataset, opts.val_split)["train"]
    return min(count, opts.train_subset) if opts.train_subset else count


def check_shares(train_images: int, world_size: int) -> None:
    """Every data-parallel process needs at least one training image."""
    if train_images < world_size:
        raise CnnscopeError(
            f"{train_images} training image(s) cannot be shared by {world_size} processes: each needs at least one. "
            f"Train on {world_size} or more images (train_subset), or with fewer processes (procs).",
            arguments=("train_subset", "procs"),
        )


def resume_path(resume) -> Path:
    """--resume RUN|CHECKPOINT -> the checkpoint file (a run folder's checkpoints/last.pth)."""
    path = Path(resume)
    if not path.is_dir():
        return path
    last = path / "checkpoints" / "last.pth"
    if not last.exists() and run_folder.is_run(path):
        raise run_folder.nothing_to_resume(path)
    return last


def resume_options(resume, spec=None, *, ctor=None, recipe_overrides=None, augment_overrides=None,
                   val_split=None, seed=None, aug_backend=None, train_subset=None, init_from=None, out=None,
                   name=None, trust_spec=False, speed=False, **runtime):
    """Options of a resumed run: the checkpoint's, with only the how-and-where options changeable,
    and the recipe's epochs, which may grow (extend_epochs). Its model is built only if it is a zoo
    model, the user names it (`spec`) or trusts it (`trust_spec`).

    Returns (options, checkpoint, run folder).
    """
    if speed:
        raise CnnscopeError("A resumed run keeps its own recipe: leave out speed with resume.",
                            arguments=("speed", "resume"))
    path = resume_path(resume)
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "config" not in ckpt:
        raise RunError(
            f"{path} holds model weights but no training state (optimizer, epoch); it cannot be resumed. "
            "Resume from a run's checkpoints/last.pth, or start a new run."
        )
    saved = TrainOptions.from_json(ckpt["config"]["options"])
    if spec is not None and spec != saved.spec:
        raise RunError(
            f"{path} is a checkpoint of model {saved.spec!r}, not {spec!r}. Resume it with resume={resume!r} "
            f"and no model (the run knows its model), or train {spec!r} as a new run, without resume.",
            arguments=("resume",),
        )
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    check_file_spec(model_source.copy_spec(run_dir, saved.spec, saved.source), saved.ctor,
                    f"The training configuration in {path}", trust_spec or spec is not None)
    asked = dict(val_split=val_split, seed=seed, aug_backend=aug_backend, train_subset=train_subset,
                 init_from=init_from)
    asked_recipe = recipes.resolve(saved.recipe, recipe_overrides or {}, augment_overrides)
    recipe = extend_epochs(saved.recipe, asked_recipe.epochs, ckpt["loop"]["epoch"], path)
    changed = [k for k, v in asked.items() if v is not None and v != getattr(saved, k)]
    changed += [f"ctor.{k}" for k, v in (ctor or {}).items() if saved.ctor.get(k) != v]
    changed += [f"recipe.{f.name}" for f in dataclasses.fields(Recipe)
                if f.name != "epochs" and getattr(asked_recipe, f.name) != getattr(saved.recipe, f.name)]
    changed += [k for k, v in dict(out=out, name=name).items() if v is not None]
    if changed:
        raise RunError(
            f"resume continues a run with the settings it was started with, in its own folder; these "
            f"settings would change it: {', '.join(changed)}. Leave them out, or start a new run (without "
            f"resume) under another name.", arguments=("resume", "name"),
        )
    runtime = {k: v for k, v in runtime.items() if v is not None}
    opts = dataclasses.replace(saved, recipe=recipe, **runtime)
    return opts, ckpt, run_dir


def extend_epochs(recipe: Recipe, epochs: int, done: int, path) -> Recipe:
    """The recipe of a resumed run (`done` epochs trained) asked to train `epochs` in all: more than
    it planned extends it (its schedule is then re-planned: runs.train_state.restore_schedule);
    fewer than it planned is refused."""
    if epochs < recipe.epochs:
        raise RunError(
            f"{path} is a run of {recipe.epochs} epochs ({done} done); resume can extend a run to more epochs, "
            f"not shorten it. Ask for {recipe.epochs} or more epochs, or leave epochs out.", arguments=("epochs",),
        )
    return dataclasses.replace(recipe, epochs=epochs)


def run_dir_of(opts: TrainOptions, run_dir=None) -> Path:
    """The run's folder: `run_dir` (a resumed run's), else --out/--name."""
    return Path(run_dir) if run_dir else Path(opts.out) / opts.name


def resume_command(run_dir: Path, opts: TrainOptions, torchrun_procs: int = 0) -> str:
    """The command that continues the run (printed to be pasted, so a command line, not an error
    worded in arguments); under torchrun (torchrun_procs > 0) with torchrun, as
    `cnnscope train --resume` starts as many processes as the run had (--procs auto) but torchrun
    does not."""
    launcher = ["torchrun", f"--nproc_per_node={torchrun_procs}", "-m", "cnnscope"] if torchrun_procs else ["cnnscope"]
    args = launcher + ["train", "--resume", str(run_dir)]
    if opts.device != "auto":
        args += ["--device", opts.device]
    if opts.data_dir != "data":
        args += ["--data-dir", str(opts.data_dir)]
    if not is_registry_name(opts.spec):  # the user's own model: they trusted it to train, and may resume it
        args.append("--trust-spec")
    return shlex.join(args)


def resume_hint(run_dir: Path, opts: TrainOptions) -> str:
    """What to do after the run's processes were lost: resume from last.pth, if there is one yet
    (the command line of resume_command, to be pasted)."""
    if (run_dir / "checkpoints" / "last.pth").is_file():
        return f"Resume with: {resume_command(run_dir, opts)}"
    return "No checkpoint had been saved yet: start the run again."
