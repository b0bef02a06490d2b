"""Training, evaluation, comparison: train, evaluate, compare."""
import json
import sys

import click

from cnnscope.cli.common import (
    SPEC_RUNS_CODE, FloatRange, cli, ctor_option, device_option, emit, format_option, procs_option,
    seed_option, tensorboard_option, trust_spec_option, verbosity_options,
)
from cnnscope.errors import CnnscopeError


DATASETS_HELP = (
    "Datasets: the named ones are read from --data-dir (CIFAR and Fashion-MNIST are downloaded when missing; "
    "MNIST, KMNIST and SVHN files are placed by hand). --dataset FOLDER is an image-folder tree: "
    "FOLDER/<class>/*.png|jpg, or FOLDER/train/<class>/... with val/ and/or test/ beside it. Without test/, a "
    "fixed 10% of the training images (a permutation fixed by the files, not by --seed) is the test split; "
    "without val/, the next --val-split share of the rest is the validation split. Grey trees train 1-channel "
    "models, or are repeated over RGB for 3-channel ones. Images are decoded once, resized to --image-size, "
    "into FOLDER/.cnnscope-cache/, which later runs read from disk; a changed tree is decoded again. A small tree "
    "(fewer than 30 optimizer steps an epoch at the recipe's batch) gets a smaller batch, down to 32, unless "
    "--batch-size is given.")


@cli.command("train", epilog=f"{DATASETS_HELP}\n\n{SPEC_RUNS_CODE}")
@click.argument("model", metavar="[MODEL]", required=False)
@ctor_option
@click.option("--dataset", metavar="NAME|FOLDER",
              help="cifar10 | cifar100 | mnist | kmnist | fashion-mnist | svhn | fake, or an image-folder tree (see "
                   "below) [default: the model's].")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where datasets live / download to [default: data].")
@click.option("--image-size", callback=lambda ctx, param, value: parse_image_size(value), metavar="N|HxW",
              help="Train on images resized to N x N (or H x W) [default: the recipe's, 32].")
@click.option("--epochs", type=click.IntRange(min=1),
              help="Epochs [default: the recipe's]; with --resume, a larger count extends the run (see below).")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Batch size, split between the processes [default: the recipe's].")
@click.option("--lr", type=FloatRange(min=0, min_open=True), help="Peak learning rate (OneCycle max_lr).")
@click.option("--optimizer", type=click.Choice(("sgd", "adamw")), help="Optimizer [default: the recipe's].")
@click.option("--scheduler", type=click.Choice(("onecycle", "cosine", "plateau", "step", "none")),
              help="Learning-rate schedule [default: the recipe's].")
@click.option("--weight-decay", type=FloatRange(min=0), help="Weight decay (never on soft-sharing coefficients).")
@click.option("--label-smoothing", type=FloatRange(0, 1, max_open=True), help="Label smoothing of the loss.")
@click.option("--grad-clip", type=FloatRange(min=0), help="Max global gradient norm; 0 turns it off.")
@click.option("--speed", is_flag=True,
              help="Train with the model's speed recipe (basic: 2 epochs at 28x28, peak LR 0.2, mirror images, "
                   "label smoothing 0.1, mirror images again at evaluation) instead of its seed's: the shortest "
                   "time to a target accuracy (benchmarks/README.md). Other options still apply on top.")
@click.option("--recipe", "recipe", multiple=True, metavar="K=V",
              help="Any other recipe field, e.g. --recipe warmup_epochs=2 --recipe early_stop_patience=0; repeatable.")
@click.option("--augment", "augment", multiple=True, metavar="K=V",
              help="Augmentation field, e.g. --augment cutout=16 --augment cutout_p=1.0 --augment hflip=0; repeatable.")
@click.option("--val-split", type=FloatRange(0, 1, max_open=True), help="Fraction of the training set held out for selection; 0 selects on "
                                               "the test set [default: 0.1]. An image folder's is fixed by its files.")
@seed_option(default=None, used_for="of the split, data order, augmentation and initial weights [default: 0; a resumed "
                                   "run keeps its own]")
@click.option("--train-subset", type=click.IntRange(min=1), metavar="N",
              help="Train on a random N-image subset of the training split (fixed by --seed), for quick looks "
                   "at heavy models; the validation and test sets stay whole.")
@click.option("--aug-backend", type=click.Choice(("batch", "albumentations")),
              help="Augmentation path: whole batches in-process (default) or the seeds' per-sample albumentations.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder of the run folders [default: reports].")
@click.option("--name", help="Run folder name [default: the model name].")
@device_option(default=None, used_for="to train on [default: auto; a resumed run keeps its own]")
@click.option("--amp/--no-amp", default=None, help="Mixed precision (CUDA only) [default: on with CUDA].")
@click.option("--channels-last/--no-channels-last", default=None,
              help="channels_last weights and batches (faster); off: both contiguous. A model that gives other "
                   "logits on channels_last batches (e.g. a forward's x.view(x.size(0), -1)) gets contiguous ones, "
                   "and the run says so [default: on].")
@click.option("--compile/--no-compile", default=None,
              help="torch.compile: slower first batches, faster steps after. On CUDA the whole model; on the CPU "
                   "only the step's fused passes (DivisiveNorm, egrr's gate mixing, the dilated depthwise weight "
                   "gradient; the model stays eager): minutes to compile the first time on a machine, 1.1-1.3x "
                   "faster steps for ectied and egrr (`cnnscope bench --compile` measures it) [default: off; a "
                   "resumed run keeps its own].")
@click.option("--save-every", type=click.IntRange(min=0), help="Also keep checkpoints/epoch_NNN.pth every N epochs.")
@tensorboard_option("Also write TensorBoard events (the extra cnnscope[tensorboard]): loss and lr per step, the log "
                    "per epoch, the hyperparameters with the final metrics, the figures and the RF table, into DIR "
                    "[default: RUN/tensorboard]. A resumed run goes on writing them.")
@click.option("--config", type=click.Path(dir_okay=False), metavar="FILE",
              help="Options from a YAML or JSON file: the fields of a run's config.json options (a run's own "
                   "config.json replays it); options given here override the file's.")
@click.option("--print-config", is_flag=True, help="Print the resolved options (JSON, a --config file) and stop.")
@procs_option
@click.option("--resume", metavar="RUN|CHECKPOINT", help="Continue a run from its checkpoints/last.pth (or a file).")
@click.option("--init-from", metavar="RUN|CHECKPOINT",
              help="Start a new run from the weights of a run (its best.pth) or checkpoint; a classifier head with "
                   "another class count is replaced by a fresh one. Only weights are read: no code runs.")
@trust_spec_option()
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier cnnscope run in the same folder (not one in use); only the files a run "
                   "writes are removed.")
