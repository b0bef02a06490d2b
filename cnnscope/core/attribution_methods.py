"""The attribution methods by short name: a registry of builders over Captum.

Every method works on the normalised input; baselines (IG, DeepLift, the occlusion fill) are 0,
i.e. the dataset's mean colour. A method's map is its attribution summed over the input channels,
with its sign where the method has one (`signed`). For the attributions that add up to the score
(IG, Input x Gradient, DeepLift, GradientShap, Occlusion's score drop) positive is evidence for the
class; Guided Backprop and Guided GradCAM keep the sign of a modified gradient, which is not.
`reads` says so per method.

  ig              IntegratedGradients; steps doubled from IG_MIN_STEPS until the convergence delta
                  is within `tolerance` of |F(x) - F(baseline)| (or IG_MAX_STEPS is reached)
  saliency        |gradient| (Simonyan et al.)
  smoothgrad      NoiseTunnel over Saliency: |gradient| averaged over SMOOTHGRAD_SAMPLES noisy
                  copies, noise std SMOOTHGRAD_NOISE of the input's value range
  ixg             InputXGradient
  deeplift        DeepLift (Rescale rule)
  gradshap        GradientShap, baselines: zeros and GRADSHAP_BASELINES - 1 N(0, 1) images
  guided          GuidedBackprop
  gradcam         LayerGradCam (ReLU) on a spatial layer, upsampled bilinearly to the input size
  guided-gradcam  GuidedGradCam: Guided Backprop times the upsampled GradCAM map
  occlusion       Occlusion: the drop of the class score when an OCCLUSION_WINDOW square
                  (stride OCCLUSION_STRIDE) is set to the baseline
  edges           Sobel edge magnitude of the input: no model at all, a CONTROL for the sanity check
                  (a method that ignores the weights must be flagged)

Random draws (noise, GradientShap's baselines) come from a generator seeded with SEED on every
call, so a map changes only when the model or the image does.
"""
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from cnnscope.core.relu_calls import relu_per_call

IG_MIN_STEPS = 32
IG_MAX_STEPS = 512
IG_TOLERANCE = 0.05
IG_INTERNAL_BATCH = 16
SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_NOISE = 0.15
GRADSHAP_BASELINES = 8
GRADSHAP_SAMPLES = 16
OCCLUSION_WINDOW = 8
OCCLUSION_STRIDE = 4
PERTURBATION_BATCH = 16
SEED = 0


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    signed: bool  # keeps a sign: drawn with a diverging colour map centred at zero
    build: Callable  # (model, layer, x, tolerance) -> run(x, target) -> (attr (1, C, H, W), IGConvergence | None)
    layer: bool = False  # attributes through a spatial layer (GradCAM family; see attribution.pick_layer)
    model_free: bool = False  # a control that never looks at the model
    reads: str = ""  # what the map's values mean, as a figure's legend says it


@dataclass
class IGConvergence:
    """How Integrated Gradients converged on one image."""
    steps: int
    delta: float  # sum of attributions - (F(x) - F(baseline))
    gap: float  # F(x) - F(baseline) of the target class
    tolerance: float

    @property
    def relative_delta(self) -> float:
        return abs(self.delta) / max(abs(self.gap), 1e-12)

    @property
    def converged(self) -> bool:
        return self.relative_delta <= self.tolerance

    def to_json(self) -> dict:
        return {"steps": self.steps, "delta": self.delta, "gap": self.gap,
                "relative_delta": self.relative_delta, "converged": self.converged}


