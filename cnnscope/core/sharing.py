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
from cnnscope.runs.inspect import Section, fmt_float

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
    target: str
    threshold: float
    banks: list
    figures: dict = field(default_factory=dict)

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

    def sections(self) -> list[Section]:
        data = self.to_json()
        out = []
        for bank in data["banks"]:
            out.append(Section(
                f"Bank {bank['name']}: |cosine similarity| of coefficient vectors "
                f"({bank['templates']} templates of {'x'.join(map(str, bank['template_shape']))})",
                ["#", "Layer", *(str(i) for i in range(len(bank["layers"])))],
                [[str(i), name, *(fmt_float(v, 2) for v in row)]
                 for i, (name, row) in enumerate(zip(bank["layers"], bank["similarity"]))],
            ))
        out.append(Section(
            f"Fold groups at threshold {self.threshold}",
            ["Bank", "Group", "Layers", "Min similarity"],
            [[bank["name"], str(g), ", ".join(group["layers"]), fmt_float(group["min_similarity"])]
             for bank in data["banks"] for g, group in enumerate(bank["groups"])],
            notes=[f"Groups: {GROUPING}."] + ([] if any(b["groups"] for b in data["banks"]) else
                                              ["No two layers of any bank reach the threshold."]),
        ))
        total = data["budget"]
        out.append(Section(
            "Sharing budget (parameters)",
            ["Bank", "Layers", "Templates", "Coefficients", "Shared total", "Unshared", "Shared/unshared"],
            [[b["name"], str(len(b["layers"])), f"{b['template_params']:,}", f"{b['coefficient_params']:,}",
              f"{b['template_params'] + b['coefficient_params']:,}", f"{b['unshared_params']:,}",
              fmt_float((b["template_params"] + b["coefficient_params"]) / b["unshared_params"])]
             for b in data["banks"]]
            + [["all", str(total["layers"]), f"{total['template_params']:,}", f"{total['coefficient_params']:,}",
                f"{total['shared_params']:,}", f"{total['unshared_params']:,}", fmt_float(total["ratio"])]],
            notes=[f"{name}: {path}" for name, path in self.figures.items()],
        ))
        return out


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
            f"{type(model).__name__} has no soft-shared layers: `cnnscope sharing` looks for modules with "
            "a 1-D `coefficients` parameter and a `bank` holding `templates` (SConv2d and TemplateBank "
            "in models/soft_sharing.py). Pass a swrn run or SPEC, e.g. "
            "`cnnscope sharing swrn --ctor depth=16 --ctor width=1`."
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


def inspect_sharing(target, threshold=0.95) -> SharingReport:
    """Coefficient similarity, fold groups and budget of every bank, with one heatmap per bank."""
    from cnnscope.render import plots

    report = SharingReport(target.label, threshold, find_banks(target.model))
    for bank in report.banks:
        report.figures[bank.name] = str(plots.similarity_heatmap(
            bank.similarity, bank.layers, path=target.plots_dir / f"sharing_{bank.name}.png",
            title=f"{target.label}: bank {bank.name} ({len(bank.layers)} layers, "
                  f"{bank.template_shape[0]} templates)",
        ))
    return report
