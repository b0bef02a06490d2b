"""What a model may declare for the trainer (timm's convention: the model says, the trainer asks).

Every hook is optional: an nn.Module without any trains as it is.

    module.no_weight_decay() -> set of names
        On the model or on any module in it: the names (as its own named_parameters() gives them)
        of the parameters that take no weight decay, e.g. the mixing coefficients of a soft-sharing
        layer (cnnscope.zoo's SConv2d).
    model.on_progress(epoch, recipe) -> dict
        Called before every training batch with the point of training reached (`epoch` counts
        fractions: epoch + batch / batches) and the run's recipe (its `epochs`, and the fields of
        the model's own schedule): set what training drives outside the weights (egrr: recursion
        depth and gate temperature) and return it as JSON values, which checkpoints keep.
    model.load_settings(settings)
        Restore what on_progress returned (a checkpoint's, to evaluate or inspect its weights).
    model.skips_weights() -> bool
        Whether a training forward at the present settings leaves some weights out of the graph
        (egrr in its depth warm-up): data-parallel training must then look for the unused ones.
    module.fusable_chain(*tensors_and_numbers) -> tensor, with module.fused_chain = None
        On any module in the model: a static function computing, with the plain operations, a chain
        of elementwise and stencil operations of the module's forward (DivisiveNorm; egrr's gate
        mixing), which the forward calls as `self.fused_chain` instead wherever that is set. The
        trainer sets it, only while a training step runs, to a function computing the same numbers
        in fewer passes over memory (cnnscope.core.fused); the analyses see the plain operations.
"""
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups: `weight_decay` on every trainable parameter but those the model's modules
    name in no_weight_decay(), which get none (a second group, after the first)."""
    exempt = set()
    for module in model.modules():
        if hasattr(module, "no_weight_decay"):
            own = dict(module.named_parameters())
            exempt.update(id(own[name]) for name in module.no_weight_decay())
    trainable = [p for p in model.parameters() if p.requires_grad]
    free = [p for p in trainable if id(p) in exempt]
    if not free:
        return [{"params": trainable, "weight_decay": weight_decay}]
    return [{"params": [p for p in trainable if id(p) not in exempt], "weight_decay": weight_decay},
            {"params": free, "weight_decay": 0.0}]


def on_progress(model: nn.Module, epoch: float, recipe) -> dict:
    """The model's settings at `epoch` of training, applied; {} for a model without the hook."""
    return model.on_progress(epoch, recipe) if hasattr(model, "on_progress") else {}


def load_settings(model: nn.Module, settings: dict) -> None:
    if settings and hasattr(model, "load_settings"):
        model.load_settings(settings)


def skips_weights(model: nn.Module) -> bool:
    return bool(model.skips_weights()) if hasattr(model, "skips_weights") else False


def fusable_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` that declare a fusable_chain, in model.modules() order."""
    return [module for module in model.modules() if callable(getattr(module, "fusable_chain", None))]
