"""augment: a grid of augmented training samples."""
import click

from cnnscope.cli.common import SPEC_RUNS_CODE, cli, emit_parts, format_option
from cnnscope.errors import CnnscopeError


@cli.command("augment", epilog=SPEC_RUNS_CODE)
@click.argument("target", metavar="MODEL|RUN")
@click.option("--dataset", default=None, help="Dataset of the images [default: the run's, else the model recipe's].")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where the datasets are (or are downloaded to).")
@click.option("--n", "n_images", type=click.IntRange(1, 256), default=32, show_default=True,
              help="Number of training images.")
@click.option("--aug-backend", type=click.Choice(("batch", "albumentations")), default=None,
              help="Augmentation backend [default: the run's, else batch].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder that gets plots/augmented_samples_grid.png [default: the run folder for RUN, "
                   "reports/<model> for MODEL].")
@format_option()
def augment_cmd(target, dataset, data_dir, n_images, aug_backend, out, fmt):
    """Grid of training images before and after the training augmentation pipeline.

    MODEL uses its recipe's augmentation and dataset; RUN (reports/<run> or a checkpoint) the
    resolved augmentation, dataset, backend, validation split and seed it was trained with. Shows
    the first N images of epoch 0's first training batch. Writes plots/augmented_samples_grid.png.

    \b
    JSON: {target, model, dataset, backend, augment: {AugmentSpec fields}, pipeline, n, figure}

    \b
    Examples:
      cnnscope augment basic --dataset fashion-mnist
      cnnscope augment reports/egrr --n 16 --aug-backend albumentations
    """
    import dataclasses
    from pathlib import Path

    from cnnscope.runs import checkpoint, data, recipes, spec
    from cnnscope.render import plots

    if Path(target).exists():  # a RUN: what it was trained with
        run_dir, ckpt_path = checkpoint.resolve_run(target)
        options = checkpoint.load_checkpoint(ckpt_path).get("config", {}).get("options")
        if options is None:
            raise CnnscopeError(f"{ckpt_path} holds no training configuration, so its augmentation is unknown. "
                                "Pass the MODEL name instead (its recipe's augmentation is shown).")
        model, recipe = options["spec"], recipes.recipe_from_json(options["recipe"])
        backend, seed, val_split = options["aug_backend"], options["seed"], options["val_split"]
        out_dir = Path(out or run_dir)
    else:
        model, recipe, backend, seed, val_split = target, recipes.get_recipe(target), "batch", 0, 0.1
        out_dir = Path(out or Path("reports") / spec.resolve_target(target)[1])
    backend = aug_backend or backend
    ds = data.load_dataset(dataset or recipe.dataset, data_dir, val_split=val_split, seed=seed)
    originals, augmented, labels = data.augmented_samples(ds, recipe.augment, n=n_images, backend=backend,
                                                          seed=seed)
    figure = plots.augmentation_grid(
        originals, augmented, [ds.classes[i] for i in labels], out_dir / "plots" / "augmented_samples_grid.png",
        title=f"{model} on {ds.name}, {backend} backend: {recipe.augment.describe()}")
    result = {"target": target, "model": model, "dataset": ds.name, "backend": backend,
              "augment": dataclasses.asdict(recipe.augment), "pipeline": recipe.augment.describe(),
              "n": len(labels), "figure": str(figure)}

    def table():
        from rich.table import Table

        t = Table(title=f"cnnscope augment {target}", show_header=False)
        for key in ("model", "dataset", "backend", "pipeline", "n", "figure"):
            t.add_row(key, str(result[key]))
        return t

    emit_parts(fmt, table=table, json_obj=result,
         markdown=lambda: "\n".join(f"- {key}: {result[key]}" for key in ("model", "dataset", "backend",
                                                                         "pipeline", "n", "figure")))
