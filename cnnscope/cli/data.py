"""augment: a grid of augmented training samples."""
import click

from cnnscope.cli.common import SPEC_RUNS_CODE, cli, emit, format_option, seed_option, verbosity_options


@cli.command("augment", epilog=SPEC_RUNS_CODE)
@click.argument("target", metavar="MODEL|RUN")
@click.option("--dataset", default=None,
              help="Dataset (a name or an image-folder tree) of the images [default: the run's, else the model "
                   "recipe's].")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where the datasets are (or are downloaded to).")
@click.option("--n", "n_images", type=click.IntRange(1, 256), default=32, show_default=True,
              help="Number of training images.")
@click.option("--aug-backend", type=click.Choice(("batch", "albumentations")), default=None,
              help="Augmentation backend [default: the run's, else batch].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder that gets plots/augmented_samples_grid.png [default: the run folder for RUN (a "
                   "checkpoint outside any run: reports/<checkpoint>-checkpoint), reports/<model> for MODEL].")
@seed_option(default=None, used_for="of the batch drawn and of its augmentation [default: the run's, else 0]")
@format_option()
@verbosity_options
def augment_cmd(target, dataset, data_dir, n_images, aug_backend, out, seed, fmt, reporter):
    """Grid of training images before and after the training augmentation pipeline.

    MODEL uses its recipe's augmentation and dataset; RUN (reports/<run> or a checkpoint) the
    resolved augmentation, dataset, backend, validation split and seed it was trained with. Shows
    the first N images of epoch 0's first training batch. Writes plots/augmented_samples_grid.png.

    \b
    JSON: {target, model, dataset, backend, augment: {AugmentSpec fields}, pipeline, n, figure}

    \b
    Examples:
      cnnscope augment basic --dataset fashion-mnist
      cnnscope augment reports/egrr --n 16 --aug-backend albumentations --seed 1
    """
    from cnnscope.runs.augment import augment_into_folder

    emit(fmt, augment_into_folder(target, dataset=dataset, data_dir=data_dir, n=n_images, backend=aug_backend,
                                  out=out, seed=seed, reporter=reporter))
