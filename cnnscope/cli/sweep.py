"""Hyperparameter search: sweep."""
import sys

import click

from cnnscope.cli.common import SEED_RANGE, cli, emit, format_option, verbosity_options
from cnnscope.errors import CnnscopeError

# train's options that the sweep sets itself for each trial, or that do not make a trial
NOT_FOR_TRIALS = ("resume", "out", "name", "overwrite", "print_config")


@cli.command("sweep", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--trials", type=click.IntRange(min=1), required=True,
              help="Trials of the study in all (this process's and others'): the same command after a stop runs "
                   "those left.")
@click.option("--param", "params", multiple=True, metavar="NAME=KIND:ARGS",
              help="A value to search, repeatable: NAME a recipe field, augment.<field> or ctor.<keyword>; KIND "
                   "log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or choice:A,B,...")
@click.option("--metric", type=click.Choice(("val_acc", "val_loss")), default="val_acc", show_default=True,
              help="What a trial scores: its best epoch's validation accuracy (maximised) or loss (minimised).")
@click.option("--storage", metavar="URL",
              help="The study's database, any URL Optuna takes (sqlite:///path, postgresql://...), shared by "
                   "the processes and machines that run the sweep [default: SWEEP/study.db].")
@click.option("--out", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="Folder of the sweep folder.")
@click.option("--name", help="The sweep folder's and the study's name [default: sweep-MODEL].")
@click.option("--sampler-seed", type=SEED_RANGE, help="Seed of the TPE sampler (the trial's draws) [default: random].")
@click.option("--prune/--no-prune", default=True, show_default=True,
              help="Stop a trial whose metric is below the median of the complete trials' at the same epoch.")
@click.option("--prune-startup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Complete trials before any trial is pruned.")
@click.option("--prune-warmup", type=click.IntRange(min=0), default=0, show_default=True,
              help="Epochs every trial trains before it can be pruned.")
@format_option()
@verbosity_options
@click.pass_context
def sweep_cmd(ctx, trials, params, metric, storage, out, name, sampler_seed, prune, prune_startup, prune_warmup,
              fmt, reporter):
    """Search recipe values of MODEL with Optuna; every trial is a run.

    \b
    cnnscope sweep MODEL --trials N --param NAME=KIND:ARGS ... [TRAIN OPTIONS]

    The TRAIN OPTIONS are those of `cnnscope train` (--dataset, --epochs, --train-subset,
    --procs, --config, --tensorboard, ...), for every trial; each trial draws its --param values
    on top (TPE sampler: random for its first 10 trials, then guided by those before). Each
    epoch's metric goes to a median pruner. Every trial is an ordinary run folder,
    SWEEP/trial-NNN (SWEEP: --out/--name), evaluated on test without the curves and sample
    grids (`cnnscope evaluate SWEEP/trial-NNN` draws them); a pruned one ends after the epoch it
    was pruned at.

    The study lives in SWEEP/study.db (or --storage): --trials is the study's total, so the same
    command after Ctrl-C finishes the trials left (a stopped trial resumes from its checkpoint),
    and several processes or machines run one study at once against one --storage URL (a
    database server for several machines), each with its own trial folders.

    Writes SWEEP/trials.md and trials.json (every trial: values, state, best metric, run folder)
    and Optuna's figures SWEEP/plots/optimization_history.png, param_importances.png (needs
    scikit-learn) and parallel_coordinate.png.

    \b
    JSON (--format json): {study, storage, metric, direction, params: [names], trials,
      rows: [{trial, params: {name: value}, state, value, epochs, run}], best, figures, notes}

    \b
    Examples:
      cnnscope sweep basic --trials 4 --param lr=log:0.01:0.5 --param batch_size=choice:64,128 \\
          --dataset fake --epochs 2 --train-subset 256
      cnnscope sweep basic --trials 20 --param lr=log:0.01:0.5 --param weight_decay=log:1e-5:1e-3 \\
          --dataset fashion-mnist --epochs 3 --storage postgresql://user@db/sweeps --name fmnist
    """
    from cnnscope.cli.training import training_settings
    from cnnscope.runs.launch import command_line
    from cnnscope.runs.sweep import Sweep, run_sweep
    from cnnscope.runs.sweep_params import parse_params

    parsed = parse_params(params)
    train = train_options(ctx)
    trust_spec = train.pop("trust_spec")
    settings = training_settings(train.pop("model"), train.pop("ctor"), train.pop("recipe"), train.pop("augment"),
                                 train.pop("config"), trust_spec, {**train, "reporter": reporter})
    if settings["model"] is None:
        raise CnnscopeError("Name the MODEL to search (e.g. `cnnscope sweep basic --trials 4 --param lr=log:0.01:0.5`).")
    result, code = run_sweep(Sweep(parsed, trials, settings, out, name, metric, storage, sampler_seed, prune,
                                   prune_startup, prune_warmup, trust_spec, reporter))
    emit(fmt, result)
    if code:
        click.echo(f"Stopped. The study keeps its trials; the same command goes on:\n  {command_line()}", err=True)
        sys.exit(code)


def train_options(ctx) -> dict:
    """The trials' options: the command line's other arguments, parsed by `cnnscope train`."""
    from cnnscope.cli.training import train_cmd

    try:
        train = train_cmd.make_context("sweep", list(ctx.args), parent=ctx.parent).params
    except click.UsageError as e:
        raise click.UsageError(f"{e.format_message()} (the options besides the sweep's are `cnnscope train`'s: "
                               "see cnnscope train --help)", ctx) from None
    given = [f"--{k.replace('_', '-')}" for k in NOT_FOR_TRIALS if train.get(k)]
    if given:
        raise click.UsageError(f"{', '.join(given)} cannot be given to a sweep: it names and makes each trial's run "
                               "folder itself (the sweep's folder is --out/--name).", ctx)
    for key in (*NOT_FOR_TRIALS, "quiet", "verbose"):
        train.pop(key, None)
    return train

