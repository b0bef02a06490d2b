"""Inspections of a run or SPEC: gates, sharing, attribute."""
import click

from cnnscope.cli.common import SPEC_RUNS_CODE, cli, ctor_option, emit, format_option, trust_spec_option
from cnnscope.render.progress import progress_bar


target_argument = click.argument("target", metavar="RUN|SPEC")
out_option = click.option(
    "--out", type=click.Path(file_okay=False), default=None,
    help="Folder for the figures [default: RUN/plots; reports/<name>-untrained/plots for a SPEC].",
)


def images_options(command):
    """--n, --dataset, --data-dir, --image: which images an inspection command looks at."""
    for option in reversed((
        click.option("--n", "n_images", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Number of test images (the first N of the test split)."),
        click.option("--dataset", default=None,
                     help="Take the images from this dataset [default: the run's; `fake` for a SPEC]."),
        click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
                     help="Where the datasets are (or are downloaded to)."),
        click.option("--image", "image_paths", multiple=True, type=click.Path(exists=False), metavar="PATH",
                     help="Your own image file, or a folder of them; repeatable. Used instead of test images: "
                          "resized to the model's input and normalised as the run was trained."),
    )):
        command = option(command)
    return command


@cli.command("gates", epilog=SPEC_RUNS_CODE)
@target_argument
@ctor_option
@trust_spec_option()
@images_options
@out_option
@format_option()
def gates_cmd(target, ctor, trust_spec, n_images, dataset, data_dir, image_paths, out, fmt):
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
    from cnnscope.core.gates import require_gates
    from cnnscope.runs.inspect import inspect_gates, load_target, load_test_images

    tgt = load_target(target, ctor, out, trust_spec)
    require_gates(tgt.model)  # before any images are loaded
    images = load_test_images(tgt, n_images, dataset, data_dir, image_paths)
    with progress_bar() as bar:
        report = inspect_gates(tgt, images, progress=bar)
    emit(fmt, report)


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
    from cnnscope.runs.inspect import inspect_sharing, load_target

    emit(fmt, inspect_sharing(load_target(target, ctor, out, trust_spec), threshold))


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
def attribute_cmd(target, ctor, trust_spec, n_images, dataset, data_dir, image_paths, methods, target_class, out,
                  fmt):
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
    from cnnscope.core.attribution import METHODS
    from cnnscope.runs.inspect import inspect_attributions, load_target, load_test_images

    tgt = load_target(target, ctor, out, trust_spec)
    images = load_test_images(tgt, n_images, dataset, data_dir, image_paths)
    with progress_bar() as bar:
        report = inspect_attributions(tgt, images, methods=methods or METHODS, target_class=target_class,
                                      progress=bar)
    for message in [*report.skipped.values(), *report.warnings]:
        click.echo(f"warning: {message}", err=True)
    emit(fmt, report)
