"""The zoo and model analyses: models, summary, rf."""
import sys

import click

from cnnscope.cli.common import (
    SPEC_RUNS_CODE, cli, ctor_option, device_option, emit, format_option, input_option, spec_argument,
    tensorboard_option, trust_spec_option, verbosity_options,
)
from cnnscope.errors import CnnscopeError


@cli.command("models")
@format_option()
def models_cmd(fmt):
    """List the model zoo: name, class, parameters, MACs at 32x32, default dataset, and the paper or
    repository (the seed) the design comes from.

    \b
    Examples:
      cnnscope models
      cnnscope models --format json
    """
    from cnnscope.runs.zoo import zoo_table

    emit(fmt, zoo_table())


@cli.command("summary", epilog=SPEC_RUNS_CODE)
@spec_argument
@ctor_option
@input_option
@format_option()
@verbosity_options
def summary_cmd(spec, ctor, input_shape, fmt, reporter):
    """Per-layer table of SPEC: output shape, params and MACs of every call.

    A module called several times (weight tying) gets one row per call; the totals count its
    parameters once (unique) and its MACs once per call. MACs use torch.utils.flop_counter's
    formulas; an operation with none that may hide products is named in a warning.

    \b
    Examples:
      cnnscope summary basic
      cnnscope summary ectied --ctor iterations=8
      cnnscope summary my_model.py:Net --input 1 28 28 --format json
    """
    from cnnscope.core.summary import summarize
    from cnnscope.runs.spec import build_model, parse_key_values

    reporter.detail(f"building {spec}, then one forward pass of a {'x'.join(map(str, input_shape))} input")
    emit(fmt, summarize(build_model(spec, parse_key_values(ctor)), input_shape, spec), spec)


@cli.command("rf", epilog=SPEC_RUNS_CODE)
@click.argument("spec", metavar="[SPEC]", required=False)
@ctor_option
@input_option
@format_option()
@click.option("--title", default=None,
              help='Title of the table; in markdown a "### TITLE" line, e.g. "RF: Net (32x32 input)".')
@click.option("--verify", "check", is_flag=True,
              help="Measure the RF again by gradient probing; exit 1 when it differs from the analysis, 2 when "
                   "the probe cannot run or the analysis is unknown (nothing to compare).")
@click.option("--erf", "erf_run", metavar="RUN", default=None,
              help="Effective RF of a trained RUN (reports/<run> or a checkpoint): RUN/plots/erf.png. "
                   "SPEC may then be left out (the run's own model).")
