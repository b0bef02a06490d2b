"""What `cnnscope rf` does with a SPEC or a trained run: build the model, analyse it, probe it, and
measure and draw the effective RF of a run's weights on its test images (RUN/plots/erf.png)."""
from dataclasses import replace

from cnnscope.core.rf import RFResult, effective_receptive_field, receptive_field, verify_receptive_field
from cnnscope.core.rf.tracer import ValuesNeeded
from cnnscope.core.runtime import resolve_device
from cnnscope.errors import CnnscopeError
from cnnscope.render.progress import SILENT
from cnnscope.runs.spec import build_model


def report(spec=None, ctor=None, input_shape=(3, 32, 32), *, check=False, erf_run=None, erf_images=64,
           erf_image_paths=(), erf_log=True, data_dir="data", trust_spec=False, device="cpu", reporter=SILENT,
           progress=None) -> RFResult:
    """Analyse SPEC; `check` adds the gradient probe (result.probe); `erf_run` measures the effective
    RF of that run's weights on `erf_images` of its test images, or on the image files at
    `erf_image_paths` (runs.user_images), (result.erf, RUN/plots/erf.png: on a log scale, or a linear
    one without `erf_log`) and
    analyses the run's model (in SPEC's architecture when SPEC is given) at its images' size;
    `trust_spec`: build the run's own SPEC even when it is no zoo model (spec.check_file_spec).
    `device`: where the effective RF's gradients are computed. `reporter` says what is prepared,
    `progress`: a rich Progress to report on."""
    device = resolve_device(device)  # also without erf_run: a device that is not here is an error
    if erf_run is not None:
        model, result = _measure_erf(erf_run, spec, ctor, input_shape, (erf_images, erf_image_paths), data_dir,
                                     trust_spec, device, reporter, progress, erf_log)
    elif erf_image_paths:
        raise CnnscopeError("Image files are for the effective RF of a trained run: give erf_run too.",
                            arguments=("erf_image_paths", "erf_run"))
    elif spec is None:
        raise CnnscopeError("Give a SPEC to analyse (e.g. basic), or erf_run: a trained run.", arguments=("erf_run",))
    elif check:  # the probe needs the model's own weights
        model = build_model(spec, ctor)
        result = receptive_field(model, input_shape)
    else:
        model, result = _analysed(spec, ctor, input_shape)
    if check:
        _require_known(result, "check", "the gradient probe checks the analysis's figures")
        task = progress.add_task("verify: gradient probe", total=None) if progress else None
        result.probe = verify_receptive_field(model.cpu(), result)  # the probe's input is on the CPU
        if progress:
            progress.remove_task(task)
    return result


def _analysed(spec, ctor, input_shape):
    """(model, result) of SPEC. The analysis reads no weight, so the model is built without
    initialising them (for a ResNet-50 that takes longer than the analysis): on the meta device,
    then given uninitialised CPU storage (not even zeroed: writing 100 MB costs as much). Where the
    constructor or the forward reads a value (which the analysis pass detects), or the made-up
    values make the forward fail, it is built again as it is and analysed the same way."""
    try:
        model = build_model(spec, ctor, device="meta").to_empty(device="cpu")
        return model, receptive_field(model, input_shape, values=False)
    except (CnnscopeError, ValuesNeeded, NotImplementedError, RuntimeError):
        model = build_model(spec, ctor)
        return model, receptive_field(model, input_shape)


def _require_known(result: RFResult, argument, what):
    """A CnnscopeError (exit 2) where the analysis is unknown from some layer on: nothing to check."""
    if result.unknown is not None:
        raise CnnscopeError(f"The RF of {result.model} is {result.unknown.describe()}; {what}, so {argument} "
                            "has nothing to work from. Leave it out to see the table, or replace that operation.",
                            arguments=(argument,))


def _measure_erf(run, spec, ctor, input_shape, images, data_dir, trust_spec, device, reporter, progress, log):
    """(model, result) of the run's weights (in SPEC's architecture when SPEC is given), with
    result.erf measured on `images` = (n, paths): n of its test images, or the image files at paths,
    and drawn to RUN/plots/erf.png (`log`: on a log scale)."""
    from cnnscope.runs import run_folder  # a run's weights, images and folder: only for the ERF
    from cnnscope.runs.checkpoint import load_run_model, resolve_run
    from cnnscope.runs.inspect import Target, load_test_images

    if ctor and spec is None:
        raise CnnscopeError("ctor applies to a SPEC; with erf_run alone the run's checkpoint gives the constructor "
                            "keywords. Leave out ctor, or give the SPEC it belongs to.", arguments=("ctor", "erf_run"))
    out_dir = run_folder.output_folder(*resolve_run(run))
    run_folder.refuse_links(out_dir)  # before any work
    reporter.detail(f"loading the run {run}")
    model, ckpt, run_dir = load_run_model(run, trust_spec=trust_spec, spec=spec, ctor=ctor)
    images = load_test_images(Target(model, str(run_dir), out_dir / "plots", ckpt, device, out_dir), images[0],
                              data_dir=data_dir, image_paths=images[1], reporter=reporter)
    shape = tuple(images.x.shape[1:])
    if tuple(input_shape) != shape:
        raise CnnscopeError(f"The effective RF of erf_run is measured on the run's {'x'.join(map(str, shape))} test "
                            f"images: input_shape must be {shape}.", arguments=("input_shape", "erf_run"))
    result = receptive_field(model, shape)  # on the CPU, before the weights move to `device`
    _require_known(result, "erf_run", "the effective RF is measured around the final map's centre unit")
    reporter.detail(f"effective RF: gradients of {len(images.x)} images on {device}")
    model.to(device)
    task = progress.add_task("erf: gradients", total=len(images.x)) if progress else None
    erf = effective_receptive_field(model, images.x, result,
                                    on_batch=(lambda k: progress.advance(task, k)) if progress else None)
    erf = replace(erf, dataset=images.dataset, run=str(run_dir))
    with run_folder.writing_into(out_dir):
        result.erf = replace(erf, figure=str(_draw_erf(result, erf, out_dir, log)))
    return model, result


def _draw_erf(result: RFResult, erf, run_dir, log):
    """The heatmap with the theoretical RF box and the 95% circle: RUN/plots/erf.png."""
    from cnnscope.render import figures  # matplotlib: only where a figure is drawn

    return figures.write(replace(result, erf=erf), run_dir / "plots" / "erf.png", "erf", log=log)
