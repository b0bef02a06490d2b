"""What `cnnscope rf` does with a SPEC or a trained run: build the model, analyse it, probe it, and
measure and draw the effective RF of a run's weights on its test images (RUN/plots/erf.png)."""
from dataclasses import replace

from cnnscope.core.rf import (
    RFResult, effective_receptive_field, receptive_field, rf_box, verify_receptive_field,
)
from cnnscope.core.rf.trace import meta_tensors_loaded
from cnnscope.core.runtime import resolve_device
from cnnscope.errors import CnnscopeError
from cnnscope.render.progress import SILENT
from cnnscope.runs.spec import build_model, resolve_target


def report(spec=None, ctor=None, input_shape=(3, 32, 32), *, check=False, erf_run=None, erf_images=64,
           erf_image_paths=(), data_dir="data", trust_spec=False, device="cpu", reporter=SILENT,
           progress=None) -> RFResult:
    """Analyse SPEC; `check` adds the gradient probe (result.probe); `erf_run` measures the effective
    RF of that run's weights on `erf_images` of its test images, or on the image files at
    `erf_image_paths` (runs.user_images), (result.erf, RUN/plots/erf.png) and
    analyses the run's model (in SPEC's architecture when SPEC is given) at its images' size;
    `trust_spec`: build the run's own SPEC even when it is no zoo model (spec.check_file_spec).
    `device`: where the effective RF's gradients are computed. `reporter` says what is prepared,
    `progress`: a rich Progress to report on."""
    device = resolve_device(device)  # also without erf_run: a device that is not here is an error
    if erf_run is not None:
        model, result = _measure_erf(erf_run, spec, ctor, input_shape, (erf_images, erf_image_paths), data_dir,
                                     trust_spec, device, reporter, progress)
    elif erf_image_paths:
        raise CnnscopeError("Image files are for the effective RF of a trained run: give erf_run too.",
                            arguments=("erf_image_paths", "erf_run"))
    elif spec is None:
        raise CnnscopeError("Give a SPEC to analyse (e.g. basic), or erf_run: a trained run.", arguments=("erf_run",))
    else:
        # the probe needs real weights; the analysis alone does not
        model, result = (None, None) if check else _analyze_on_meta(spec, ctor, input_shape)
        if result is None:
            model = build_model(spec, ctor)
            result = receptive_field(model, input_shape)
    if check:
        task = progress.add_task("verify: gradient probe", total=None) if progress else None
        result.probe = verify_receptive_field(model.cpu(), result)  # the probe's input is on the CPU
        if progress:
            progress.remove_task(task)
    return result


def _analyze_on_meta(spec, ctor, input_shape):
    """(model, result) of SPEC built on the meta device, which skips the weight initialisation (0.43 s
    of a ResNet-50's 0.6 s of RF work); (None, None) where that does not work: the meta pass is not
    taken (trace.meta_tensors_loaded), or the constructor or the forward pass needs real values."""
    resolve_target(spec)  # import the model's module first: torchvision loads the meta machinery
    if not meta_tensors_loaded():
        return None, None
    try:
        model = build_model(spec, ctor, device="meta")
        return model, receptive_field(model, input_shape)
    except CnnscopeError:  # built on the CPU, it gets the real error message, if there is one
        return None, None


def _measure_erf(run, spec, ctor, input_shape, images, data_dir, trust_spec, device, reporter, progress):
    """(model, result) of the run's weights (in SPEC's architecture when SPEC is given), with
    result.erf measured on `images` = (n, paths): n of its test images, or the image files at paths,
    and drawn to RUN/plots/erf.png."""
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
    reporter.detail(f"effective RF: gradients of {len(images.x)} images on {device}")
    model.to(device)
    task = progress.add_task("erf: gradients", total=len(images.x)) if progress else None
    erf = effective_receptive_field(model, images.x, result,
                                    on_batch=(lambda k: progress.advance(task, k)) if progress else None)
    erf = replace(erf, dataset=images.dataset, run=str(run_dir))
    with run_folder.writing_into(out_dir):
        result.erf = replace(erf, figure=str(_draw_erf(result, erf, out_dir)))
    return model, result


def _draw_erf(result: RFResult, erf, run_dir):
    """The heatmap with the theoretical RF box and the 95% circle: RUN/plots/erf.png."""
    from cnnscope.render import plots  # matplotlib: only where a figure is drawn

    return plots.erf_heatmap(
        erf.heatmap, run_dir / "plots" / "erf.png", centre=erf.centre, box=rf_box(result, erf.centre),
        radius=erf.radius95, box_label=f"theoretical RF {result.final_rf} px",
        title=f"Effective RF: {result.model}, {run_dir.name} ({erf.images} {_images_of(erf.dataset)})")


def _images_of(dataset: str) -> str:
    return "image files" if dataset == "image files" else f"{dataset} test images"
