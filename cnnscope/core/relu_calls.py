"""A model as DeepLift and Guided Backprop need it: every ReLU application its own fresh module.

Captum's DeepLift and GuidedBackprop hook nn.ReLU MODULES, and DeepLift keeps one input/output per
module: a ReLU module called twice per forward fails ("used more than once"), a functional
`F.relu`/`torch.relu`/`x.relu()` is never hooked (silently treated as linear), and an in-place ReLU
overwrites what the hooks saved. `relu_per_call(model, x)` wraps the model so that, inside its
forward, the k-th ReLU application (module, functional, in-place or not) is performed by the k-th
of a list of fresh non-inplace nn.ReLU modules; the weights are the model's own (no copy).

Other nonlinearities are left as they are; `deeplift_problem` and `unguided_activations` say what
that means for a model (a reused MaxPool2d stops DeepLift; a SiLU or ReLU6 passes plain gradients).
"""
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cnnscope.core.probe import forward_hooks
from cnnscope.errors import CnnscopeError

RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _ReluCalls(TorchFunctionMode):
    """Routes the k-th ReLU application to relus[k]; with relus None, only counts them."""

    def __init__(self, relus=None):
        super().__init__()
        self.relus, self.count = relus, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in RELU_FUNCTIONS:
            return func(*args, **kwargs)
        self.count += 1
        if self.relus is None:
            return func(*args, **kwargs)
        if self.count > len(self.relus):
            raise CnnscopeError(
                f"The model applied more ReLUs in this forward than the {len(self.relus)} of its probe "
                "forward: DeepLift and Guided Backprop need the same ReLU calls on every input of one size."
            )
        return self.relus[self.count - 1](args[0])  # runs outside this mode: no recursion


class ReluPerCall(nn.Module):
    """`model` with its ReLU applications done by `self.relus`, one module per application."""

    def __init__(self, model: nn.Module, calls: int):
        super().__init__()
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(calls))
        # not a submodule: Captum must hook self.relus only, never the model's own ReLU modules
        self.__dict__["model"] = model

    def forward(self, x):
        with _ReluCalls(self.relus):
            return self.model(x)


def relu_per_call(model: nn.Module, x: torch.Tensor) -> ReluPerCall:
    """Wrap `model` (see the module doc); `x` is one probe input of the size to be attributed."""
    counter = _ReluCalls()
    with torch.no_grad(), counter:
        model(x)
    return ReluPerCall(model, counter.count)


def forward_calls(model: nn.Module, x: torch.Tensor, select) -> list:
    """(name, module, output) of every call of a module that select(module) picks, in one forward of `x`,
    in order; output is the shape of a tensor output, else None."""
    names = {m: name for name, m in model.named_modules() if select(m)}
    calls = []
    with forward_hooks(names, lambda m, args, out: calls.append((names[m], m, _shape(out)))), torch.no_grad():
        model(x)
    return calls


def _shape(output):
    return tuple(output.shape) if isinstance(output, torch.Tensor) else None


def deeplift_problem(model: nn.Module, x: torch.Tensor):
    """Why Captum's DeepLift cannot run on `model` (a non-ReLU nonlinearity module it hooks, used more
    than once per forward), or None."""
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    hooked = tuple(t for t in SUPPORTED_NON_LINEAR if t is not nn.ReLU)
    counts = Counter(name for name, _, _ in forward_calls(model, x, lambda m: isinstance(m, hooked)))
    reused = [f"{name} ({calls} calls)" for name, calls in counts.items() if calls > 1]
    if not reused:
        return None
    return (f"DeepLift cannot run: Captum's DeepLift keeps one input and output per nonlinearity module, and "
            f"{', '.join(reused)} run more than once per forward (ReLUs are handled; these are not). Give each "
            "call its own module in the model, or use another method.")


def unguided_activations(model: nn.Module, rule_types) -> list:
    """Class names of the model's activation modules that are not of `rule_types` (the ones a method
    has a rule for): gradients pass through them unchanged."""
    activations = {type(m).__name__ for m in model.modules()
                   if type(m).__module__ == nn.ReLU.__module__ and not isinstance(m, rule_types)}
    return sorted(activations - {"Softmax", "LogSoftmax"})


def relu_method_caveats(method: str, model: nn.Module, x: torch.Tensor) -> tuple:
    """(why `method` cannot run on `model`, or None; warnings on what it does there) for the methods
    that hook nonlinearities (deeplift, guided, guided-gradcam); (None, []) for the others."""
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    if method == "deeplift":
        problem, rule_types = deeplift_problem(model, x), tuple(SUPPORTED_NON_LINEAR)
        rule = "DeepLift has no rule for"
    elif method in ("guided", "guided-gradcam"):
        problem, rule_types, rule = None, (nn.ReLU,), "Guided Backprop guides ReLU only, not"
    else:
        return None, []
    loose = unguided_activations(model, rule_types)
    return problem, [f"{method}: {rule} {', '.join(loose)}; gradients pass through them unchanged."] if loose else []
