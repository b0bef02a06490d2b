"""Attribution methods, their figure, Integrated Gradients' convergence, the layer choice and the sanity
check (model-parameter randomisation), on tiny models with known answers.

Known answers: F(x) - F(0) of a hand-built step model (IG completeness), DeepLift's summation to
delta on a ReLU net, Captum run directly on a model with one ReLU module per call (what the ReLU
rewiring must reproduce), Spearman's rho with ties worked out by hand, and a model-free control
whose maps cannot change when the weights do.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnscope import render
from cnnscope.cli import cli
from cnnscope.cli.inspect import ATTRIBUTION_METHODS
from cnnscope.core import attribution, attribution_methods, sanity
from cnnscope.core.attribution_methods import METHODS
from cnnscope.errors import CnnscopeError
from cnnscope.render import attribution_plots
from cnnscope.runs.inspect import Target, inspect_attributions
from test_inspect import PlainCNN, TiedCNN, probe_images


class StepModel(nn.Module):
    """Two logits, tanh(k (mean(x) - 0.5)) and its negative: on IG's path from 0 to a ones image the
    score steps from -1 to 1 halfway, so F(x) - F(0) = 2 tanh(k / 2) (= 2 to float precision at k = 100)."""

    def __init__(self, k=100.0):
        super().__init__()
        self.k = k

    def forward(self, x):
        h = torch.tanh(self.k * (x.mean((1, 2, 3)) - 0.5))
        return torch.stack([h, -h], 1)


class ReluNet(nn.Module):
    """conv-relu-conv-relu-linear; `relus` says how the ReLUs are applied: one module per call
    ("modules"), one in-place module called twice ("reused") or F.relu in forward ("functional")."""

    def __init__(self, relus="modules"):
        super().__init__()
        self.relus = relus
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.act1, self.act2 = (nn.ReLU(), nn.ReLU()) if relus == "modules" else (nn.ReLU(inplace=True),) * 2

    def forward(self, x):
        act = (lambda t, module: F.relu(t)) if self.relus == "functional" else (lambda t, module: module(t))
        x = act(self.conv2(act(self.conv1(x), self.act1)), self.act2)
        return self.fc(x.mean((2, 3)))


def relu_nets():
    torch.manual_seed(0)
    reference = ReluNet("modules").eval()
    others = [ReluNet(kind).eval() for kind in ("reused", "functional")]
    for net in others:
        net.load_state_dict(reference.state_dict())
    return reference, others


def test_the_cli_offers_every_registered_method():
    assert ATTRIBUTION_METHODS == tuple(METHODS)
    assert set(attribution_methods.DEFAULT_METHODS) <= set(METHODS)


# ---- Integrated Gradients' convergence ---------------------------------------------------------

def test_integrated_gradients_raises_its_steps_until_the_delta_is_within_the_tolerance():
    x = torch.ones(1, 3, 8, 8)
    heat, ig = attribution.explain(StepModel(), x, 0, "ig", tolerance=0.05)
    assert ig.gap == pytest.approx(2.0, abs=1e-6)  # by hand: tanh(50) - tanh(-50)
    assert ig.steps == 128 and ig.converged and ig.relative_delta <= 0.05
    # completeness, checked against the hand-derived gap rather than Captum's own delta
    assert abs(heat.sum() - 2.0) <= 0.05 * 2.0
    # 64 steps were not enough: the doubling did not stop early
    _, fewer = attribution.explain(StepModel(), x, 0, "ig", tolerance=1.0)
    assert fewer.steps == 32 and fewer.relative_delta > 0.05


def test_integrated_gradients_says_when_the_tolerance_was_not_reached(monkeypatch):
    monkeypatch.setattr(attribution_methods, "IG_MAX_STEPS", 64)
    report = attribution.attribute(StepModel(), torch.ones(1, 3, 8, 8), methods=("ig",), ig_tolerance=0.05)
    (ig,) = report.ig
    assert ig.steps == 64 and not ig.converged
    image = report.to_json()["images"][0]
    assert image["ig_steps"] == 64 and image["ig_converged"] is False
    assert "did not reach the tolerance" in report.warnings[0] and "image 0" in report.warnings[0]


# ---- methods that hook ReLUs ---------------------------------------------------------------------

@pytest.mark.parametrize("name, captum_class", [("deeplift", "DeepLift"), ("guided", "GuidedBackprop")])
def test_relu_methods_handle_reused_inplace_and_functional_relus(name, captum_class):
    import captum.attr

    reference, others = relu_nets()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = getattr(captum.attr, captum_class)(reference).attribute(x.clone().requires_grad_(True), target=1)
    for net in others:
        report = attribution.attribute(net, x, targets=[1, 1], methods=(name,))
        assert report.skipped == {} and report.warnings == []
        np.testing.assert_allclose(report.maps[:, 0], expected.detach().sum(1).numpy(), rtol=1e-4, atol=1e-7)
    if name == "deeplift":  # the Rescale rule sums to F(x) - F(0) exactly on a ReLU net
        with torch.no_grad():
            gap = (reference(x) - reference(torch.zeros_like(x)))[:, 1]
        np.testing.assert_allclose(report.maps[:, 0].sum((1, 2)), gap.numpy(), rtol=1e-4, atol=1e-6)


def test_deeplift_refuses_a_reused_max_pool_and_warns_of_activations_without_a_rule():
    class ReusedPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.act, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.SiLU(), \
                nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.pool(self.pool(self.act(self.conv(x)))).mean((2, 3)))

    report = attribution.attribute(ReusedPool().eval(), torch.randn(1, 3, 8, 8), methods=("deeplift", "guided"))
    assert report.methods == ["guided"]
    assert "pool (2 calls) run more than once per forward" in report.skipped["deeplift"]
    assert report.warnings == ["deeplift: DeepLift has no rule for SiLU; gradients pass through them unchanged.",
                               "guided: Guided Backprop guides ReLU only, not SiLU; gradients pass through them "
                               "unchanged."]


def test_every_method_keeps_its_sign_convention():
    torch.manual_seed(0)
    report = attribution.attribute(PlainCNN().eval(), torch.randn(2, 3, 16, 16), methods=list(METHODS))
    assert report.methods == list(METHODS) and report.skipped == {}
    for name in report.methods:
        maps = report.method_map(name)
        assert maps.shape == (2, 16, 16) and np.abs(maps).max() > 0
        if METHODS[name].signed:
            assert maps.min() < 0 < maps.max(), name
        else:
            assert maps.min() >= 0, name


# ---- the layer of GradCAM ------------------------------------------------------------------------

def test_a_named_layer_is_used_and_a_wrong_one_names_the_candidates():
    torch.manual_seed(0)
    model, x = PlainCNN().eval(), torch.randn(1, 3, 16, 16)
    report = attribution.attribute(model, x, methods=("gradcam",), layer="features.2")
    assert report.gradcam_layer == {"name": "features.2", "size": [8, 8], "calls": 1, "chosen": "given"}
    with pytest.raises(CnnscopeError, match=r"no layer 'features\.9'.*features\.0 \(16x16\), features\.2 \(8x8\), "
                                            r"features\.4 \(4x4\)\.$"):
        attribution.attribute(model, x, methods=("gradcam",), layer="features.9")
    unused = attribution.attribute(model, x, methods=("saliency",), layer="features.2")
    assert unused.gradcam_layer["name"] == "features.2"
    assert unused.warnings == ["The layer features.2 is for gradcam, guided-gradcam, and none of them ran."]
    with pytest.raises(CnnscopeError, match="Layer squeeze of PlainCNN gives a tensor of shape"):
        attribution.attribute(model, x, methods=("gradcam",), layer="squeeze")
    with pytest.raises(CnnscopeError, match="Layer tied of TiedCNN runs 3 times per forward"):
        attribution.attribute(TiedCNN(), x, methods=("gradcam",), layer="tied")


def test_list_layers_gives_every_conv_with_its_output_size():
    layers = attribution.list_layers(PlainCNN().eval(), torch.zeros(1, 3, 16, 16)).layers
    assert [(l["name"], l["size"], l["calls"], l["usable"], l["default"]) for l in layers] == [
        ("features.0", [4, 16, 16], 1, True, False), ("features.2", [8, 8, 8], 1, True, False),
        ("features.4", [8, 4, 4], 1, True, True), ("squeeze", [8, 1, 1], 1, False, False)]
    tied = attribution.list_layers(TiedCNN(), torch.zeros(1, 3, 16, 16)).layers
    assert [(l["name"], l["calls"], l["usable"], l["default"]) for l in tied] == [
        ("stem", 1, True, True), ("tied", 3, False, False)]


# ---- the figure ---------------------------------------------------------------------------------

def test_attribution_figure_has_a_colour_bar_per_method_and_signed_scales(tmp_path):
    torch.manual_seed(0)
    images = probe_images(n=2)
    report = inspect_attributions(Target(PlainCNN().eval(), "plain", tmp_path), images,
                                  methods=("ig", "saliency", "gradcam"))
    saved = np.load(report.figures["maps"])
    np.testing.assert_array_equal(saved["ig"], report.method_map("ig"))
    assert saved["ig"].min() < 0 < saved["ig"].max()  # the sign is kept
    figure = attribution_plots.attribution_figure(
        images.pixels, report.maps, row_titles=["a", "b"], scale="method",
        methods=[(METHODS[m].title, METHODS[m].signed, METHODS[m].reads) for m in report.methods])
    panels = [ax for ax in figure.axes if ax.images]  # row by row: image, ig, saliency, gradcam
    columns = [[ax.images[0] for ax in panels[c::4]] for c in range(4)]  # each map's own image: its scale
    colour_bars = [im.colorbar for column in columns for im in column if im.colorbar is not None]
    assert len(colour_bars) == 3 and len(figure.axes) == len(panels) + 3  # one colour bar per method
    for column, name, bar in zip(columns[1:], report.methods, colour_bars):
        assert {id(im.norm) for im in column} == {id(bar.norm)}, f"{name}: one scale for all images"
        norm, data = column[0].norm, np.stack([im.get_array() for im in column])
        top = np.percentile(np.abs(report.method_map(name)), attribution_plots.SCALE_PERCENTILE)
        if METHODS[name].signed:
            assert norm.vcenter == 0 and norm.vmin == pytest.approx(-top) and norm.vmax == pytest.approx(top)
            assert column[0].get_cmap().name == "RdBu_r" and data.min() < 0
        else:
            assert (norm.vmin, column[0].get_cmap().name) == (0, "magma") and norm.vmax == pytest.approx(top)


# ---- the sanity check -----------------------------------------------------------------------------

def test_spearman_with_ties_by_hand():
    # ranks (0-based, ties averaged): a -> 0, 1.5, 1.5, 3; b -> 0, 2, 1, 3: rho = 4.5 / sqrt(4.5 * 5)
    assert sanity.spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 4])) == pytest.approx(4.5 / np.sqrt(22.5))
    assert sanity.spearman(np.arange(5.0), -np.arange(5.0) ** 3) == pytest.approx(-1.0)
    assert sanity.spearman(np.ones(4), np.arange(4.0)) == 0.0


def test_sanity_check_flags_a_method_that_ignores_the_weights():
    torch.manual_seed(0)
    model = PlainCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = sanity.sanity_check(model, probe_images(n=2).x, methods=("saliency", "edges"))
    assert report.stages == [["fc"], ["squeeze"], ["features.4"], ["features.2"], ["features.0"]]
    ranks = report.mean_rank()
    assert ranks.shape == (2, 6) and (ranks[:, 0] == 1.0).all()
    np.testing.assert_array_equal(report.rank_abs[1], 1.0)  # the edge map never changes
    assert ranks[0, -1] < 0.5  # saliency's maps lose their ranking with the weights
    assert report.flagged() == ["edges"]
    data = report.to_json()
    assert [(m["name"], m["flagged"], m["control"]) for m in data["methods"]] == [
        ("saliency", False, False), ("edges", True, True)]
    assert sorted(report.snapshots) == [0, 2, 3, 5]
    markdown = render.to_markdown(report)
    assert ("| Method | original | 1 random | 2 random | 3 random | 5 random | Signed, all random | "
            "At or below 0.5 from | Verdict |") in markdown
    assert ("| Edges (control) | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | never | "
            "FLAGGED (expected: control) |") in markdown
    below = report.first_below()[0]
    assert ranks[0, below] <= 0.5 < ranks[0, below - 1] and report.first_below()[1] is None
    assert data["methods"][0]["first_below_threshold"] == {
        "stage": below, "layers_random": below, "layer": report.stages[below - 1][0]}
    assert f"| Saliency | 1.000 | {ranks[0, 1]:.3f} |" in markdown and markdown.count("FLAGGED (expected") == 1
    for key, value in model.state_dict().items():  # the model itself is untouched
        torch.testing.assert_close(value, before[key])


def test_sanity_curves_mark_the_flagged_methods_and_show_every_value():
    figure = attribution_plots.sanity_curves(
        ["original", "fc", "conv"], {"Saliency": [1.0, 0.2, -0.6], "Edges (control)": [1.0, 1.0, 1.0]},
        flagged=["Edges (control)"], controls=["Edges (control)"], threshold=0.5)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Saliency", "Edges (control) - FLAGGED"]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [1.0, 0.2, -0.6])
    assert ax.get_ylim()[0] < -0.6 and [t.get_text() for t in ax.get_xticklabels()] == ["original", "fc", "conv"]


def test_cli_sanity_and_list_layers(runner, tmp_path):
    common = ["attribute", "basic", "--n", "1", "--data-dir", str(tmp_path), "--out", str(tmp_path / "plots")]
    result = runner.invoke(cli, [*common, "--sanity", "--method", "saliency", "--method", "edges",
                                 "--sanity-stages", "3", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["flagged"] == ["edges"] and len(data["stages"]) == 3
    assert data["stages"][-1]["layers_random"] == 23 and data["stages"][0]["randomised"][0] == "fc"
    assert set(data["figures"]) == {"sanity", "sanity_maps"} and set(data["attribution"]["figures"]) == {
        "attributions", "maps"}
    listed = runner.invoke(cli, [*common, "--list-layers", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    layers = {l["name"]: l for l in json.loads(listed.stdout)["layers"]}
    assert layers["c4b.conv"]["size"] == [128, 4, 4] and layers["c4b.conv"]["default"]
    assert layers["c1a.conv"]["size"] == [24, 32, 32]
