"""Inspections of a run or SPEC: gates, sharing, attribute."""
import click

from cnnscope.cli.common import (
    SPEC_RUNS_CODE, FloatRange, cli, ctor_option, device_option, emit, format_option, seed_option,
    tensorboard_option, trust_spec_option, verbosity_options,
)


target_argument = click.argument("target", metavar="RUN|SPEC")
out_option = click.option(
    "--out", type=click.Path(file_okay=False), default=None,
    help="Folder for the figures [default: RUN/plots (a checkpoint outside any run: "
         "reports/<checkpoint>-checkpoint/plots); reports/<name>-untrained/plots for a SPEC].",
)
events_option = tensorboard_option(
    "Also add the figures and the table to TensorBoard events (the extra cnnscope[tensorboard]): in DIR [default: "
    "the RUN's own events folder, RUN/tensorboard unless its training named another], at the run's last step.")


def run_of(target):
    """The run folder of a runs.inspect.Target, None for an untrained SPEC."""
    return target.label if target.checkpoint is not None else None


def events_folder(target, tensorboard):
    """--tensorboard's folder for `target` (a runs.inspect.Target), None without it; checked before
    the inspection runs."""
    from cnnscope.runs.tensorboard import inspection_folder

    return inspection_folder(run_of(target), tensorboard)


def emit_inspection(fmt, report, target, events, command: str, **emitted) -> None:
    """Print the report (`emitted`: emit's wrote and warnings) and, with --tensorboard (`events`: its
    folder), add it to the events."""
    emit(fmt, report, **emitted)
    if events is not None:
        from cnnscope.runs.tensorboard import log_inspection

        log_inspection(events, command, report, report.figures.values(), run_of(target))
        click.echo(f"added the {command} figures and table to the TensorBoard events in {events}", err=True)


