"""cnnscope: train compact CNNs, then inspect how they see.

The Python API: every analysis the CLI runs, on an nn.Module and tensors you already hold.

    import cnnscope
    rf = cnnscope.receptive_field(model, (3, 224, 224))
    print(cnnscope.to_markdown(rf))

Names are loaded on first use, so importing cnnscope (and `cnnscope --help`) does not import torch.
"""
import importlib

__version__ = "0.1.0"

_API = {  # public name -> module that defines it
    # receptive fields
    "receptive_field": "cnnscope.core.rf",
    "verify_receptive_field": "cnnscope.core.rf",
    "effective_receptive_field": "cnnscope.core.rf",
    # layers, parameters, MACs
    "summarize": "cnnscope.core.summary",
    # training and evaluation
    "fit": "cnnscope.core.training",
    "Callback": "cnnscope.core.callbacks",
    "evaluate": "cnnscope.core.metrics",
    # inspections
    "gate_maps": "cnnscope.core.gates",
    "soft_sharing": "cnnscope.core.sharing",
    "attribute": "cnnscope.core.attribution",
    "sanity_check": "cnnscope.core.sanity",
    # rendering any result
    "to_table": "cnnscope.render",
    "to_markdown": "cnnscope.render",
    "to_json": "cnnscope.render",
    # models, recipes and data by name (what the CLI's SPEC, MODEL and --dataset name)
    "build_model": "cnnscope.runs.spec",
    "get_recipe": "cnnscope.runs.recipes",
    "load_dataset": "cnnscope.runs.datasets",
    # errors: every one a CnnscopeError (a ValueError); the kinds say which input was wrong
    "CnnscopeError": "cnnscope.errors",
    "SpecError": "cnnscope.errors",
    "TrustError": "cnnscope.errors",
    "DataError": "cnnscope.errors",
    "RunError": "cnnscope.errors",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'cnnscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted([*globals(), *__all__])