@verbosity_options
def train_cmd(model, ctor, recipe, augment, resume, trust_spec, overwrite, config, print_config, **options):
    """Train MODEL with its recipe; write reports/<name>/.

    MODEL is a zoo name, path/file.py:Class or package.module:attr (see SPEC in `cnnscope --help`);
    with --resume it may be left out (a run of a model that is no zoo model then needs
    --trust-spec, or MODEL named). The run folder gets config.json, train_log.csv,
    metrics.json, model_summary.txt, rf.md, checkpoints/{last,best}.pth, curves, and the test
    evaluation of best.pth (see `cnnscope evaluate`). best.pth is chosen on the validation split.

    \b
    Recipes (SGD m0.9 wd 5e-4 batch 128 unless said; any other SPEC gets basic's):
      basic, dilated  nesterov, OneCycle max_lr 0.1 (per batch), 25 epochs; hflip, affine, cutout 16
      tiny            nesterov lr 0.045, plateau x0.1 patience 2, early stop 6, 50 epochs
      ectied          lr 0.1 cosine, 200 epochs; crop pad 4, hflip
      egrr            nesterov lr 0.1, 5-epoch warm-up + cosine, depth warm-up 20 epochs,
                      tau 1 -> 0.1, grad clip 5, label smoothing 0.1, 200 epochs, CIFAR-100;
                      crop, hflip, AutoAugment, cutout 8
      swrn            nesterov lr 0.1, x0.2 at 30/60/80%, 200 epochs, no wd on coefficients
    Every value can be overridden: the common ones by name, the rest with --recipe K=V and
    --augment K=V. A shorter --epochs shrinks the warm-ups; another --image-size, cutout and crop pad.

    Ctrl-C stops after the current batches, saves checkpoints/last.pth and prints the resume
    command; the resumed run ends with exactly the weights of an uninterrupted one (CPU).
    --resume RUN --epochs N extends a finished or stopped run to N epochs in all: its schedule is
    re-planned as if the run had been started with N epochs, from the step it reached (a OneCycle
    or cosine LR goes back up to where the longer schedule is; step milestones move; a plateau
    schedule keeps its state), and early stopping's count of bad epochs starts again.

    A run of your own model (a file or module SPEC) keeps a copy of its source files in
    RUN/model_source/ and is rebuilt from that copy by every later command (from any folder, after
    the file moved or changed; a changed original is reported).
    Exit codes: 0 done, 2 bad input or a diverged (NaN) loss, 130 stopped by Ctrl-C.

    On the CPU the batch is split over --procs data-parallel processes (gloo): by default one per
    64 images of the batch, whatever the machine (2 for basic's batch of 128), so that the same
    command trains the same weights everywhere; --procs 1 trains in this process (other weights:
    batch norm then sees the whole batch). Several GPUs: torchrun, one process per GPU.

    \b
    Examples:
      cnnscope train basic --speed --dataset fashion-mnist --val-split 0
      cnnscope train egrr --epochs 30 --augment autoaugment=False
      cnnscope train my_model.py:Net --ctor width=32 --lr 0.05 --name net-w32
      cnnscope train --resume reports/basic
      cnnscope train --resume reports/basic --epochs 40
      cnnscope train my_model.py:Net --dataset path/to/images --image-size 64 --init-from reports/basic
      cnnscope train basic --procs 1
      torchrun --nproc_per_node=2 -m cnnscope train basic --device cuda
    """
    from cnnscope.runs.train import run_training, training_options

    if config and resume:
        raise CnnscopeError("--config starts a new run; --resume continues a run with its own options. Give one.")
    settings = training_settings(model, ctor, recipe, augment, config, trust_spec, options)
    if print_config:  # the options alone: procs and the reporter are how it would run
        opts, _, _ = training_options(resume=resume, trust_spec=trust_spec, **_without(settings, "procs", "reporter"))
        return click.echo(json.dumps(opts.to_json(), indent=2))
    code = run_training(resume=resume, trust_spec=trust_spec, overwrite=overwrite, **settings)
    if code:
        sys.exit(code)


