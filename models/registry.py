"""The registry: name -> builder, filled by the family modules as they are imported."""
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    dataset: str  # the seed's default dataset
    seed_doc: str  # the title of the paper or repository the design comes from (its seed document)
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, *, dataset: str, seed_doc: str, description: str = ""):
    """Decorator: register a builder (a function or class returning an nn.Module) under `name`."""

    def deco(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        doc = description or ((builder.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = ModelEntry(name, builder, dataset, seed_doc, doc)
        return builder

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def build(name: str, **kw) -> nn.Module:
    return get_entry(name).builder(**kw)