def integrated_gradients(model, x, target, tolerance=IG_TOLERANCE):
    """IG of `x` (1, C, H, W) for class `target` with the fewest doubled step counts (from
    IG_MIN_STEPS, at most IG_MAX_STEPS) whose |delta| <= tolerance * |F(x) - F(0)|."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(model)
    with torch.no_grad():
        scores = model(torch.cat([x, torch.zeros_like(x)]))[:, target]
    gap, steps = float(scores[0] - scores[1]), IG_MIN_STEPS
    while True:
        attr, delta = ig.attribute(x, target=target, n_steps=steps, internal_batch_size=IG_INTERNAL_BATCH,
                                   return_convergence_delta=True)
        result = IGConvergence(steps, float(delta.item()), gap, tolerance)
        if result.converged or steps * 2 > IG_MAX_STEPS:
            return attr, result
        steps *= 2


def _plain(run):
    """A builder whose run(x, target) returns the attribution alone."""
    return lambda model, layer, x, tolerance: lambda x, target: (run(model, layer, x, target), None)


def _generator():
    return torch.Generator().manual_seed(SEED)


def _smoothgrad(model, layer, x, target):
    from captum.attr import NoiseTunnel, Saliency

    with torch.random.fork_rng():  # NoiseTunnel draws from the global generator
        torch.manual_seed(SEED)
        return NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES, nt_samples_batch_size=PERTURBATION_BATCH,
            stdevs=SMOOTHGRAD_NOISE * float(x.detach().max() - x.detach().min()), target=target)


def _gradshap(model, layer, x, target):
    from captum.attr import GradientShap

    noise = torch.randn((GRADSHAP_BASELINES - 1, *x.shape[1:]), generator=_generator()).to(x)
    baselines = torch.cat([torch.zeros_like(x), noise])
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return GradientShap(model).attribute(x, baselines, n_samples=GRADSHAP_SAMPLES, target=target)


def _gradcam(model, layer, x, target):
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")


def _occlusion(model, layer, x, target):
    from captum.attr import Occlusion

    channels = x.shape[1]
    return Occlusion(model).attribute(
        x, target=target, sliding_window_shapes=(channels, OCCLUSION_WINDOW, OCCLUSION_WINDOW),
        strides=(channels, OCCLUSION_STRIDE, OCCLUSION_STRIDE), baselines=0.0,
        perturbations_per_eval=PERTURBATION_BATCH)


def _captum_class(name):
    import captum.attr
    return getattr(captum.attr, name)


def _relu_hooked(name, layered=False, **options):
    """A builder for the Captum class `name` that hooks ReLU modules: it runs on relu_per_call(model, x)."""
    def build(model, layer, x, tolerance):
        method = _captum_class(name)(relu_per_call(model, x), *([layer] if layered else []))

        def run(x, target):
            with warnings.catch_warnings():  # Captum says on every call that it sets hooks on ReLUs
                warnings.filterwarnings("ignore", message="Setting (forward, )?backward hooks", category=UserWarning)
                return method.attribute(x, target=target, **options), None
        return run
    return build


def _captum(name):
    """A builder for the Captum class `name` whose attribute(x, target=) needs nothing else."""
    return _plain(lambda model, layer, x, target: _captum_class(name)(model).attribute(x, target=target))


def _edges(model, layer, x, target):
    """Sobel gradient magnitude of the channel mean: the model-free control."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1)
    grey = x.detach().mean(1, keepdim=True)
    gx, gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels).unbind(1)
    return (gx ** 2 + gy ** 2).sqrt().unsqueeze(1)


_EVIDENCE = "red: evidence for the class, blue: against"  # true of a signed attribution (completeness)
METHODS = {m.name: m for m in (
    Method("ig", "Integrated Gradients", True,
           lambda model, layer, x, tolerance: lambda x, target: integrated_gradients(model, x, target, tolerance),
           reads=f"{_EVIDENCE} (vs the mean-colour baseline)"),
    Method("saliency", "Saliency", False, _captum("Saliency"), reads="|gradient|: how strongly the pixel moves the score"),
    Method("smoothgrad", "SmoothGrad", False, _plain(_smoothgrad), reads="|gradient| averaged over noisy copies"),
    Method("ixg", "Input x Gradient", True, _captum("InputXGradient"), reads=_EVIDENCE),
    Method("deeplift", "DeepLift", True, _relu_hooked("DeepLift"), reads=f"{_EVIDENCE} (vs the baseline)"),
    Method("gradshap", "GradientShap", True, _plain(_gradshap), reads=f"{_EVIDENCE} (expected over baselines)"),
    Method("guided", "Guided Backprop", True, _relu_hooked("GuidedBackprop"),
           reads="sign of a modified gradient: edges the score responds to, not evidence for or against"),
    Method("gradcam", "GradCAM", False, _plain(_gradcam), layer=True,
           reads="where the layer's features raise the score (ReLU, upsampled)"),
    Method("guided-gradcam", "Guided GradCAM", True,
           _relu_hooked("GuidedGradCam", layered=True, interpolate_mode="bilinear"), layer=True,
           reads="Guided Backprop x GradCAM: sign of a modified gradient, not evidence"),
    Method("occlusion", "Occlusion", True, _plain(_occlusion),
           reads="red: covering it lowers the score (evidence for the class), blue: raises it"),
    Method("edges", "Edges (control)", False, _plain(_edges), model_free=True,
           reads="Sobel edge strength of the image: no model at all"),
)}
DEFAULT_METHODS = ("ig", "saliency", "gradcam", "occlusion")


def method(name: str) -> Method:
    """The Method called `name`; unknown names are a ValueError naming the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; one of {', '.join(METHODS)}")
    return METHODS[name]


def reduce_channels(attr: torch.Tensor) -> torch.Tensor:
    """(C, H, W) attribution -> (H, W) map: the sum over channels (keeps IG's completeness)."""
    return attr.detach().sum(0)

