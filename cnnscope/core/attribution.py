"""Captum attributions of test images: which pixels drive the class score.

The methods are in cnnscope.core.attribution_methods (a registry by short name); `attribute` runs
the chosen ones on a batch and returns the maps WITH their sign and magnitude (no normalisation:
the figure gives each method one shared scale). Integrated Gradients raises its step count until
its convergence delta is within a tolerance of |F(x) - F(baseline)| and reports both per image.

The layer of the GradCAM family is named (`layer`) or chosen: the last spatial conv called once.
Weight tying: Captum's layer hooks support a layer that runs once per forward (its maintainers say
so; a second call silently replaces the first one's output). The automatic choice therefore takes
the last spatial conv that is CALLED once; when that is not the network's last spatial conv, a
warning names both, and when there is none, the layer methods are skipped with the reason. A named
layer must run once per forward and give an (N, C, H, W) map.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from cnnscope.errors import CnnscopeError
from cnnscope.core.sharing import is_shared_layer
from cnnscope.core.probe import display_pixels, logits, run_forward
from cnnscope.core.relu_calls import forward_calls, relu_method_caveats
from cnnscope.core.attribution_methods import DEFAULT_METHODS, IG_TOLERANCE, METHODS, reduce_channels
from cnnscope.core import attribution_methods as settings
from cnnscope.core import metrics


@dataclass
class ConvCall:
    name: str
    module: nn.Module
    size: tuple  # (H, W) of the output
    calls: int  # how often the module runs in one forward
    channels: int = 0  # of the output


@dataclass
class AttributionReport:
    """Attribution maps of a batch of images, one per method, and what the model predicted; the
    rest says what was looked at, and `figures` names the files a caller wrote (name -> path)."""
    methods: list  # methods that ran, in registry order
    maps: np.ndarray  # (N, len(methods), H, W): signed where the method is, unnormalised
    preds: list  # predicted class per image
    probs: list  # softmax probability of the predicted class per image
    targets: list  # the class attributed per image
    ig: list  # IGConvergence per image; None where ig did not run
    target_class: str = "pred"  # how targets were chosen: "pred", or given ("given", "true", ...)
    skipped: dict = field(default_factory=dict)  # method -> why it could not run
    warnings: list = field(default_factory=list)
    gradcam_layer: Optional[dict] = None  # {"name", "size", "calls", "chosen": "auto" | "given"}
    ig_tolerance: float = IG_TOLERANCE
    target: str = "model"  # what was inspected: a model's class name, a run folder, "<name> (untrained)"
    dataset: Optional[str] = None  # where the images come from, when known
    images: list = field(default_factory=list)  # {"index"} per image, with "label" and "class" when known
    classes: list = field(default_factory=list)  # class names, when known
    figures: dict = field(default_factory=dict)
    pixels: Optional[np.ndarray] = None  # (N, H, W, 3) in [0, 1]: the images as a figure shows them
    model: str = ""  # the model's class name
    weights: str = ""  # "trained" or "untrained" where the caller knows; "" where not

    def class_name(self, index: int) -> str:
        return metrics.class_name(self.classes, index)

    def method_map(self, method: str) -> np.ndarray:
        """(N, H, W) maps of one method."""
        return self.maps[:, self.methods.index(method)]

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "dataset": self.dataset,
            "target_class": self.target_class,
            "methods": self.methods,
            "signed": {m: METHODS[m].signed for m in self.methods},
            "skipped": self.skipped,
            "warnings": self.warnings,
            "gradcam_layer": self.gradcam_layer,
            "settings": {"ig_tolerance": self.ig_tolerance,
                         "ig_steps": [settings.IG_MIN_STEPS, settings.IG_MAX_STEPS],
                         "ig_internal_batch_size": settings.IG_INTERNAL_BATCH,
                         "smoothgrad_samples": settings.SMOOTHGRAD_SAMPLES,
                         "smoothgrad_noise": settings.SMOOTHGRAD_NOISE,
                         "gradshap_baselines": settings.GRADSHAP_BASELINES,
                         "occlusion_window": settings.OCCLUSION_WINDOW,
                         "occlusion_stride": settings.OCCLUSION_STRIDE,
                         "baseline": "zeros of the normalised input (the dataset's mean colour)"},
            "images": [{**image, "pred": pred, "pred_class": self.class_name(pred), "prob": prob, "target": target,
                        "ig_delta": ig and ig.delta, "ig_steps": ig and ig.steps,
                        "ig_relative_delta": ig and ig.relative_delta, "ig_converged": ig and ig.converged}
                       for image, pred, prob, target, ig in zip(
                           self.images, self.preds, self.probs, self.targets, self.ig)],
            "figures": self.figures,
        }


@dataclass
class LayerList:
    """The layers a layer method (GradCAM) can use: every conv call, in forward order."""
    target: str
    layers: list  # {"name", "type", "size": [C, H, W], "calls", "usable", "default"}

    def to_json(self) -> dict:
        return {"target": self.target, "layers": self.layers}


def conv_calls(model, x) -> list[ConvCall]:
    """Every call of a Conv2d or soft-shared conv in one forward of `x`, in order, with its output size."""
    calls = forward_calls(model, x, lambda m: isinstance(m, nn.Conv2d) or is_shared_layer(m))
    counts = {}
    for _, module, _ in calls:
        counts[module] = counts.get(module, 0) + 1
    return [ConvCall(name, m, shape[2:], counts[m], shape[1]) for name, m, shape in calls]


def _spatial(call: ConvCall) -> bool:
    return len(call.size) == 2 and call.size[0] * call.size[1] > 1


def gradcam_layer(model, x) -> tuple[Optional[ConvCall], Optional[str]]:
    """The layer for GradCAM and a warning or the reason GradCAM cannot run (see module doc)."""
    spatial = [c for c in conv_calls(model, x) if _spatial(c)]
    if not spatial:
        return None, "the model has no Conv2d or SConv2d producing a spatial map larger than 1x1."
    last = spatial[-1]
    once = [c for c in spatial if c.calls == 1]
    if last.calls == 1:
        return last, None
    tied = (f"the last spatial conv, {last.name} ({_size(last.size)}), runs {last.calls} times per "
            "forward (weight tying), and Captum's layer hooks support only a layer used once")
    if not once:
        return None, f"{tied}; every spatial conv of this model is used more than once."
    chosen = once[-1]
    return chosen, (f"GradCAM uses {chosen.name} ({_size(chosen.size)}), the last spatial conv called "
                    f"once: {tied}.")


def _size(size) -> str:
    return "x".join(map(str, size))


def list_layers(model, x, target="model") -> LayerList:
    """Every conv call of one forward of `x` (1, C, H, W) with its output size; `usable` where a layer
    method can take it (spatial, called once), `default` on the automatic choice."""
    default, _ = gradcam_layer(model, x)
    seen, layers = set(), []
    for call in conv_calls(model, x):
        if call.name in seen:
            continue
        seen.add(call.name)
        layers.append({"name": call.name, "type": type(call.module).__name__, "size": [call.channels, *call.size],
                       "calls": call.calls, "usable": _spatial(call) and call.calls == 1,
                       "default": default is not None and call.name == default.name})
    return LayerList(target, layers)


def named_layer(model, x, name: str) -> ConvCall:
    """The layer called `name` for a layer method, checked: it exists, runs once per forward of `x`
    and gives an (N, C, H, W) map with more than one pixel."""
    modules = dict(model.named_modules())
    candidates = ", ".join(f"{c['name']} ({_size(c['size'][1:])})" for c in list_layers(model, x).layers
                           if c["usable"]) or "none"
    if name not in modules or name == "":
        raise CnnscopeError(f"{type(model).__name__} has no layer {name!r}. Layers a layer method can use "
                            f"(spatial convs called once, with their output size): {candidates}.",
                            arguments=("layer",))
    calls = forward_calls(model, x, lambda m: m is modules[name])
    problem = _layer_problem(calls)
    if problem:
        raise CnnscopeError(f"Layer {name} of {type(model).__name__} {problem}. Layers a layer method can use: "
                            f"{candidates}.", arguments=("layer",))
    shape = calls[0][2]
    return ConvCall(name, modules[name], shape[2:], 1, shape[1])


def _layer_problem(calls):
    """What keeps a layer with these forward calls from a layer method, or None."""
    if not calls:
        return "does not run in the forward"
    if len(calls) > 1:
        return f"runs {len(calls)} times per forward, and Captum's layer hooks support only a layer used once"
    shape = calls[0][2]
    if shape is None or len(shape) != 4 or shape[2] * shape[3] <= 1:
        got = "no tensor" if shape is None else f"a tensor of shape {shape}"
        return f"gives {got}, not an (N, C, H, W) map larger than 1x1"
    return None


def explain(model, x, target: int, method: str, layer: Optional[nn.Module] = None, tolerance=IG_TOLERANCE):
    """One image `x` (1, C, H, W) -> ((H, W) map, IG's IGConvergence or None); see attribution_methods.

    `layer` is the module of the layer methods (see gradcam_layer); the other methods ignore it.
    """
    run = METHODS[method].build(model, layer, x, tolerance)
    attr, ig = run(x.detach().clone().requires_grad_(True), target)
    return reduce_channels(attr[0]).cpu().numpy(), ig


def compute_maps(model, images, targets, methods, layer=None, tolerance=IG_TOLERANCE, *,
                 on_progress=lambda done: None) -> tuple:
    """(maps (N, len(methods), H, W) float32, IGConvergence or None per image) of `images` for `targets`;
    `layer`: the layer methods' module. on_progress(1) after each map."""
    maps = np.zeros((len(images), len(methods), *images.shape[2:]), dtype=np.float32)
    ig = [None] * len(images)
    for j, name in enumerate(methods):
        run = METHODS[name].build(model, layer, images[:1], tolerance)
        for i in range(len(images)):
            attr, convergence = run(images[i:i + 1].detach().clone().requires_grad_(True), targets[i])
            maps[i, j] = reduce_channels(attr[0]).cpu().numpy()
            ig[i] = convergence or ig[i]
            on_progress(1)
    return maps, ig


def resolve_methods(methods) -> list:
    """Method names in registry order, each once; an unknown one is a CnnscopeError."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CnnscopeError(f"Unknown attribution method {', '.join(map(repr, unknown))}; the methods are "
                            f"{', '.join(METHODS)}.", arguments=("methods",))
    return [m for m in METHODS if m in methods]


def prepare(model, x, methods, layer=None) -> tuple:
    """(methods that can run, layer ConvCall or None, skipped {method: why}, warnings) for `methods` on
    `model` with probe input `x` (1, C, H, W); `layer` names the layer methods' layer (None: automatic)."""
    skipped, warnings, chosen = {}, [], None
    layered = [m for m in methods if METHODS[m].layer]
    if layer is not None:
        chosen = named_layer(model, x, layer)
        if not layered:
            warnings.append(f"The layer {layer} is for {', '.join(m for m in METHODS if METHODS[m].layer)}, and "
                            "none of them ran.")
    elif layered:
        chosen, message = gradcam_layer(model, x)
        if chosen is None:
            skipped.update({m: f"{METHODS[m].title} cannot run: {message}" for m in layered})
        elif message:
            warnings.append(message)
    for name in methods:
        problem, notes = relu_method_caveats(name, model, x)
        warnings += notes
        if problem:
            skipped[name] = problem
    return [m for m in methods if m not in skipped], chosen, skipped, warnings


def attribute(model, images: torch.Tensor, targets=None, methods=DEFAULT_METHODS, *, layer=None,
              ig_tolerance=IG_TOLERANCE, on_progress=lambda done, total: None) -> AttributionReport:
    """Attribution maps of `images` (N, C, H, W) for each of `methods` (names of attribution_methods).

    `targets`: the class to attribute per image; None attributes the predicted class. `layer`: the
    layer of GradCAM and Guided GradCAM by name (None: the last spatial conv called once). A method
    that cannot run on this model is skipped, with the reason. `ig_tolerance`: IG's largest
    |delta| / |F(x) - F(0)|. `on_progress(maps done, maps in all)` follows the work.
    """
    probs = torch.softmax(logits(run_forward(model, images), model), dim=1)
    preds = probs.argmax(1).tolist()
    if targets is not None and max(targets) >= probs.shape[1]:
        raise CnnscopeError(
            f"The targets are class indices up to {max(targets)}, but {type(model).__name__} has "
            f"{probs.shape[1]} outputs (one logit per class)."
        )
    ran, chosen, skipped, warnings = prepare(model, images[:1], resolve_methods(methods), layer)
    target_class = "pred" if targets is None else "given"
    targets = preds if targets is None else list(targets)
    total, done = len(images) * len(ran), [0]

    def step(n):
        done[0] += n
        on_progress(done[0], total)

    maps, ig = compute_maps(model, images, targets, ran, chosen and chosen.module, ig_tolerance, on_progress=step)
    return AttributionReport(
        ran, maps, preds, [float(probs[i, p]) for i, p in enumerate(preds)], targets, ig,
        target_class=target_class, skipped=skipped, warnings=warnings + ig_warnings(ig, ig_tolerance),
        gradcam_layer=chosen and {"name": chosen.name, "size": list(chosen.size), "calls": chosen.calls,
                                  "chosen": "auto" if layer is None else "given"},
        ig_tolerance=ig_tolerance, target=type(model).__name__, images=[{"index": i} for i in range(len(images))],
        pixels=display_pixels(images), model=type(model).__name__,
    )


def ig_warnings(ig, tolerance) -> list:
    """A warning naming the images where Integrated Gradients missed the tolerance, if any."""
    missed = [f"image {i}: {c.relative_delta:.3g} at {c.steps} steps" for i, c in enumerate(ig)
              if c is not None and not c.converged]
    if not missed:
        return []
    return [f"Integrated Gradients did not reach the tolerance |delta| <= {tolerance:g} x |F(x) - F(baseline)| "
            f"within {settings.IG_MAX_STEPS} steps ({'; '.join(missed)}): read those maps with care."]


def class_count(model, images: torch.Tensor, name=None) -> int:
    """How many classes `model` scores: the logits of a forward of `images` (N, C, H, W)."""
    return logits(run_forward(model, images, name), model, name).shape[1]
