"""A grid of training images before and after the augmentation a model trains with
(`cnnscope augment MODEL|RUN`): a MODEL's recipe, or what a RUN was trained with."""
from pathlib import Path

from cnnscope.core.augment import AugmentResult
from cnnscope.errors import CnnscopeError
from cnnscope.render.progress import SILENT
from cnnscope.runs import checkpoint, recipes, run_folder, spec
from cnnscope.runs.datasets import load_dataset
from cnnscope.runs.loaders import augmented_samples


def augment_grid(target, *, dataset=None, data_dir="data", n=32, backend=None, out=None, seed=None,
                 reporter=SILENT) -> AugmentResult:
    """Augment the first `n` images of epoch 0's first training batch and draw them in
    <out>/plots/augmented_samples_grid.png.

    `target` is a MODEL (its recipe's augmentation and dataset, backend "batch", seed 0) or a RUN
    (reports/<run> or a checkpoint: the augmentation, dataset, backend, validation split and seed it
    was trained with). `dataset`, `backend` and `seed` (of the batch and its augmentation) replace
    those; `out` defaults to the run folder for a RUN, reports/<model> for a MODEL.
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
    """augment_grid into its output folder: `out`, else a RUN's folder (run_folder.output_folder: a
    checkpoint outside any run gets a folder of its own) or reports/<model>; a run folder with
    linked entries is refused, and no write below the folder follows a link."""
    if out is None and Path(target).exists():
        out = run_folder.output_folder(*checkpoint.resolve_run(target))
        run_folder.refuse_links(out)
    out_dir = Path(out or Path("reports") / spec.resolve_target(target)[1])
    with run_folder.writing_into(out_dir):
        return augment_grid(target, out=out_dir, **options)


def _trained_with(target, out):
    """(model, recipe, backend, seed, val_split, output folder) of a RUN or a MODEL."""
    if not Path(target).exists():  # a MODEL: its recipe (its SPEC is resolved only to name the folder)
        recipe = recipes.get_recipe(target)
        return target, recipe, "batch", 0, 0.1, Path(out or Path("reports") / spec.resolve_target(target)[1])
    run_dir, ckpt_path = checkpoint.resolve_run(target)
    options = checkpoint.load_checkpoint(ckpt_path).get("config", {}).get("options")
    if options is None:
        raise CnnscopeError(f"{ckpt_path} holds no training configuration, so its augmentation is unknown. "
                            "Pass the MODEL name instead (its recipe's augmentation is shown).")
    return (options["spec"], recipes.recipe_from_json(options["recipe"]), options["aug_backend"], options["seed"],
            options["val_split"], Path(out or run_dir))
