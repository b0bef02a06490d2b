"""The `cnnscope` command line: thin Click commands over the library modules.

Nothing here imports torch at module level, so `cnnscope --help` answers at once; each command
imports what it needs when it runs.
"""
import ctypes
import os
import sys

import click

from cnnscope.errors import CnnscopeError


def tune_cpu_runtime():
    """Process settings for fast CPU training, made before torch is imported (benchmarks/README.md).

    - OpenMP threads that spin while they wait take the cores that their team mates, DataLoader
      workers and other processes need (on 2 busy cores, 2-5x slower steps): waiting threads sleep
      instead, unless the user chose an OMP_WAIT_POLICY.
    - glibc hands freed activation buffers back to the OS and page-faults them in again on the next
      step (thousands of faults per step): keep up to 32 MiB blocks on the heap and never trim it,
      as jemalloc or tcmalloc would.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:  # not glibc
            return
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
        libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest
        libc.mallopt(m_trim_threshold, 2**31 - 1)


FORMATS = ("table", "markdown", "json")


class UserError(click.ClickException):
    """A CnnscopeError as Click shows it: one paragraph on stderr, exit code 2."""

    exit_code = 2


class CnnscopeGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnscopeError as e:
            raise UserError(str(e)) from None


# ---- shared options, defined once -------------------------------------------------------------

spec_argument = click.argument("spec", metavar="SPEC")
ctor_option = click.option(
    "--ctor", "ctor", multiple=True, metavar="K=V",
    help="Constructor keyword for SPEC, value a Python literal; repeatable (e.g. --ctor num_classes=100).",
)


def trust_spec_option(named_by="RUN's checkpoint"):
    return click.option(
        "--trust-spec", is_flag=True,
        help=f"Build the model that {named_by} names even when it is no zoo model: its file or module is "
             "imported and executed. Only for files you trust; without it such a model is refused (exit 2).",
    )


# the epilog of the commands that take a SPEC
SPEC_RUNS_CODE = ("A SPEC (or MODEL) that names a file or module (path/file.py:Name, package.module:attr) is "
                  "imported, which executes its code: give only your own code or code you trust.")

input_option = click.option(
    "--input", "input_shape", nargs=3, type=int, default=(3, 32, 32), show_default=True,
    metavar="C H W", help="Shape of the probe input.",
)

procs_option = click.option(
    "--procs", default="auto", show_default=True, metavar="N|auto",
    help="Data-parallel training processes on the CPU, each with cores/N threads and 1/N of every batch "
         "(on 2 cores, 2 processes train basic ~1.3x faster than one). auto: one per 64 images of the batch "
         "(at most 8), on any machine, since batch norm sees each process's share and so the count changes the "
         "weights; a resumed run keeps its count.",
)


def format_option(default=None):
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default=default,
        help="Output format; default: table on a terminal, markdown otherwise.",
    )


def resolve_format(fmt):
    if fmt:
        return fmt
    return "table" if sys.stdout.isatty() else "markdown"


def emit(fmt, *, table, markdown, json_obj):
    """Print one result in the chosen format: a rich renderable, markdown text or a JSON object."""
    import json

    fmt = resolve_format(fmt)
    if fmt == "json":
        click.echo(json.dumps(json_obj, indent=2))
    elif fmt == "markdown":
        click.echo(markdown())
    else:
        from rich.console import Console

        Console().print(table())


@click.group(cls=CnnscopeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnnscope")
def cli():
    """Train compact CNNs, then inspect how they see.

    \b
    Examples:
      cnnscope models
      cnnscope summary basic
      cnnscope rf path/to/model.py:NetDilated --ctor num_classes=10
      cnnscope train basic --dataset fashion-mnist --epochs 5

    SPEC is a zoo name, path/file.py:Name or package.module:attr. A file or module SPEC is
    imported, which executes its code, and Name is called: it is your own code. A SPEC read from
    a file someone else may have written (a RUN's checkpoint, a README marker) is built only if it
    is a zoo name, or when you allow it with --trust-spec.
    """


# ---- the zoo ----------------------------------------------------------------------------------

@cli.command("models")
@format_option()
def models_cmd(fmt):
    """List the model zoo: name, class, parameters, MACs at 32x32, default dataset, seed.

    \b
    Examples:
      cnnscope models
      cnnscope models --format json
    """
    from cnnscope import summary

    rows = summary.zoo_rows()
    emit(fmt, table=lambda: summary.zoo_table(rows), markdown=lambda: summary.zoo_markdown(rows),
         json_obj=rows)


@cli.command("summary", epilog=SPEC_RUNS_CODE)
@spec_argument
@ctor_option
@input_option
@format_option()
def summary_cmd(spec, ctor, input_shape, fmt):
    """Per-layer table of SPEC: output shape, params and MACs of every call.

    A module called several times (weight tying) gets one row per call; the totals count its
    parameters once (unique) and its MACs once per call.

    \b
    Examples:
      cnnscope summary basic
      cnnscope summary ectied --ctor iterations=8
      cnnscope summary my_model.py:Net --input 1 28 28 --format json
    """
    from cnnscope import spec as spec_mod
    from cnnscope import summary

    model = spec_mod.build_model(spec, spec_mod.parse_ctor(ctor))
    result = summary.summarize(model, input_shape, spec)
    emit(fmt, table=lambda: summary.summary_table(result, spec),
         markdown=lambda: summary.summary_markdown(result, spec), json_obj=result.to_json())


@cli.command("rf", epilog=SPEC_RUNS_CODE)
@click.argument("spec", metavar="[SPEC]", required=False)
@ctor_option
@input_option
@format_option()
@click.option("--title", default=None,
              help='Title of the table; in markdown a "### TITLE" line, e.g. "RF: Net (32x32 input)".')
@click.option("--verify", "check", is_flag=True,
              help="Measure the RF again by gradient probing; exit 1 when it differs from the analysis.")
@click.option("--erf", "erf_run", metavar="RUN", default=None,
              help="Effective RF of a trained RUN (reports/<run> or a checkpoint): RUN/plots/erf.png. "
                   "SPEC may then be left out (the run's own model).")
@click.option("--erf-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="Number of test images --erf averages over.")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where --erf finds the run's dataset.")
@trust_spec_option()
def rf_cmd(spec, ctor, input_shape, fmt, title, check, erf_run, erf_images, data_dir, trust_spec):
    """Receptive field of every layer of SPEC, from one forward pass of a probe input.

    Every convolution and pooling is recorded as it is CALLED, with the kernel, stride, padding
    and dilation of that call (functional calls and modules reused with another dilation
    included), and the RF follows the real data flow: residual adds, concatenations and gates
    take the union of their paths (misaligned paths are flagged). A row per call: Layer is the
    qualified module name, '#n' for the n-th call of a module that runs several times, ':op' for
    an op called in a container's own forward. RF and jump are in input pixels, "HxW" when the
    axes differ; "*" marks units that also see the whole input through a global path
    (squeeze-excitation). The final RF is that of the last spatial map before global pooling.
    Operations cnnscope does not know are named in warnings.

    --verify measures the final RF independently: positive weights, identity activations and
    norms, max-pool read as avg-pool, and the extent of d(centre unit)/d(input) on an input grown
    until it does not clip. --erf RUN: the effective RF (Luo et al., 2016) of trained weights,
    mean |d centre / d input| over test images, and the radius holding 95% of that mass. With
    SPEC given, --erf builds SPEC with the run's weights, never the model the run's checkpoint
    names; without it, that model must be a zoo model or allowed with --trust-spec.

    \b
    JSON: {model, input, final_rf, final_jump, final_rf_hw, final_jump_hw, final_window_hw,
      final_map, coverage, first_exceeding, layers: [{index, name, op, k, s, d, p, rf_in, jump_in,
      rf_out, jump_out, global_in, global_out}], warnings, verify: {probe_rf, probe_rf_hw,
      probe_input, match, clipped}, erf: {run, dataset, images, radius95, centre, figure}}
    Per-axis values are [H, W]; final_rf/final_jump a number, "HxW" or "global"; verify and erf
    only with those options. Exit codes: 0 done, 1 --verify mismatch, 2 bad input.

    \b
    Examples:
      cnnscope rf basic
      cnnscope rf models/compact.py:NetDilated --format markdown --title "RF: NetDilated (32x32 input)"
      cnnscope rf torchvision.models:resnet50 --input 3 224 224 --format json
      cnnscope rf ectied --ctor iterations=8 --verify
      cnnscope rf basic --erf reports/basic-fashion-mnist
    """
    from cnnscope import rf
    from cnnscope.inspect import progress
    from cnnscope.spec import parse_ctor

    with progress() as bar:
        result = rf.report(spec, parse_ctor(ctor), input_shape, check=check, erf_run=erf_run,
                           erf_images=erf_images, data_dir=data_dir, trust_spec=trust_spec, progress=bar)
    emit(fmt, table=lambda: rf.to_table(result, title), markdown=lambda: rf.to_markdown(result, title),
         json_obj=result.to_json())
    if result.verified is False:
        click.echo(f"RF mismatch: the analysis gives {result.final_rf}, the gradient probe "
                   f"{result.probe_rf}.", err=True)
        sys.exit(1)


# ---- training, evaluation, comparison ----------------------------------------------------------

def _key_values(option, items, example):
    """Repeated K=V options -> dict (values are Python literals, as for --ctor)."""
    from cnnscope.spec import parse_ctor

    try:
        return parse_ctor(items)
    except CnnscopeError as e:
        raise CnnscopeError(str(e).replace("--ctor", option) + f" Example: {option} {example}.") from None


@cli.command("train", epilog=SPEC_RUNS_CODE)
@click.argument("model", metavar="[MODEL]", required=False)
@ctor_option
@click.option("--dataset", metavar="NAME", help="cifar10 | cifar100 | fashion-mnist | fake [default: the model's].")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where datasets live / download to [default: data].")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs [default: the recipe's].")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Batch size, split between the processes [default: the recipe's].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate (OneCycle max_lr).")
@click.option("--optimizer", type=click.Choice(("sgd", "adamw")), help="Optimizer [default: the recipe's].")
@click.option("--scheduler", type=click.Choice(("onecycle", "cosine", "plateau", "step", "none")),
              help="Learning-rate schedule [default: the recipe's].")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Weight decay (never on soft-sharing coefficients).")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), help="Label smoothing of the loss.")
@click.option("--grad-clip", type=click.FloatRange(min=0), help="Max global gradient norm; 0 turns it off.")
@click.option("--recipe", "recipe_items", multiple=True, metavar="K=V",
              help="Any other recipe field, e.g. --recipe warmup_epochs=2 --recipe early_stop_patience=0; repeatable.")
@click.option("--augment", "augment_items", multiple=True, metavar="K=V",
              help="Augmentation field, e.g. --augment cutout=16 --augment cutout_p=1.0 --augment hflip=0; repeatable.")
@click.option("--val-split", type=float, help="Fraction of the training set held out for selection; 0 selects on "
                                               "the test set [default: 0.1].")
@click.option("--seed", type=int, help="Seed of the split, data order, augmentation and initial weights [default: 0].")
@click.option("--train-subset", type=click.IntRange(min=1), metavar="N",
              help="Train on a random N-image subset of the training split (fixed by --seed), for quick looks "
                   "at heavy models; the validation and test sets stay whole.")
@click.option("--aug-backend", type=click.Choice(("batch", "albumentations")),
              help="Augmentation path: whole batches in-process (default) or the seeds' per-sample albumentations.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder of the run folders [default: reports].")
@click.option("--name", help="Run folder name [default: the model name].")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda", "mps")), help="[default: auto: cuda > mps > cpu]")
@click.option("--amp/--no-amp", default=None, help="Mixed precision (CUDA only) [default: on with CUDA].")
@click.option("--channels-last/--no-channels-last", default=None, help="channels_last weights (the batches always are) [default: on].")
@click.option("--compile/--no-compile", default=None,
              help="torch.compile the model: slower first batches, faster steps after (see `cnnscope bench --compile`).")
@click.option("--save-every", type=click.IntRange(min=0), help="Also keep checkpoints/epoch_NNN.pth every N epochs.")
@procs_option
@click.option("--resume", metavar="RUN|CHECKPOINT", help="Continue a run from its checkpoints/last.pth (or a file).")
@trust_spec_option()
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier cnnscope run in the same folder (not one in use); only the files a run "
                   "writes are removed.")
def train_cmd(model, ctor, recipe_items, augment_items, resume, trust_spec, overwrite, procs, **options):
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
    --augment K=V. A shorter --epochs shrinks the warm-ups in proportion.

    Ctrl-C stops after the current batches, saves checkpoints/last.pth and prints the resume
    command; the resumed run ends with exactly the weights of an uninterrupted one (CPU).
    Exit codes: 0 done, 2 bad input or a diverged (NaN) loss, 130 stopped by Ctrl-C.

    On the CPU the batch is split over --procs data-parallel processes (gloo): by default one per
    64 images of the batch, whatever the machine (2 for basic's batch of 128), so that the same
    command trains the same weights everywhere; --procs 1 trains in this process (other weights:
    batch norm then sees the whole batch). Several GPUs: torchrun, one process per GPU.

    \b
    Examples:
      cnnscope train basic --dataset fashion-mnist --epochs 5
      cnnscope train egrr --epochs 30 --augment autoaugment=False
      cnnscope train my_model.py:Net --ctor width=32 --lr 0.05 --name net-w32
      cnnscope train --resume reports/basic
      cnnscope train basic --procs 1
      torchrun --nproc_per_node=2 -m cnnscope train basic --device cuda
    """
    from cnnscope import launch
    from cnnscope import train as train_mod
    from cnnscope.evaluate import resolve_device

    recipe_overrides = {k: options.pop(k) for k in
                        ("dataset", "epochs", "batch_size", "lr", "optimizer", "scheduler", "weight_decay",
                         "label_smoothing", "grad_clip")}
    for key, value in _key_values("--recipe", recipe_items, "warmup_epochs=2").items():
        if recipe_overrides.get(key) is None:
            recipe_overrides[key] = value
    settings = dict(ctor=_key_values("--ctor", ctor, "num_classes=10"), recipe_overrides=recipe_overrides,
                    augment_overrides=_key_values("--augment", augment_items, "cutout=16"), **options)
    if resume:
        opts, ckpt, run_dir = train_mod.resume_options(resume, model, trust_spec=trust_spec, **settings)
    elif model is None:
        raise CnnscopeError("Name the MODEL to train (e.g. `cnnscope train basic`), or continue a run with --resume RUN.")
    else:
        opts, ckpt, run_dir = train_mod.new_options(model, **settings), None, None
    if not launch.launched():
        saved_world_size = ckpt["config"]["world_size"] if ckpt else None
        n = launch.resolve_procs(procs, opts.recipe.batch_size, resolve_device(opts.device).type, saved_world_size)
        if opts.train_subset:
            train_mod.check_shares(opts.train_subset, n)
        if n > 1:
            run_dir = train_mod.run_dir_of(opts, run_dir)
            job = dict(options=opts.to_json(), resume=str(train_mod.resume_path(resume)) if resume else None,
                       run_dir=str(run_dir), overwrite=overwrite)
            sys.exit(launch.run_processes(job, n, after_loss=lambda: train_mod.resume_hint(run_dir, opts)))
    result = train_mod.train(opts, resume_ckpt=ckpt, run_dir=run_dir, overwrite=overwrite)
    if result.interrupted:
        sys.exit(launch.STOPPED_EXIT)


@cli.command("evaluate")
@click.argument("run", metavar="RUN")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Dataset folder [default: the run's].")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda", "mps")), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@trust_spec_option()
@format_option()
def evaluate_cmd(run, data_dir, device, batch_size, trust_spec, fmt):
    """Test-set metrics of RUN (a run folder: its best.pth; or a checkpoint file).

    Writes into the run folder classification_report.csv/.md (per-class precision, recall, F1,
    support; macro and weighted averages), confusion_matrix.csv (rows true, columns predicted),
    plots/cm.png, plots/test_samples_grid.png, plots/misclassified_grid.png, and merges test_acc,
    test_loss, macro_avg, weighted_avg into metrics.json.

    \b
    JSON (--format json): {"run", "model", "test_loss", "test_acc" (percent), "num_test",
      "classes": [names], "confusion": [[counts]] (rows true), "per_class": [{"class", "precision",
      "recall", "f1", "support"}], "macro_avg": {"precision", "recall", "f1"}, "weighted_avg": {...},
      "top_confusions": [{"true", "pred", "count", "rate"}]}

    \b
    Examples:
      cnnscope evaluate reports/basic
      cnnscope evaluate reports/basic/checkpoints/last.pth --format json
    """
    from cnnscope import evaluate

    result = evaluate.evaluate_run(run, data_dir=data_dir, device=device, batch_size=batch_size,
                                   quiet=resolve_format(fmt) == "json", trust_spec=trust_spec)
    emit(fmt, table=lambda: evaluate.report_table(result), markdown=lambda: evaluate.report_markdown(result),
         json_obj=result.to_json())


@cli.command("compare")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--out", type=click.Path(file_okay=False), default="reports/combined", show_default=True,
              help="Folder for summary.md, summary.csv, combined_acc.png and combined_loss.png.")
@format_option()
def compare_cmd(runs, out, fmt):
    """Summary table and combined accuracy/loss curves of several runs.

    \b
    JSON (--format json): a list of {"run", "model", "params", "best_val_acc", "test_acc" (percent),
      "best_epoch", "epochs", "train_time_s", "images_per_s"}, one per RUN.

    \b
    Examples:
      cnnscope compare reports/basic reports/dilated
      cnnscope compare reports/* --out reports/combined --format markdown
    """
    from cnnscope import compare

    rows = compare.compare_runs(runs, out)
    emit(fmt, table=lambda: compare.summary_table(rows), markdown=lambda: compare.summary_markdown(rows),
         json_obj=rows)


# ---- README blocks ----------------------------------------------------------------------------

@cli.command("update-readme")
@click.argument("readme", default="README.md", metavar="[README]")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 and print a unified diff if the README is stale.")
@click.option("--diff", "show_diff", is_flag=True, help="Print the unified diff of the update; write nothing.")
@click.option("--run", "runs", multiple=True, metavar="X=PATH",
              help="Run folder of the seed names MODEL_SUMMARY_X, RF_X, CM_X, CLS_REPORT_X; repeatable.")
@click.option("--reports", type=click.Path(file_okay=False), default=None,
              help="Folder of the runs that the seed names, the sample grids and combined/ are looked up in "
                   "[default: reports/ beside the README].")
@click.option("--rf", "rf_models", multiple=True, metavar='FILE.py:CLASS[:"TITLE"]',
              help="Compute the RF_<CLASS> block from this model (NetDilated may fill RF_DILATED); repeatable.")
@click.option("--rf-input", nargs=3, type=int, default=(3, 32, 32), show_default=True, metavar="C H W",
              help="Probe input of the --rf models.")
@click.option("--rf-ctor", multiple=True, metavar="K=V", help="Constructor keyword of the --rf models; repeatable.")
@trust_spec_option("a marker's spec=")
def update_readme_cmd(readme, check, show_diff, runs, reports, rf_models, rf_input, rf_ctor, trust_spec):
    """Refresh the generated blocks of README from the runs, the zoo and model SPECs.

    A block is `<!-- KIND key=value ... -->` ... `<!-- /KIND -->`, each marker a line of its
    own; its body is replaced, everything else is kept byte for byte. Kinds: ZOO_TABLE,
    MODEL_SUMMARY, RF, RUN_METRICS, CLS_REPORT, CURVES, CM, TEST_SAMPLES_GRID,
    AUGMENTED_SAMPLES_GRID, MISCLASSIFIED_GRID, GATE_MAPS, GATE_SHARES, SHARING, ATTRIBUTIONS,
    ERF, COMBINED_SUMMARY_TABLE, COMBINED_ACC_PLOT, COMBINED_LOSS_PLOT, IMAGE, and the seed names
    MODEL_SUMMARY_<X>, RF_<X>, CM_<X>, CLS_REPORT_<X> (see the README section "README blocks").
    A marker's spec= is built only if it is a zoo model, or with --trust-spec (a file or module
    SPEC is imported and executed: a README from an untrusted pull request would run its code);
    --rf models are yours and always built.
    Exit codes: 0 done (or up to date), 1 stale under --check, 2 a bad README or missing run.

    \b
    Examples:
      cnnscope update-readme
      cnnscope update-readme --check            # in CI
      cnnscope update-readme docs/RESULTS.md --diff
      cnnscope update-readme --run BASE=reports/basic --run DILATED=reports/dilated
      cnnscope update-readme --rf model.py:Net:"RF: Net (32x32 input)" \\
          --rf model.py:NetDilated --rf-input 3 32 32 --rf-ctor num_classes=10
    """
    from cnnscope import readme as readme_mod
    from cnnscope.spec import parse_ctor

    run_map = {}
    for item in runs:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise CnnscopeError(f"Bad --run value {item!r}: expected X=PATH, e.g. --run BASE=reports/basic.")
        run_map[key] = path
    update = readme_mod.plan_update(
        readme, reports=reports, runs=run_map, rf_entries=[readme_mod.RfEntry.parse(v) for v in rf_models],
        rf_input=rf_input, rf_ctor=parse_ctor(rf_ctor), trust_spec=trust_spec,
    )
    if check or show_diff:
        if update.stale:
            click.echo(update.diff().encode("utf-8", "surrogateescape"), nl=False)
        if check and update.stale:
            click.echo(f"{readme} is stale: run `cnnscope update-readme {readme}` and commit it.", err=True)
            sys.exit(1)
        click.echo(f"{readme}: {update.blocks} block(s), {'stale' if update.stale else 'up to date'}.", err=True)
        return
    if update.stale:
        update.write()
    click.echo(f"{readme}: {update.blocks} block(s), {'updated' if update.stale else 'already up to date'}.")


# ---- inspection: entropy gates, soft sharing, attributions ------------------------------------

target_argument = click.argument("target", metavar="RUN|SPEC")
out_option = click.option(
    "--out", type=click.Path(file_okay=False), default=None,
    help="Folder for the figures [default: RUN/plots; reports/<name>-untrained/plots for a SPEC].",
)


def images_options(command):
    """--n, --dataset, --data-dir: which test images an inspection command looks at."""
    for option in reversed((
        click.option("--n", "n_images", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Number of test images (the first N of the test split)."),
        click.option("--dataset", default=None,
                     help="Take the images from this dataset [default: the run's; `fake` for a SPEC]."),
        click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
                     help="Where the datasets are (or are downloaded to)."),
    )):
        command = option(command)
    return command


def emit_report(fmt, report):
    """Emit an inspection report (an object with sections() and to_json())."""
    from cnnscope.inspect import render_markdown, render_table

    emit(fmt, table=lambda: render_table(report.sections()),
         markdown=lambda: render_markdown(report.sections()), json_obj=report.to_json())


@cli.command("gates", epilog=SPEC_RUNS_CODE)
@target_argument
@ctor_option
@trust_spec_option()
@images_options
@out_option
@format_option()
def gates_cmd(target, ctor, trust_spec, n_images, dataset, data_dir, out, fmt):
    """Entropy-gate dilation maps of N test images (egrr, or any model with `record_gates`).

    TARGET is a RUN (reports/<run> or a checkpoint) or a SPEC (inspected untrained). Writes
    plots/gate_maps.png (a row per image: the image, then one map per stage/step, each pixel the
    probability-weighted mix of a colour per dilation) and plots/gate_shares.png (mean share of
    each dilation per step, stacked). Prints the shares per step and, per stage, the Pearson r
    over pixels between local variance and P(largest dilation).

    \b
    JSON: {target, dataset, images: [{index, label, class}], dilations: [1, 2, 4],
      steps: [{stage, step, size: [H, W], shares: {"1", "2", "4"}, variance_corr}],
      stages: [{stage, steps, shares, variance_corr}], figures: {gate_maps, gate_shares}}
    variance_corr is null where it is undefined (a constant map).

    \b
    Examples:
      cnnscope gates reports/egrr-fashion-mnist
      cnnscope gates egrr --ctor num_classes=10 --n 4 --format json
    """
    from cnnscope.inspect import gates, load_target, load_test_images, progress

    tgt = load_target(target, ctor, out, trust_spec)
    gates.require_gates(tgt.model)
    images = load_test_images(tgt, n_images, dataset, data_dir)
    with progress() as bar:
        report = gates.inspect_gates(tgt, images, progress=bar)
    emit_report(fmt, report)


@cli.command("sharing", epilog=SPEC_RUNS_CODE)
@target_argument
@ctor_option
@trust_spec_option()
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.95, show_default=True,
              help="Layers whose |cosine similarity| is at least this are linked into fold groups.")
