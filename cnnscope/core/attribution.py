"""Captum attributions of test images: which pixels drive the class score.

Methods (all on the normalised input; the baseline of Integrated Gradients and the occlusion fill
is 0, i.e. the dataset's mean colour):
  ig         IntegratedGradients, IG_STEPS steps, internal batching; |attribution| summed over channels
  saliency   |gradient| summed over channels
  gradcam    LayerGradCam (ReLU) on the last spatial conv, upsampled bilinearly to the input size
  occlusion  Occlusion with an OCCLUSION_WINDOW square, stride OCCLUSION_STRIDE; the drop of the
             class score when a window is hidden, positive part only (evidence for the class)
Every map is scaled to [0, 1] by its own maximum for the figure.

Weight tying: Captum's layer hooks support a layer that runs once per forward (its maintainers say
so; a second call silently replaces the first one's output). GradCAM therefore uses the last
spatial conv that is CALLED once; when that is not the network's last spatial conv, a warning
names both, and when there is none, GradCAM is skipped with the reason.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from cnnscope.errors import CnnscopeError
from cnnscope.core.sharing import is_shared_layer
from cnnscope.core.probe import logits, run_forward
from cnnscope.core import metrics

METHODS = ("ig", "saliency", "gradcam", "occlusion")
TITLES = {"ig": "Integrated Gradients", "saliency": "Saliency", "gradcam": "GradCAM",
          "occlusion": "Occlusion"}
IG_STEPS = 32
IG_INTERNAL_BATCH = 16
OCCLUSION_WINDOW = 8
OCCLUSION_STRIDE = 4
OCCLUSION_BATCH = 16


@dataclass
class ConvCall:
    name: str
    module: nn.Module
    size: tuple  # (H, W) of the output
    calls: int  # how often the module runs in one forward


@dataclass
class AttributionReport:
    """Attribution maps of a batch of images, one per method, and what the model predicted; the
    rest says what was looked at, and `figures` names the figures a caller drew (name -> path)."""
    methods: list  # methods that ran, in METHODS order
    maps: np.ndarray  # (N, len(methods), H, W) in [0, 1]
    preds: list  # predicted class per image
    probs: list  # softmax probability of the predicted class per image
    targets: list  # the class attributed per image
    ig_deltas: list  # Integrated Gradients' convergence delta per image; None where ig did not run
    target_class: str = "pred"  # how targets were chosen: "pred", or given ("given", "true", ...)
    skipped: dict = field(default_factory=dict)  # method -> why it could not run
    warnings: list = field(default_factory=list)
    gradcam_layer: Optional[dict] = None  # {"name", "size", "calls"}
    target: str = "model"  # what was inspected: a model's class name, a run folder, "<name> (untrained)"
    dataset: Optional[str] = None  # where the images come from, when known
    images: list = field(default_factory=list)  # {"index"} per image, with "label" and "class" when known
    classes: list = field(default_factory=list)  # class names, when known
    figures: dict = field(default_factory=dict)

    def class_name(self, index: int) -> str:
        return metrics.class_name(self.classes, index)

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "dataset": self.dataset,
            "target_class": self.target_class,
            "methods": self.methods,
            "skipped": self.skipped,
            "warnings": self.warnings,
            "gradcam_layer": self.gradcam_layer,
            "settings": {"ig_steps": IG_STEPS, "ig_internal_batch_size": IG_INTERNAL_BATCH,
                         "occlusion_window": OCCLUSION_WINDOW, "occlusion_stride": OCCLUSION_STRIDE,
                         "baseline": "zeros of the normalised input (the dataset's mean colour)"},
            "images": [{**image, "pred": pred, "pred_class": self.class_name(pred), "prob": prob,
                        "target": target, "ig_delta": delta}
                       for image, pred, prob, target, delta in zip(
                           self.images, self.preds, self.probs, self.targets, self.ig_deltas)],
            "figures": self.figures,
        }


def conv_calls(model, x) -> list[ConvCall]:
    """Every call of a Conv2d or soft-shared conv in one forward of `x`, in order, with its output size."""
    names = {m: name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) or is_shared_layer(m)}
    calls, hooks = [], []
    for module in names:
        hooks.append(module.register_forward_hook(
            lambda m, args, out: calls.append((m, tuple(out.shape[2:])))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    counts = {}
    for module, _ in calls:
        counts[module] = counts.get(module, 0) + 1
    return [ConvCall(names[m], m, size, counts[m]) for m, size in calls]


def gradcam_layer(model, x) -> tuple[Optional[ConvCall], Optional[str]]:
    """The layer for GradCAM and a warning or the reason GradCAM cannot run (see module doc)."""
    spatial = [c for c in conv_calls(model, x) if len(c.size) == 2 and c.size[0] * c.size[1] > 1]
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


def to_heat(attr: torch.Tensor, method: str) -> np.ndarray:
    """One image's attribution (C, H, W) -> (H, W) in [0, 1] (see the module doc per method)."""
    if method == "occlusion":
        heat = attr.mean(0).clamp(min=0)
    elif method == "gradcam":
        heat = attr.sum(0).clamp(min=0)
    else:
        heat = attr.abs().sum(0)
    peak = heat.max()
    return (heat / peak if peak > 0 else heat).detach().cpu().numpy()