def images_options(command):
    """--n, --dataset, --data-dir, --image: which images an inspection command looks at."""
    for option in reversed((
        click.option("--n", "n_images", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Number of test images (the first N of the test split)."),
        click.option("--index", "indices", type=click.IntRange(min=0), multiple=True, metavar="I",
                     help="The test image at index I instead of the first N; repeatable."),
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


untrained_seed_option = seed_option(used_for="of a SPEC's untrained weights")


@cli.command("gates", epilog=SPEC_RUNS_CODE)
@target_argument
@ctor_option
@trust_spec_option()
@images_options
@out_option
@events_option
@format_option()
@device_option()
@untrained_seed_option
@verbosity_options
def gates_cmd(target, ctor, trust_spec, n_images, indices, dataset, data_dir, image_paths, out, tensorboard, fmt, device,
              seed, reporter):
    """Entropy-gate dilation maps of N test images (egrr, or any model with `record_gates`).

    TARGET is a RUN (reports/<run> or a checkpoint) or a SPEC (inspected untrained). Writes
    plots/gate_maps.png (a row per image: the image, then one map per stage/step, each pixel in
    the colour-blind-safe Okabe-Ito colour of its most probable dilation, paler as the gate is less
    sure) and plots/gate_shares.png (mean share of
    each dilation per step, stacked). Prints the shares per step and, per stage, the Pearson r
    over pixels between local variance and P(largest dilation).

    \b
    JSON: {target, dataset, images: [{index, label, class}], dilations: [1, 2, 4],
      steps: [{stage, step, size: [H, W], shares: {"1", "2", "4"}, variance_corr}],
      stages: [{stage, steps, shares, variance_corr}], figures: {gate_maps, gate_shares}}
    variance_corr is null where it is undefined (a constant map).

    \b
    Examples:
      cnnscope gates reports/egrr
      cnnscope gates egrr --ctor num_classes=10 --n 4 --seed 1 --format json
    """
    from cnnscope.core.gates import require_gates
    from cnnscope.runs.inspect import inspect_gates, load_target, load_test_images

    tgt = load_target(target, ctor, out, trust_spec, device=device, seed=seed, reporter=reporter)
    require_gates(tgt.model)  # before any images are loaded
    events = events_folder(tgt, tensorboard)
    images = load_test_images(tgt, n_images, dataset, data_dir, image_paths, reporter, indices)
    with reporter.bar() as bar, tgt.writing():
        report = inspect_gates(tgt, images, progress=bar)
    emit_inspection(fmt, report, tgt, events, "gates", wrote=report.figures.values())


@cli.command("sharing", epilog=SPEC_RUNS_CODE)
@target_argument
@ctor_option
@trust_spec_option()
@click.option("--threshold", type=FloatRange(0.0, 1.0), default=0.95, show_default=True,
              help="Layers whose |cosine similarity| is at least this are linked into fold groups.")
@out_option
@events_option
@format_option()
@untrained_seed_option
@verbosity_options
def sharing_cmd(target, ctor, trust_spec, threshold, out, tensorboard, fmt, seed, reporter):
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
      cnnscope sharing reports/swrn
      cnnscope sharing swrn --ctor depth=16 --ctor width=1 --threshold 0.9 --format markdown
    """
    from cnnscope.runs.inspect import inspect_sharing, load_target

    tgt = load_target(target, ctor, out, trust_spec, seed=seed, reporter=reporter)
    events = events_folder(tgt, tensorboard)
    with tgt.writing():
        report = inspect_sharing(tgt, threshold)
    emit_inspection(fmt, report, tgt, events, "sharing", wrote=report.figures.values())


# the short names of cnnscope.core.attribution_methods.METHODS (a test keeps them equal; importing the
# registry here would import torch for --help)
ATTRIBUTION_METHODS = ("ig", "saliency", "smoothgrad", "ixg", "deeplift", "gradshap", "guided", "gradcam",
                       "guided-gradcam", "occlusion", "edges")


def attribution_options(command):
    """--method, --target, --layer, --list-layers, --ig-tolerance and the sanity check's options."""
    for option in reversed((
        click.option("--method", "methods", multiple=True, type=click.Choice(ATTRIBUTION_METHODS),
                     help="Attribution method (see above); repeatable [default: ig, saliency, gradcam, occlusion]."),
        click.option("--target", "target_class", default="pred", show_default=True, metavar="pred|true|CLASS",
                     help="The class attributed: the predicted one, the true one, or one class for every image, by "
                          "name (as the dataset names it, e.g. Sneaker) or index."),
        click.option("--scale", type=click.Choice(("image", "method")), default="image", show_default=True,
                     help="Colour scale of attributions.png: each map its own (no map drawn black beside a "
                          "brighter one), or one per method over all images (to compare images)."),
        click.option("--overlay/--no-overlay", default=True, show_default=True,
                     help="Draw each map over the image in grey, transparent where the map is near zero."),
        click.option("--layer", default=None, metavar="NAME",
                     help="Layer of gradcam and guided-gradcam [default: the last spatial conv called once]; "
                          "--list-layers shows the candidates."),
        click.option("--list-layers", is_flag=True,
                     help="List the conv layers with their output sizes (which --layer can take) and stop."),
        click.option("--ig-tolerance", type=FloatRange(min=0, min_open=True), default=0.05, show_default=True,
                     help="Integrated Gradients doubles its steps (32 to 512) until |delta| <= this x "
                          "|F(x) - F(baseline)|."),
        click.option("--sanity", is_flag=True,
                     help="Also run the sanity check: randomise the weights layer by layer from the output "
                          "down and measure how much each method's maps change; flag those that do not."),
        click.option("--sanity-threshold", type=FloatRange(-1.0, 1.0), default=0.5, show_default=True,
                     help="Flag a method whose mean rank correlation with every layer random is above this."),
        click.option("--sanity-stages", type=click.IntRange(min=1), default=None,
                     help="Randomise consecutive layers together so there are at most this many stages "
                          "[default: one stage per layer]."),
    )):
        command = option(command)
    return command


@cli.command("attribute", epilog=SPEC_RUNS_CODE)
@target_argument
@ctor_option
@trust_spec_option()
@images_options
@attribution_options
@out_option
@events_option
@format_option()
@device_option()
@seed_option(used_for="of a SPEC's untrained weights and of --sanity's re-initialised weights")
@verbosity_options
def attribute_cmd(target, ctor, trust_spec, n_images, indices, dataset, data_dir, image_paths, methods, target_class,
                  scale, overlay, layer, list_layers, ig_tolerance, sanity, sanity_threshold, sanity_stages, out,
                  tensorboard, fmt, device, seed, reporter):
    """Captum attributions of N test images (or your --image files), and a sanity check of the methods.

    \b
    Methods (--method, short names):
      ig              Integrated Gradients (signed; steps raised until converged)
      saliency        |gradient|
      smoothgrad      SmoothGrad: |gradient| averaged over noisy copies
      ixg             Input x Gradient (signed)
      deeplift        DeepLift (signed)
      gradshap        GradientShap (signed)
      guided          Guided Backprop (signed)
      gradcam         GradCAM on --layer, upsampled
      guided-gradcam  Guided GradCAM (signed)
      occlusion       Occlusion: drop of the class score under an 8x8 patch (signed)
      edges           Sobel edges of the input: no model at all, a control for --sanity

    Writes plots/attributions.png (a row per image, a column per method over the image in grey, with
    what its colours mean: red is evidence for the class only for IG, Input x Gradient, DeepLift,
    GradientShap and Occlusion) and the maps in plots/attributions.npz.

    --sanity runs the model-parameter randomisation test (Adebayo et al. 2018): on a copy of the
    model, the layers are re-initialised one by one from the output down and each method's maps
    compared (Spearman rank correlation of |map|) with the trained model's; a method still above
    --sanity-threshold with every layer random is FLAGGED. Figures plots/sanity.png, sanity_maps.png.

    \b
    JSON: {target, dataset, target_class, methods, signed: {method: bool}, skipped: {method: reason},
      warnings, gradcam_layer: {name, size, calls, chosen} | null, settings, images: [{index, label,
      class, pred, pred_class, prob, target, ig_delta, ig_steps, ig_relative_delta, ig_converged}],
      figures: {attributions, maps}}
    With --sanity: {target, dataset, measure, threshold, seed, stages: [{stage, randomised, layers_random}],
      methods: [{name, title, rank_abs, rank_signed, final_rank_abs, flagged, control}], flagged,
      attribution: (the JSON above), figures: {sanity, sanity_maps}}

    \b
    Examples:
      cnnscope attribute reports/basic --method ig --method gradcam --target true
      cnnscope attribute reports/basic --index 3 --index 17 --target Sneaker --scale method
      cnnscope attribute reports/basic --list-layers
      cnnscope attribute reports/basic --layer c3b.pw --sanity --method saliency --method edges
    """
    from cnnscope.core.attribution import list_layers as layer_list
    from cnnscope.core.attribution_methods import DEFAULT_METHODS as DEFAULTS
    from cnnscope.runs.inspect import inspect_attributions, inspect_sanity, load_target, load_test_images

    tgt = load_target(target, ctor, out, trust_spec, device=device, seed=seed, reporter=reporter)
    events = events_folder(tgt, tensorboard)
    images = load_test_images(tgt, n_images, dataset, data_dir, image_paths, reporter, indices)
    if list_layers:
        return emit(fmt, layer_list(tgt.model, images.x[:1], tgt.label))
    options = dict(methods=methods or DEFAULTS, target_class=target_class, layer=layer, ig_tolerance=ig_tolerance,
                   figure_options={"scale": scale, "overlay": overlay},
                   **(dict(threshold=sanity_threshold, max_stages=sanity_stages, seed=seed) if sanity else {}))
    with reporter.bar() as bar, tgt.writing():
        report = (inspect_sanity if sanity else inspect_attributions)(tgt, images, progress=bar, **options)
    emit_inspection(fmt, report, tgt, events, "attribute", **_attribution_output(report, sanity))


def _attribution_output(report, sanity: bool) -> dict:
    """emit's wrote and warnings of an AttributionReport, or of a SanityReport (`sanity`) and its attributions."""
    attributions = report.attribution if sanity else report
    return dict(wrote=[*attributions.figures.values(), *(report.figures.values() if sanity else ())],
                warnings=[*attributions.skipped.values(), *attributions.warnings])