@out_option
@format_option()
def sharing_cmd(target, ctor, trust_spec, threshold, out, fmt):
    """Soft-sharing analysis of every TemplateBank (swrn, or any model with SConv2d layers).

    Per bank: the layers x layers |cosine similarity| of the SConv2d coefficient vectors
    (plots/sharing_<bank>.png), the fold groups (connected components, of two or more layers, of
    the graph linking two layers when their similarity is >= --threshold; each with its smallest
    pairwise similarity, >= threshold exactly when the group is a clique): layers the network could
    fold into a recurrence. And the budget: template + coefficient parameters vs one full conv
    weight per SConv2d.

    \b
    JSON: {target, threshold, grouping, banks: [{name, templates, template_shape, layers,
      similarity, groups: [{layers, min_similarity}], template_params, coefficient_params,
      unshared_params}], budget: {banks, layers, template_params, coefficient_params,
      shared_params, unshared_params, ratio}, figures: {<bank>: path}}

    \b
    Examples:
      cnnscope sharing reports/swrn-fashion-mnist
      cnnscope sharing swrn --ctor depth=16 --ctor width=1 --threshold 0.9 --format markdown
    """
    from cnnscope.inspect import load_target, sharing

    report = sharing.inspect_sharing(load_target(target, ctor, out, trust_spec), threshold)
    emit_report(fmt, report)