def explain(model, x, target: int, method: str, layer: Optional[nn.Module] = None):
    """One image `x` (1, C, H, W) -> ((H, W) map in [0, 1], IG's convergence delta or None).

    `layer` is the GradCAM layer (see gradcam_layer); the other methods ignore it.
    """
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

    x = x.detach().clone().requires_grad_(True)
    channels, height, width = x.shape[1:]
    delta = None
    if method == "ig":
        attr, delta = IntegratedGradients(model).attribute(
            x, target=target, n_steps=IG_STEPS, internal_batch_size=IG_INTERNAL_BATCH,
            return_convergence_delta=True)
        delta = float(delta.item())
    elif method == "saliency":
        attr = Saliency(model).attribute(x, target=target, abs=True)
    elif method == "gradcam":
        attr = LayerAttribution.interpolate(
            LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True),
            (height, width), interpolate_mode="bilinear")
    elif method == "occlusion":
        attr = Occlusion(model).attribute(
            x, target=target, sliding_window_shapes=(channels, OCCLUSION_WINDOW, OCCLUSION_WINDOW),
            strides=(channels, OCCLUSION_STRIDE, OCCLUSION_STRIDE), baselines=0.0,
            perturbations_per_eval=OCCLUSION_BATCH)
    else:
        raise ValueError(f"unknown attribution method {method!r}; one of {METHODS}")
    return to_heat(attr[0], method), delta


def attribute(model, images: torch.Tensor, targets=None, methods=METHODS, *,
              on_progress=lambda done, total: None) -> AttributionReport:
    """Attribution maps of `images` (N, C, H, W) for each of `methods` (see the module doc).

    `targets`: the class to attribute per image; None attributes the predicted class. GradCAM is
    skipped, with the reason, where the model has no layer for it. `on_progress(maps done, maps in all)` follows the work.
    """
    probs = torch.softmax(logits(run_forward(model, images), model), dim=1)
    preds = probs.argmax(1).tolist()
    if targets is not None and max(targets) >= probs.shape[1]:
        raise CnnscopeError(
            f"The targets are class indices up to {max(targets)}, but {type(model).__name__} has "
            f"{probs.shape[1]} outputs (one logit per class)."
        )
    skipped, warnings, layer = {}, [], None
    if "gradcam" in methods:
        layer, message = gradcam_layer(model, images[:1])
        if layer is None:
            skipped["gradcam"] = f"GradCAM cannot run: {message}"
        elif message:
            warnings.append(message)
    ran = [m for m in METHODS if m in methods and m not in skipped]
    target_class = "pred" if targets is None else "given"
    targets = preds if targets is None else list(targets)
    maps = np.zeros((len(images), len(ran), *images.shape[2:]), dtype=np.float32)
    ig_deltas = []
    for i in range(len(images)):
        ig_delta = None
        for j, method in enumerate(ran):
            maps[i, j], delta = explain(model, images[i:i + 1], targets[i], method, layer and layer.module)
            ig_delta = delta if method == "ig" else ig_delta
            on_progress(i * len(ran) + j + 1, len(images) * len(ran))
        ig_deltas.append(ig_delta)
    return AttributionReport(
        ran, maps, preds, [float(probs[i, p]) for i, p in enumerate(preds)], targets, ig_deltas,
        target_class=target_class, skipped=skipped, warnings=warnings,
        gradcam_layer=layer and {"name": layer.name, "size": list(layer.size), "calls": layer.calls},
        target=type(model).__name__, images=[{"index": i} for i in range(len(images))],
    )


def class_count(model, images: torch.Tensor, name=None) -> int:
    """How many classes `model` scores: the logits of a forward of `images` (N, C, H, W)."""
    return logits(run_forward(model, images, name), model, name).shape[1]