def training_settings(model, ctor, recipe, augment, config, trust_spec, options: dict) -> dict:
    """run_training's keywords from the train command's values (`options`: the rest of them, with
    procs and the reporter), laid over the --config file's."""
    from cnnscope.runs.config_file import with_config
    from cnnscope.runs.spec import parse_key_values

    settings = dict(model=model, ctor=parse_key_values(ctor), recipe_overrides=_recipe_overrides(options, recipe),
                    augment_overrides=parse_key_values(augment, argument="augment", example="cutout=16"), **options)
    return with_config(config, settings, trust_spec) if config else settings


def _without(settings: dict, *keys) -> dict:
    return {k: v for k, v in settings.items() if k not in keys}


def parse_image_size(value):
    """--image-size N or HxW -> (H, W), None when not given."""
    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return (int(parts[0]), int(parts[-1]))
    raise click.BadParameter(f"{value!r} is not N or HxW (whole numbers of at least 1), e.g. 64 or 48x64.")


def _recipe_overrides(options: dict, recipe_items) -> dict:
    """The recipe fields given by name (taken out of `options`), then the --recipe K=V ones."""
    from cnnscope.runs.spec import parse_key_values

    overrides = {k: options.pop(k) for k in ("dataset", "image_size", "epochs", "batch_size", "lr", "optimizer",
                                             "scheduler", "weight_decay", "label_smoothing", "grad_clip")}
    for key, value in parse_key_values(recipe_items, argument="recipe", example="warmup_epochs=2").items():
        if overrides.get(key) is None:
            overrides[key] = value
    return overrides


@cli.command("evaluate")
@click.argument("run", metavar="RUN")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Dataset folder [default: the run's].")
@device_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder to write into [default: the run folder; for a checkpoint outside any run, "
                   "reports/<checkpoint>-checkpoint].")
@trust_spec_option()
@format_option()
@verbosity_options
def evaluate_cmd(run, data_dir, device, batch_size, out, trust_spec, fmt, reporter):
    """Test-set metrics of RUN (a run folder: its best.pth; or a checkpoint file).

    Writes into the run folder classification_report.csv/.md (per-class precision, recall, F1,
    support; macro and weighted averages), confusion_matrix.csv (rows true, columns predicted),
    plots/cm.png, plots/test_samples_grid.png, plots/misclassified_grid.png, and merges test_acc,
    test_loss, macro_avg, weighted_avg into metrics.json. A checkpoint whose folder is no cnnscope
    run gets a new folder instead (--out): its own folder is left as it is.

    \b
    JSON (--format json): {"run", "model", "test_loss", "test_acc" (percent), "num_test",
      "classes": [names], "confusion": [[counts]] (rows true), "per_class": [{"class", "precision",
      "recall", "f1", "support"}], "macro_avg": {"precision", "recall", "f1"}, "weighted_avg": {...},
      "top_confusions": [{"true", "pred", "count", "rate"}], "files": [the files written]}

    \b
    Examples:
      cnnscope evaluate reports/basic
      cnnscope evaluate reports/basic/checkpoints/last.pth --format json
    """
    from cnnscope.runs import evaluate

    result = evaluate.evaluate_run(run, data_dir=data_dir, device=device, batch_size=batch_size, reporter=reporter,
                                   trust_spec=trust_spec, out=out)
    emit(fmt, result, wrote=result.files)


@cli.command("compare")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--out", type=click.Path(file_okay=False), default="reports/combined", show_default=True,
              help="Folder for summary.md, summary.csv, combined_acc.png and combined_loss.png.")
@format_option()
def compare_cmd(runs, out, fmt):
    """Summary table and combined accuracy/loss curves of several runs.

    \b
    Runs trained on different datasets are compared with a warning (under the table, in summary.md;
    on stderr with --format json).

    \b
    JSON (--format json): a list of {"run", "model", "dataset", "params", "best_val_acc", "test_acc"
      (percent), "best_epoch", "epochs", "train_time_s", "images_per_s"}, one per RUN.

    \b
    Examples:
      cnnscope compare reports/basic reports/dilated
      cnnscope compare reports/* --out reports/combined --format markdown
    """
    from cnnscope.runs import compare

    result = compare.compare_runs(runs, out)
    emit(fmt, result, wrote=result.files, warnings=result.warnings)
