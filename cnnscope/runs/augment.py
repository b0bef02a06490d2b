"""A grid of training images before and after the augmentation a model trains with
(`cnnscope augment MODEL|RUN`): a MODEL's recipe, or what a RUN was trained with."""
from pathlib import Path

from cnnscope.core.augment import AugmentResult
from cnnscope.errors import CnnscopeError, RunError
from cnnscope.render.progress import SILENT
from cnnscope.runs import checkpoint, recipes, run_folder, runfiles, spec
from cnnscope.runs.datasets import load_dataset
from cnnscope.runs.loaders import augmented_samples
from cnnscope.runs.run_folder import is_run


def augment_grid(target, *, dataset=None, data_dir="data", n=32, backend=None, out=None, seed=None,
                 reporter=SILENT) -> AugmentResult:
    """Augment the first `n` images of epoch 0's first training batch and draw them in
    <out>/plots/augmented_samples_grid.png.

    `target` is a MODEL (its recipe's augmentation and dataset, backend "batch", seed 0) or a RUN
    (reports/<run>, its config.json, or a checkpoint: the augmentation, dataset, backend, validation
    split and seed it was trained with). `dataset`, `backend` and `seed` (of the batch and its
    augmentation) replace those. A RUN's grid goes into the run folder; a MODEL's into `out`, by
    default reports/<model>-augment, which must not be a run folder: only a RUN's own grid is
    written into a run.
    """
    from cnnscope.render import plots

    model, recipe, trained_backend, trained_seed, val_split, out_dir = _trained_with(target, out)
    backend = backend or trained_backend
    seed = trained_seed if seed is None else seed
    reporter.detail(f"loading {dataset or recipe.dataset} from {data_dir}/; augmenting {n} images ({backend} "
                    f"backend, seed {seed})")
    ds = load_dataset(dataset or recipe.dataset, data_dir, val_split=val_split, seed=trained_seed,  # its split
                      image_size=recipe.image_size)
    originals, augmented, labels = augmented_samples(ds, recipe.augment, n=n, backend=backend, seed=seed)
    figure = plots.augmentation_grid(
        originals, augmented, [ds.classes[i] for i in labels],
        out_dir / "plots" / "augmented_samples_grid.png",
        title=f"{model} on {ds.name}, {backend} backend: {recipe.augment.describe()}")
    return AugmentResult(target=target, model=model, dataset=ds.name, backend=backend, augment=recipe.augment,
                         n=len(labels), figure=str(figure))


def augment_into_folder(target, *, out=None, **options) -> AugmentResult:
    """augment_grid into its output folder: `out`, else a RUN's folder (a checkpoint outside any run
    gets a folder of its own: run_folder.output_folder) or reports/<model>-augment; a run folder
    with linked entries is refused, and no write below the folder follows a link."""
    path = Path(target)
    if out is None and path.exists():
        out = path if path.is_dir() and is_run(path) else run_folder.output_folder(*checkpoint.resolve_run(path))
    out_dir = Path(out or _model_folder(target))
    with run_folder.writing_into(out_dir):
        return augment_grid(target, out=out_dir, **options)


def _trained_with(target, out):
    """(model, recipe, backend, seed, val_split, output folder) of a RUN or a MODEL."""
    if not Path(target).exists():  # a MODEL: its recipe (its SPEC is resolved only to name the folder)
        recipe, run_dir = recipes.get_recipe(target), None
        found = (target, recipe, "batch", 0, 0.1)
        out_dir = Path(out or _model_folder(target))
    else:
        options, run_dir = _run_options(Path(target)), _run_folder(Path(target))
        found = (options["spec"], recipes.recipe_from_json(options["recipe"]), options["aug_backend"], options["seed"],
                 options["val_split"])
        out_dir = Path(out) if out else run_dir
    if is_run(out_dir) and (run_dir is None or out_dir.resolve() != run_dir.resolve()):
        raise RunError(
            f"{out_dir} is the folder of another training run, and this grid would replace that run's own. Give "
            f"that RUN to redraw its grid (cnnscope augment {out_dir}), or another output folder.", arguments=("out",))
    return (*found, out_dir)


def _run_options(path: Path) -> dict:
    """The training options a RUN was trained with: from its config.json (a run folder, even without
    checkpoints), else from the checkpoint."""
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        options = runfiles.read_json(config, "cnnscope train").get("options")
        where = config
    else:
        _, ckpt_path = checkpoint.resolve_run(path)
        options = checkpoint.load_checkpoint(ckpt_path).get("config", {}).get("options")
        where = ckpt_path
    if not isinstance(options, dict):
        raise CnnscopeError(f"{where} holds no training configuration, so its augmentation is unknown. "
                            "Pass the MODEL name instead (its recipe's augmentation is shown).")
    return options


def _model_folder(model) -> Path:
    """A MODEL's grid folder: reports/<model>-augment, apart from any run of that model."""
    return Path("reports") / f"{spec.resolve_target(model)[1]}-augment"


def _run_folder(path: Path) -> Path:
    return path if path.is_dir() else checkpoint.resolve_run(path)[0]
