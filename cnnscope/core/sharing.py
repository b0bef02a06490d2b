"""Soft parameter sharing (Savarese & Maire, ICLR 2019): which layers of a bank learned the same mix.

A TemplateBank holds T templates; every SConv2d that uses it owns a coefficient vector alpha (T,)
and convolves with sum_t alpha_t * template_t. Two layers whose coefficient vectors are parallel
apply the same filter up to a scale, so the network could be folded into a recurrence there.

Layers are found by duck typing, so a user model with its own copy of the classes works too: a
soft-shared layer is a module with a 1-D parameter `coefficients` and a `bank` attribute whose
parameter `templates` has shape (T, out, in, k, k).

Fold groups: the connected components (of two or more layers) of the graph that links two layers
of a bank when their absolute cosine similarity is at least the threshold. A component can be a
chain (A~B, B~C, A not ~C); each group reports its smallest pairwise similarity, which is at least
the threshold exactly when the group is a clique.
"""
from dataclasses import dataclass, field

import numpy as np

from cnnscope.errors import CnnscopeError

GROUPING = ("connected components (>= 2 layers) of the graph linking two layers of a bank when "
            "|cosine similarity| >= threshold")


@dataclass
class Bank:
    name: str  # qualified module path of the TemplateBank
    template_shape: tuple  # (T, out, in, k, k)
    layers: list  # qualified names of the SConv2d modules using it, in module order
    coefficients: np.ndarray  # (layers, T)

    @property
    def similarity(self) -> np.ndarray:
        return abs_cosine(self.coefficients)

    @property
    def template_params(self) -> int:
        return int(np.prod(self.template_shape))

    @property
    def coefficient_params(self) -> int:
        return int(self.coefficients.size)

    @property
    def unshared_params(self) -> int:
        """One full conv weight (out, in, k, k) per layer: the network without sharing."""
        return len(self.layers) * int(np.prod(self.template_shape[1:]))


@dataclass
class SharingReport:
    """The soft-shared banks of a model and the threshold of their fold groups; `figures` names the
    figures a caller drew from it (name -> path)."""
    threshold: float
    banks: list  # Bank in module order
    target: str = "model"  # what was inspected: a model's class name, a run folder, "<name> (untrained)"
    figures: dict = field(default_factory=dict)
    model: str = ""  # the model's class name
    weights: str = ""  # "trained" or "untrained" where the caller knows; "" where not

    def to_json(self) -> dict:
        banks = []
        for bank in self.banks:
            similarity = bank.similarity
            banks.append({
                "name": bank.name,
                "templates": bank.template_shape[0],
                "template_shape": list(bank.template_shape[1:]),
                "layers": bank.layers,
                "similarity": similarity.round(6).tolist(),
                "groups": [{"layers": [bank.layers[i] for i in group],
                            "min_similarity": round(float(min_pairwise(similarity, group)), 6)}
                           for group in fold_groups(similarity, self.threshold)],
                "template_params": bank.template_params,
                "coefficient_params": bank.coefficient_params,
                "unshared_params": bank.unshared_params,
            })
        return {
            "target": self.target,
            "threshold": self.threshold,
            "grouping": GROUPING,
            "banks": banks,
            "budget": budget(self.banks),
            "figures": self.figures,
        }


def abs_cosine(coefficients: np.ndarray) -> np.ndarray:
    """(L, T) -> (L, L) |cos| between rows; a zero row has similarity 0 with every row, itself too."""
    c = np.asarray(coefficients, dtype=np.float64)
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    unit = np.divide(c, norms, out=np.zeros_like(c), where=norms > 0)
    return np.clip(np.abs(unit @ unit.T), 0.0, 1.0)


def fold_groups(similarity: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of size >= 2 of the graph {i~j : similarity[i, j] >= threshold, i != j},
    each sorted, ordered by their first layer."""
    n = len(similarity)
    component = list(range(n))  # union-find parents

    def root(i):
        while component[i] != i:
            component[i] = component[component[i]]
            i = component[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if similarity[i, j] >= threshold:
                component[root(j)] = root(i)
    members = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def min_pairwise(similarity: np.ndarray, group: list[int]) -> float:
    return min(similarity[i, j] for i in group for j in group if i < j)


def budget(banks) -> dict:
    template = sum(b.template_params for b in banks)
    coefficient = sum(b.coefficient_params for b in banks)
    unshared = sum(b.unshared_params for b in banks)
    return {
        "banks": len(banks),
        "layers": sum(len(b.layers) for b in banks),
        "template_params": template,
        "coefficient_params": coefficient,
        "shared_params": template + coefficient,
        "unshared_params": unshared,
        "ratio": (template + coefficient) / unshared,
    }


def is_shared_layer(module) -> bool:
    coefficients = getattr(module, "coefficients", None)
    templates = getattr(getattr(module, "bank", None), "templates", None)
    return (coefficients is not None and coefficients.dim() == 1 and templates is not None
            and templates.dim() >= 2 and templates.shape[0] == coefficients.shape[0])


def find_banks(model) -> list[Bank]:
    """Group the soft-shared layers of `model` by their bank object, in module order."""
    module_names = {id(m): name for name, m in model.named_modules()}
    by_bank = {}
    for name, module in model.named_modules():
        if is_shared_layer(module):
            by_bank.setdefault(id(module.bank), (module.bank, []))[1].append((name, module))
    if not by_bank:
        raise CnnscopeError(
            f"{type(model).__name__} has no soft-shared layers: the sharing analysis looks for modules with "
            "a 1-D `coefficients` parameter and a `bank` holding `templates` (SConv2d and TemplateBank "
            "in models/soft_sharing.py). Inspect a swrn model deep enough to share, e.g. swrn with "
            "depth=16 and width=1."
        )
    banks = []
    for index, (bank, layers) in enumerate(by_bank.values()):
        banks.append(Bank(
            name=module_names.get(id(bank)) or f"bank{index}",
            template_shape=tuple(bank.templates.shape),
            layers=[name for name, _ in layers],
            coefficients=np.stack([m.coefficients.detach().double().cpu().numpy() for _, m in layers]),
        ))
    return banks


def soft_sharing(model, threshold=0.95) -> SharingReport:
    """Coefficient similarity, fold groups at `threshold` and parameter budget of every bank of `model`."""
    return SharingReport(threshold, find_banks(model), target=type(model).__name__, model=type(model).__name__)