@click.option("--erf-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="Number of test images --erf averages over.")
@click.option("--erf-scale", type=click.Choice(("log", "linear")), default="log", show_default=True,
              help="Colour scale of erf.png: log shows the faint tail that holds most of the gradient mass.")
@click.option("--image", "erf_image_paths", multiple=True, metavar="PATH",
              help="With --erf: average over your own image file(s) or folder(s) instead of test images; repeatable.")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where --erf finds the run's dataset.")
@trust_spec_option()
@device_option(used_for="of --erf's gradients")
@tensorboard_option("With --erf: also add erf.png and the table to TensorBoard events: in DIR [default: the RUN's own "
                    "events folder, RUN/tensorboard unless its training named another], at the run's last step.")
@verbosity_options
def rf_cmd(spec, ctor, input_shape, fmt, title, check, erf_run, erf_images, erf_scale, erf_image_paths, data_dir,
           trust_spec, device, tensorboard, reporter):
    """Receptive field of every layer of SPEC, from one forward pass of a probe input.

    Every convolution and pooling is recorded as it is CALLED, with the kernel, stride, padding
    and dilation of that call, and the RF follows the real data flow: residual adds,
    concatenations and gates take the union of their paths (misaligned ones are flagged). A row
    per call: Layer is the qualified module name, '#n' for the n-th call of a module, ':op' for an
    op called in a container's own forward. RF and jump are in input pixels, "HxW" when the axes
    differ; "*" marks units that also see the whole input through a global path. The final RF is
    that of the last spatial map before global pooling. An operation cnnscope does not know, on
    the way to it, makes the RF "unknown from layer X on", the operation named: never a number.

    Where units see windows of different sizes (upsampling, transposed convs, rolls, flips, uneven
    adaptive pooling) the final RF is the largest; the notes give the range, the centre unit's and
    the units that see no input. Sampling where the data says (grid_sample, deformable convs) is
    global, the fixed-offset window beside it. --verify measures the RF again by gradient probing
    (positive weights, identity activations and norms, avg-pool for max-pool, an input grown until
    it does not clip) for the centre unit and a unit of each window size. --erf RUN: the effective
    RF (Luo et al., 2016) of a run's weights on its test images, and the radius holding 95% of it;
    with SPEC, --erf builds SPEC with the run's weights, else the run's own model (a zoo model, or
    one allowed with --trust-spec).

    \b
    JSON: {model, input, final_rf, final_jump, unknown_from, final_rf_hw,
      final_jump_hw, final_window_hw, data_dependent_hw, final_map, varies,
      final_window_range_hw, final_window_centre_hw, empty_units_hw, coverage,
      first_exceeding, layers: [{index, name, op, k, s, d, p, rf_in, jump_in,
      rf_out, jump_out, global_in, global_out}], warnings, verify: {probe_rf,
      probe_rf_hw, probe_input, match, clipped, units: [{axis, unit, analysis,
      probe}]}, erf: {run, dataset, images, radius95, centre, figure}}
    Per-axis values are [H, W]; final_rf a number, "HxW", "global" or "unknown"
    (then unknown_from is {layer, name, op, detail} and the final map's keys
    are null); verify and erf only with those options. Exit codes: 0 done (and
    the probe matches); 1 --verify's probe does not match (both on stderr);
    2 bad input, or --verify could not probe or had nothing to compare.

    \b
    Examples:
      cnnscope rf basic
      cnnscope rf models/compact.py:NetDilated --format markdown --title "RF: NetDilated (32x32 input)"
      cnnscope rf torchvision.models:resnet50 --input 3 224 224 --format json
      cnnscope rf ectied --ctor iterations=8 --verify
      cnnscope rf basic --erf reports/basic --device cpu
      cnnscope rf --erf reports/basic --image my_photos/
    """
    from cnnscope.runs import rf
    from cnnscope.runs.spec import parse_key_values

    events = _erf_events(erf_run, tensorboard)
    with reporter.bar() as bar:
        result = rf.report(spec, parse_key_values(ctor), input_shape, check=check, erf_run=erf_run,
                           erf_images=erf_images, erf_image_paths=erf_image_paths, erf_log=erf_scale == "log",
                           data_dir=data_dir, trust_spec=trust_spec, device=device, reporter=reporter, progress=bar)
    _emit_rf(fmt, result, title, events)
    if result.verified is False:
        click.echo(f"RF mismatch: the analysis gives {result.final_rf}, the gradient probe "
                   f"{result.probe_rf}.", err=True)
        sys.exit(1)


def _emit_rf(fmt, result, title, events) -> None:
    """Print the RF table; with --erf, name the figure written and, with --tensorboard (`events`: its
    folder), add the figure and the table to the run's events."""
    emit(fmt, result, title, wrote=[result.erf.figure] if result.erf and result.erf.figure else [])
    if events is not None:
        from cnnscope.runs.tensorboard import log_inspection

        log_inspection(events, "erf", result, [result.erf.figure], result.erf.run)


def _erf_events(erf_run, tensorboard):
    """--tensorboard's folder for the ERF of `erf_run`, None without it; said before anything runs."""
    if tensorboard is None:
        return None
    if erf_run is None:
        raise CnnscopeError("--tensorboard adds the effective RF of a run to its events: give the run with --erf RUN.")
    from cnnscope.runs.checkpoint import resolve_run
    from cnnscope.runs.tensorboard import inspection_folder

    return inspection_folder(resolve_run(erf_run)[0], tensorboard)