@cli.command("attribute", epilog=SPEC_RUNS_CODE)
@target_argument
@ctor_option
@trust_spec_option()
@images_options
@click.option("--method", "methods", multiple=True,
              type=click.Choice(("ig", "saliency", "gradcam", "occlusion")),
              help="Attribution method; repeatable [default: all four].")
@click.option("--target", "target_class", type=click.Choice(("pred", "true")), default="pred",
              show_default=True, help="Attribute the predicted class or the true class.")
@out_option
@format_option()
def attribute_cmd(target, ctor, trust_spec, n_images, dataset, data_dir, methods, target_class, out, fmt):
    """Captum attributions of N test images: Integrated Gradients, Saliency, GradCAM, Occlusion.

    Writes plots/attributions.png: a row per image (the image with its true and predicted
    class, then one map per method). GradCAM runs on the last spatial conv that is called once
    per forward; on a weight-tied model (ectied, egrr) that is not the last conv, and a warning
    says which layer was used, or why GradCAM was skipped.

    \b
    JSON: {target, dataset, target_class, methods, skipped: {method: reason}, warnings,
      gradcam_layer: {name, size, calls} | null, settings, images: [{index, label, class, pred,
      pred_class, prob, target, ig_delta}], figures: {attributions}}
    ig_delta is Integrated Gradients' convergence delta (null when ig did not run).

    \b
    Examples:
      cnnscope attribute reports/basic-fashion-mnist
      cnnscope attribute reports/ectied --method ig --method gradcam --target true
    """
    from cnnscope.inspect import attribution, load_target, load_test_images, progress

    tgt = load_target(target, ctor, out, trust_spec)
    images = load_test_images(tgt, n_images, dataset, data_dir)
    with progress() as bar:
        report = attribution.inspect_attributions(
            tgt, images, methods=methods or attribution.METHODS, target_class=target_class, progress=bar)
    for message in [*report.skipped.values(), *report.warnings]:
        click.echo(f"warning: {message}", err=True)
    emit_report(fmt, report)


