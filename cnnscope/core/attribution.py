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
from cnnscope.runs.inspect import Section, fmt_float
from cnnscope.core.sharing import is_shared_layer
from cnnscope.core.probe import logits, run_forward

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
    target: str
    dataset: str
    target_class: str  # "pred" | "true"
    methods: list  # methods that ran, in figure order
    images: list  # per image: index, label, class, pred, pred_class, prob, target, ig_delta
    skipped: dict = field(default_factory=dict)  # method -> why it could not run
    warnings: list = field(default_factory=list)
    gradcam_layer: Optional[dict] = None  # {"name", "size", "calls"}
    figures: dict = field(default_factory=dict)

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
            "images": self.images,
            "figures": self.figures,
        }

    def sections(self) -> list[Section]:
        notes = [f"methods: {', '.join(TITLES[m] for m in self.methods) or 'none'}"]
        if self.gradcam_layer:
            layer = self.gradcam_layer
            notes.append(f"GradCAM layer: {layer['name']} ({'x'.join(map(str, layer['size']))})")
        notes += [f"skipped {TITLES[m]}: {why}" for m, why in self.skipped.items()]
        notes += [f"warning: {w}" for w in self.warnings]
        notes += [f"{name}: {path}" for name, path in self.figures.items()]
        return [Section(
            f"Attributions: {self.target}, {len(self.images)} test images of {self.dataset}, "
            f"target = {self.target_class} class",
            ["Index", "True", "Predicted", "P(pred)", "Target", "IG delta"],
            [[str(im["index"]), im["class"], im["pred_class"], fmt_float(im["prob"]), str(im["target"]),
              fmt_float(im["ig_delta"], 4)] for im in self.images],
            notes=notes,
        )]


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


def inspect_attributions(target, images, *, methods=METHODS, target_class="pred", progress=None):
    """Attribution maps of `images` for each method, and plots/attributions.png."""
    from cnnscope.render import plots

    model = target.model
    probs = torch.softmax(logits(run_forward(model, images.x, target.label), model, target.label), dim=1)
    preds = probs.argmax(1).tolist()
    num_outputs = probs.shape[1]
    if target_class == "true" and max(images.labels) >= num_outputs:
        raise CnnscopeError(
            f"--target true needs a logit per class, but the model has {num_outputs} outputs and the "
            f"{images.dataset} labels go up to {max(images.labels)}. Use --target pred, or build the "
            f"model with --ctor num_classes={len(images.classes)}."
        )
    targets = preds if target_class == "pred" else list(images.labels)
    report = AttributionReport(target.label, images.dataset, target_class, [], [])

    layer = None
    if "gradcam" in methods:
        layer, message = gradcam_layer(model, images.x[:1])
        if layer is None:
            report.skipped["gradcam"] = f"GradCAM cannot run: {message}"
        else:
            report.gradcam_layer = {"name": layer.name, "size": list(layer.size), "calls": layer.calls}
            if message:
                report.warnings.append(message)
    report.methods = [m for m in METHODS if m in methods and m not in report.skipped]

    task = progress.add_task("attribute", total=len(images.x) * len(report.methods)) if progress else None
    heats = []
    for i in range(len(images.x)):
        row, ig_delta = [], None
        for method in report.methods:
            heat, delta = explain(model, images.x[i:i + 1], targets[i], method, layer and layer.module)
            row.append(heat)
            ig_delta = delta if method == "ig" else ig_delta
            if progress:
                progress.advance(task)
        heats.append(row)
        report.images.append({
            "index": images.indices[i], "label": images.labels[i],
            "class": images.class_name(images.labels[i]), "pred": preds[i],
            "pred_class": images.class_name(preds[i]), "prob": float(probs[i, preds[i]]),
            "target": targets[i], "ig_delta": ig_delta,
        })
    titles = [TITLES[m] + (f"\n{layer.name}" if m == "gradcam" else "") for m in report.methods]
    report.figures["attributions"] = str(plots.attribution_grid(
        images.pixels, heats, column_titles=titles,
        row_titles=[f"true: {im['class']}\npred: {im['pred_class']}" for im in report.images],
        path=target.plots_dir / "attributions.png",
    ))
    return report