# ---- data -------------------------------------------------------------------------------------

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

    from cnnscope import checkpoint, data, plots, recipes, spec

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

    emit(fmt, table=table, json_obj=result,
         markdown=lambda: "\n".join(f"- {key}: {result[key]}" for key in ("model", "dataset", "backend",
                                                                         "pipeline", "n", "figure")))


# ---- speed ------------------------------------------------------------------------------------

@cli.command("bench", epilog=SPEC_RUNS_CODE)
@spec_argument
@ctor_option
@input_option
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda", "mps")), default="auto", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed steps of each measurement (after 3 warm-up steps).")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model (compiles during warm-up).")
@click.option("--amp/--no-amp", default=None, help="float16 autocast (CUDA only) [default: on with CUDA].")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="Model and input in channels_last memory format.")
@procs_option
@format_option()
def bench_cmd(spec, ctor, input_shape, batch_size, device, steps, compile_model, amp, channels_last, procs, fmt):
    """Training and inference speed of SPEC on synthetic batches, against this machine's peak.

    Measures training images/s (forward + backward + the recipe's optimizer step), inference
    images/s (inference_mode, batch norm folded, channels_last), the training data path alone
    (the batch augmentation backend and, for comparison, the seeds' albumentations one with 2
    workers, on a uint8 tensor with the recipe's augmentation), the forward FLOPs per image
    (2 x MACs), the achieved training FLOP/s (3 x forward FLOPs x images/s) and its fraction of
    the peak, measured now with a float32 matmul on all cores, and the peak memory. Each step time
    is the median of --steps timed steps. Training runs as `cnnscope train` runs it: on the CPU in
    --procs data-parallel processes (DistributedDataParallel, gloo; the all-reduce is timed too).

    \b
    JSON: {model, device, threads (per training process), procs, omp_wait_policy, batch_size,
      steps, input_shape, compile,
      amp, channels_last, augment, params, flops_per_image, train_images_per_s,
      infer_images_per_s, data_images_per_s, data_albumentations_images_per_s,
      train_gflop_per_s, peak_gflop_per_s, peak_fraction, matmul_size, folded_batchnorms,
      peak_memory_mb, peak_memory_source ("cuda_max_allocated" | "cpu_max_rss": the process's
      peak RSS), warmup_s (training warm-up seconds, compilation included)}
    Rates are images/s, FLOPs per image forward (2 x MACs), peak_fraction in [0, 1].

    \b
    Examples:
      cnnscope bench basic
      cnnscope bench dilated --batch-size 256 --steps 10 --format json
      cnnscope bench basic --compile --procs 1
      cnnscope bench swrn --ctor depth=16 --ctor width=4 --device cuda
    """
    from cnnscope import bench
    from cnnscope.spec import parse_ctor

    def say(phase):
        click.echo(f"bench: {phase} ...", err=True)

    result = bench.bench(spec, parse_ctor(ctor), batch_size=batch_size, device=device, steps=steps,
                         compile=compile_model, amp=amp, channels_last=channels_last, input_shape=input_shape,
                         procs=procs, progress=say)
    emit(fmt, table=lambda: bench.bench_table(result), markdown=lambda: bench.bench_markdown(result),
         json_obj=result.to_json())


def main():
    tune_cpu_runtime()  # process-wide, so here and not at import (tests import this module)
    cli(prog_name="cnnscope")


if __name__ == "__main__":
    main()
