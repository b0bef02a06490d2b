"""Inspections: entropy gates, soft-sharing similarity, Captum attributions (cnnscope.core), their figures
(cnnscope.runs.inspect) and CLI.

Known answers: coefficient similarities and fold groups computed by hand, the orthogonal init of a
fresh SWRN, a gate head set by hand to follow local variance, GradCAM maps at the input's size.
"""
import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn as nn

from cnnscope.render import plots
from cnnscope.runs.checkpoint import save_checkpoint
from cnnscope.cli import cli
from cnnscope.errors import CnnscopeError
from cnnscope.runs.inspect import (
    ProbeImages, Target, inspect_attributions, inspect_gates, inspect_sharing, load_target, load_test_images,
)
from cnnscope.core import attribution, gates, sharing
from cnnscope.zoo.ectied import ECTiedNet
from cnnscope.zoo.egrr import EGRRNet
from cnnscope.zoo.soft_sharing import SWRN, SConv2d, TemplateBank

TINY_EGRR = {"num_classes": 10, "stem_channels": 8, "stages": ((8, 2, 1), (16, 2, 2))}
TINY_EGRR_CTOR = ["--ctor", "num_classes=10", "--ctor", "stem_channels=8",
                  "--ctor", "stages=((8,2,1),(16,2,2))"]


def png(path):
    """(width, height, pixel variance) of a PNG."""
    pixels = mpimg.imread(path)
    return pixels.shape[1], pixels.shape[0], float(pixels[..., :3].var())


def assert_grows(delta_px, panels, panel_inches):
    """A figure grew by `panels` panels of about `panel_inches` at 110 dpi (margins squeeze them)."""
    assert 0.6 * panels * panel_inches * 110 <= delta_px <= 1.15 * panels * panel_inches * 110


def probe_images(n=2, size=(16, 16), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, *size, generator=g)
    labels = list(range(n))
    return ProbeImages(x=(pixels - 0.5) / 0.25, pixels=pixels.permute(0, 2, 3, 1).numpy(), labels=labels,
                       indices=list(range(n)), classes=[f"c{i}" for i in range(classes)], dataset="probe")


# ---- sharing --------------------------------------------------------------------------------------

# Coefficient rows (T = 3) and their |cosine similarity|, worked out by hand.
HAND_ROWS = [[1, 0, 0], [-2, 0, 0], [0, 1, 0], [0, -3, 4], [1, 1, 0]]
R2 = 1 / math.sqrt(2)
HAND_SIMILARITY = [
    [1, 1, 0, 0, R2],
    [1, 1, 0, 0, R2],
    [0, 0, 1, 3 / 5, R2],
    [0, 0, 3 / 5, 1, 3 / (5 * math.sqrt(2))],
    [R2, R2, R2, 3 / (5 * math.sqrt(2)), 1],
]


class HandSetBank(nn.Module):
    def __init__(self, rows):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bank = TemplateBank(num_templates=3, in_planes=4, out_planes=4, kernel_size=3)
        self.convs = nn.ModuleList(SConv2d(self.bank) for _ in rows)
        with torch.no_grad():
            for conv, row in zip(self.convs, rows):
                conv.coefficients.copy_(torch.tensor(row, dtype=torch.float32))

    def forward(self, x):
        x = self.stem(x)
        for conv in self.convs:
            x = conv(x)
        return x.mean((2, 3))


def test_similarity_and_fold_groups_of_hand_set_coefficients():
    (bank,) = sharing.find_banks(HandSetBank(HAND_ROWS))
    assert bank.name == "bank"
    assert bank.layers == [f"convs.{i}" for i in range(5)]
    np.testing.assert_allclose(bank.similarity, HAND_SIMILARITY, atol=1e-7)
    # threshold 0.95: only the parallel pair (a, -2a); 0.7: a~b, a~e, b~e, c~e chain into one
    # component that is not a clique (a and c are orthogonal); 0.59 adds c~d (0.6).
    assert sharing.fold_groups(bank.similarity, 0.95) == [[0, 1]]
    assert sharing.fold_groups(bank.similarity, 0.7) == [[0, 1, 2, 4]]
    assert sharing.min_pairwise(bank.similarity, [0, 1, 2, 4]) == pytest.approx(0.0, abs=1e-7)
    assert sharing.fold_groups(bank.similarity, 0.59) == [[0, 1, 2, 3, 4]]
    assert sharing.fold_groups(bank.similarity, 1.01) == []


def test_zero_coefficients_have_zero_similarity():
    np.testing.assert_array_equal(sharing.abs_cosine(np.array([[0.0, 0.0], [3.0, 0.0]])), [[0, 0], [0, 1]])


def test_sharing_budget_and_report(tmp_path):
    model = HandSetBank(HAND_ROWS)
    report = inspect_sharing(Target(model, "hand", tmp_path), threshold=0.7)
    data = report.to_json()
    (bank,) = data["banks"]
    assert (bank["templates"], bank["template_shape"]) == (3, [4, 4, 3, 3])
    assert bank["groups"] == [{"layers": ["convs.0", "convs.1", "convs.2", "convs.4"], "min_similarity": 0.0}]
    assert (bank["template_params"], bank["coefficient_params"], bank["unshared_params"]) == (432, 15, 720)
    assert data["budget"] == {"banks": 1, "layers": 5, "template_params": 432, "coefficient_params": 15,
                              "shared_params": 447, "unshared_params": 720, "ratio": 447 / 720}
    width, height, variance = png(tmp_path / "sharing_bank.png")
    assert variance > 0
    # the heatmap grows with the number of layers
    small = inspect_sharing(Target(HandSetBank(HAND_ROWS[:2]), "small", tmp_path / "s"))
    small_width, small_height, _ = png(small.figures["bank"])
    assert width > small_width + 100 and height > small_height + 100


def test_fresh_swrn_coefficients_are_orthogonal():
    # depth 22: 3 blocks per stage, 2 soft-shared blocks = 4 SConv2d per bank; T = 4 >= 4 rows
    banks = sharing.find_banks(SWRN(depth=22, width=1, num_templates=4))
    assert [b.name for b in banks] == ["stage1.bank", "stage2.bank", "stage3.bank"]
    assert banks[0].layers == ["stage1.blocks.1.conv1", "stage1.blocks.1.conv2",
                               "stage1.blocks.2.conv1", "stage1.blocks.2.conv2"]
    for bank in banks:
        np.testing.assert_allclose(bank.similarity, np.eye(4), atol=1e-5)
        assert sharing.fold_groups(bank.similarity, 0.95) == []
    assert [b.template_params for b in banks] == [4 * 16 * 16 * 9, 4 * 32 * 32 * 9, 4 * 64 * 64 * 9]
    assert [b.unshared_params for b in banks] == [4 * 16 * 16 * 9, 4 * 32 * 32 * 9, 4 * 64 * 64 * 9]


def test_model_without_banks_is_a_clear_error():
    with pytest.raises(CnnscopeError, match="no soft-shared layers"):
        sharing.find_banks(nn.Sequential(nn.Conv2d(3, 4, 3)))


# ---- gates ----------------------------------------------------------------------------------------

def hand_set_gate_net():
    """One stage, one step; the stem copies input channel 0 to all 4 channels and the gate's head
    raises the logit of d=4 with the summed local variance: logits (0, 0, 50 * sum_c V_c - 1)."""
    net = EGRRNet(num_classes=2, stem_channels=4, stages=((4, 1, 1),)).eval()
    with torch.no_grad():
        stem = net.stem[0].weight
        stem.zero_()
        stem[:, 0, 1, 1] = 1.0
        first, _, last = net.stages[0].gate.head
        first.weight.fill_(1.0)
        first.bias.zero_()
        last.weight.zero_()
        last.bias.zero_()
        last.weight[2, 0] = 50.0
        last.bias[2] = -1.0
    return net


def test_hand_set_gate_picks_dilation_4_on_texture_only():
    x = torch.full((1, 3, 16, 16), 0.5)
    x[..., :8] = (torch.arange(16).view(-1, 1) + torch.arange(8)).remainder(2).float()  # checkerboard
    (step,) = gates.record_gate_steps(hand_set_gate_net(), x)
    probs = step.probs[0]
    textured, flat = probs[:, :, :7], probs[:, :, 10:]  # away from the seam (stem and 3x3 windows)
    assert (textured.argmax(0) == 2).all() and textured[2].min() > 0.99
    # zero variance: logits (0, 0, -1), so P(d=4) = e^-1 / (2 + e^-1) everywhere
    np.testing.assert_allclose(flat[2], math.exp(-1) / (2 + math.exp(-1)), rtol=1e-5)
    assert (flat.argmax(0) != 2).all()
    report = gates.GateReport((1, 2, 4), [step])
    assert report.variance_corr([step]) > 0.8


def test_gate_probabilities_and_shares_sum_to_one(tmp_path):
    torch.manual_seed(0)
    model = EGRRNet(**TINY_EGRR).eval()
    images = probe_images(n=3)
    report = inspect_gates(Target(model, "tiny", tmp_path), images)
    assert [(s.stage, s.step, s.probs.shape) for s in report.steps] == [
        (0, 0, (3, 3, 16, 16)), (0, 1, (3, 3, 16, 16)), (1, 0, (3, 3, 8, 8)), (1, 1, (3, 3, 8, 8))]
    for step in report.steps:
        np.testing.assert_allclose(step.probs.sum(axis=1), 1.0, atol=1e-5)
        assert step.variance.shape == (3, *step.probs.shape[2:])
    data = report.to_json()
    for row in data["steps"] + data["stages"]:
        assert sum(row["shares"].values()) == pytest.approx(1.0, abs=1e-6)
        assert list(row["shares"]) == ["1", "2", "4"]
    step0 = report.steps[0]
    assert data["steps"][0]["shares"]["4"] == pytest.approx(float(step0.probs[:, 2].mean()), abs=1e-7)
    assert data["stages"][1]["variance_corr"] == pytest.approx(gates.pearson(
        np.concatenate([s.variance.ravel() for s in report.steps[2:]]),
        np.concatenate([s.probs[:, 2].ravel() for s in report.steps[2:]])))
    assert model.record_gates is False  # recording is switched back off
    for name in ("gate_maps", "gate_shares"):
        assert png(tmp_path / f"{name}.png")[2] > 0


def test_gate_colours_okabe_ito_by_argmax_faded_by_confidence():
    okabe_ito = [(0, 114, 178), (230, 159, 0), (0, 158, 115)]  # blue, orange, bluish green (Okabe & Ito 2008)
    np.testing.assert_allclose(np.asarray(plots.DILATION_COLOURS[:3]) * 255, okabe_ito, atol=1e-9)
    probs = np.zeros((3, 1, 3))
    probs[:, 0, 0] = (0, 0, 1)  # sure of d=4: its colour
    probs[:, 0, 1] = 1 / 3  # undecided: white, not a muddy mix
    probs[:, 0, 2] = (0.2, 0.6, 0.2)  # d=2 at confidence (0.6 - 1/3) / (2/3) = 0.4
    rgb = plots.gate_colours(probs)
    np.testing.assert_allclose(rgb[0, 0], np.asarray(okabe_ito[2]) / 255)
    np.testing.assert_allclose(rgb[0, 1], (1, 1, 1))
    np.testing.assert_allclose(rgb[0, 2], 1 - 0.4 * (1 - np.asarray(okabe_ito[1]) / 255))


def test_pearson():
    assert gates.pearson(np.arange(5.0), 3 * np.arange(5.0) + 1) == pytest.approx(1.0)
    assert gates.pearson(np.ones(5), np.arange(5.0)) is None


def test_gate_map_figure_draws_the_palette_with_its_legend(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or path)
    probs = np.zeros((3, 2, 2))
    probs[1] = 1  # every pixel sure of d=2
    plots.gate_maps(np.zeros((1, 4, 4, 3)), [[probs]], dilations=["d=1", "d=2", "d=4"], column_titles=["s0.t0"],
                    row_titles=["img0"], path=tmp_path / "maps.png")
    fig = drawn[0]
    panel = fig.axes[1].images[0].get_array()
    np.testing.assert_allclose(panel, np.broadcast_to(plots.DILATION_COLOURS[1], (2, 2, 3)))
    patches = fig.legends[0].get_patches()
    assert [p.get_label() for p in patches] == ["d=1", "d=2", "d=4"]
    assert [tuple(p.get_facecolor()[:3]) for p in patches] == list(plots.DILATION_COLOURS[:3])
    assert "paler = less confident" in fig.legends[0].get_title().get_text()


def test_model_without_gates_is_a_clear_error():
    with pytest.raises(CnnscopeError, match="no entropy gates"):
        gates.record_gate_steps(nn.Conv2d(3, 3, 1), torch.zeros(1, 3, 4, 4))


def test_gate_figures_grow_with_steps_and_images(tmp_path):
    def draw(n_images, n_steps):
        maps = [[np.random.dirichlet((1, 1, 1), (4, 4)).transpose(2, 0, 1) for _ in range(n_steps)]
                for _ in range(n_images)]
        path = plots.gate_maps(np.random.rand(n_images, 8, 8, 3), maps, dilations=["d=1", "d=2", "d=4"],
                               column_titles=[f"s0.t{i}" for i in range(n_steps)],
                               row_titles=[f"img{i}" for i in range(n_images)],
                               path=tmp_path / f"maps_{n_images}_{n_steps}.png")
        return png(path)

    w6, h6, var = draw(1, 6)  # wide enough that the legend does not set the width
    w10, h10, _ = draw(2, 10)
    assert var > 0
    assert_grows(w10 - w6, 4, 0.9)  # a 0.9-inch panel per step
    assert_grows(h10 - h6, 1, 0.9)  # and per image
    bars = [png(plots.gate_shares([f"s{i}" for i in range(n)], np.full((n, 3), 1 / 3), ["d=1", "d=2", "d=4"],
                                  groups=[i // 2 for i in range(n)], path=tmp_path / f"bars{n}.png"))
            for n in (10, 40)]
    assert bars[1][0] > bars[0][0] + 500 and bars[0][2] > 0


# ---- attribution ----------------------------------------------------------------------------------

class PlainCNN(nn.Module):
    """Convs at full, 1/2 and 1/4 resolution, then a 1x1-output conv (not spatial)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.squeeze = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.features(x).mean((2, 3), keepdim=True)
        return self.fc(self.squeeze(x).flatten(1))


class TiedCNN(nn.Module):
    def __init__(self, stem=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1) if stem else None
        self.tied = nn.Conv2d(4 if stem else 3, 4 if stem else 3, 3, padding=1)
        self.fc = nn.Linear(4 if stem else 3, 10)

    def forward(self, x):
        if self.stem is not None:
            x = self.stem(x)
        for _ in range(3):
            x = torch.relu(self.tied(x))
        return self.fc(x.mean((2, 3)))


def test_gradcam_layer_is_the_last_spatial_conv_called_once():
    torch.manual_seed(0)
    layer, message = attribution.gradcam_layer(PlainCNN().eval(), torch.zeros(1, 3, 16, 16))
    assert (layer.name, layer.size, layer.calls, message) == ("features.4", (4, 4), 1, None)

    layer, message = attribution.gradcam_layer(TiedCNN(), torch.zeros(1, 3, 16, 16))
    assert (layer.name, layer.calls) == ("stem", 1)
    assert "tied (16x16), runs 3 times" in message

    layer, message = attribution.gradcam_layer(TiedCNN(stem=False), torch.zeros(1, 3, 16, 16))
    assert layer is None and "every spatial conv" in message

    # weight-tied ECTiedNet: its one block runs every iteration, so GradCAM falls back to the stem
    layer, message = attribution.gradcam_layer(ECTiedNet(channels=8, iterations=2, expansion=2),
                                               torch.zeros(1, 3, 16, 16))
    assert layer.name == "stem.0" and "block.contract (8x8), runs 2 times" in message


@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
def test_gradcam_maps_have_the_input_size(size):
    torch.manual_seed(0)
    model = PlainCNN().eval()
    x = torch.randn(1, 3, *size)
    layer, _ = attribution.gradcam_layer(model, x)
    assert layer.size == (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    heat, ig = attribution.explain(model, x, 3, "gradcam", layer.module)
    assert heat.shape == size and ig is None
    assert heat.min() >= 0 and heat.max() > 0  # ReLU'd class activation map, unnormalised


def test_attribution_figure_grows_with_methods_and_images(tmp_path):
    torch.manual_seed(0)
    model = PlainCNN().eval()

    def run(n, methods, name):
        report = inspect_attributions(Target(model, "plain", tmp_path / name), probe_images(n),
                                      methods=methods)
        assert report.methods == list(methods) and len(report.images) == n
        return png(report.figures["attributions"])

    w1, h1, var = run(1, ("saliency",), "one")
    w4, h4, _ = run(2, attribution.DEFAULT_METHODS, "four")
    assert var > 0
    assert_grows(w4 - w1, 3, 1.6)  # a 1.6-inch panel per method
    assert_grows(h4 - h1, 1, 1.6)  # and per image


# ---- targets and the CLI --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def egrr_run(tmp_path_factory):
    """A run folder of a tiny egrr on `fake`, with a mean/std of its own in the checkpoint."""
    run = tmp_path_factory.mktemp("runs") / "egrr-tiny"
    torch.manual_seed(0)
    model = EGRRNet(**TINY_EGRR)
    save_checkpoint({"model_spec": "egrr", "ctor": TINY_EGRR, "model": model.state_dict(), "dataset": "fake",
                     "classes": [f"k{i}" for i in range(10)], "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                     "model_settings": {"depth": None, "tau": 0.1}},
                    run / "checkpoints" / "best.pth")
    (run / ".cnnscope.lock").touch()  # a run folder: the commands write into it
    return run


def test_run_target_uses_the_checkpoint_normalisation(egrr_run, tmp_path):
    target = load_target(str(egrr_run))
    assert target.checkpoint is not None and target.plots_dir == egrr_run / "plots"
    assert [stage.gate.tau for stage in target.model.stages] == [0.1, 0.1]  # the run's final temperature
    images = load_test_images(target, 3, data_dir=tmp_path)
    assert images.dataset == "fake" and images.classes[0] == "k0" and len(images.labels) == 3
    expected = (torch.from_numpy(images.pixels).permute(0, 3, 1, 2) - 0.5) / 0.25
    torch.testing.assert_close(images.x, expected)
    with pytest.raises(CnnscopeError) as refused:  # a run's constructor keywords are its checkpoint's
        load_target(str(egrr_run), ["num_classes=3"])
    assert refused.value.arguments == ("ctor",)


def test_cli_gates_on_a_run(runner, egrr_run, tmp_path):
    result = runner.invoke(cli, ["gates", str(egrr_run), "--n", "2", "--data-dir", str(tmp_path),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"target", "dataset", "images", "dilations", "steps", "stages", "figures"}
    assert data["dataset"] == "fake" and data["dilations"] == [1, 2, 4] and len(data["images"]) == 2
    assert [(s["stage"], s["step"], s["size"]) for s in data["steps"]] == [
        (0, 0, [32, 32]), (0, 1, [32, 32]), (1, 0, [16, 16]), (1, 1, [16, 16])]
    assert all(sum(s["shares"].values()) == pytest.approx(1.0, abs=1e-6) for s in data["steps"])
    assert data["figures"] == {"gate_maps": str(egrr_run / "plots" / "gate_maps.png"),
                               "gate_shares": str(egrr_run / "plots" / "gate_shares.png")}
    assert all(png(path)[2] > 0 for path in data["figures"].values())


def test_cli_attribute_on_a_weight_tied_run(runner, egrr_run, tmp_path):
    result = runner.invoke(cli, ["attribute", str(egrr_run), "--n", "1", "--data-dir", str(tmp_path),
                                 "--method", "gradcam", "--method", "saliency", "--target", "true",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["methods"] == ["saliency", "gradcam"] and data["skipped"] == {}
    # the last spatial conv (a gate head) runs every recursion step: GradCAM falls back and says so
    assert data["gradcam_layer"] == {"name": "stages.1.proj.1", "size": [16, 16], "calls": 1, "chosen": "auto"}
    assert "stages.1.gate.head.2 (16x16), runs 2 times" in data["warnings"][0]
    assert "warning: GradCAM uses stages.1.proj.1" in result.stderr
    (image,) = data["images"]
    assert image["target"] == image["label"] and image["ig_delta"] is None
    assert png(egrr_run / "plots" / "attributions.png")[2] > 0


def test_cli_sharing_on_a_spec(runner, tmp_path):
    result = runner.invoke(cli, ["sharing", "swrn", "--ctor", "depth=16", "--ctor", "width=1",
                                 "--ctor", "num_templates=2", "--out", str(tmp_path), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target"] == "swrn (untrained)" and data["threshold"] == 0.95
    assert [b["name"] for b in data["banks"]] == ["stage1.bank", "stage2.bank", "stage3.bank"]
    for bank in data["banks"]:
        np.testing.assert_allclose(bank["similarity"], np.eye(2), atol=1e-5)
        assert bank["groups"] == []
        assert png(tmp_path / f"sharing_{bank['name']}.png")[2] > 0
    markdown = runner.invoke(cli, ["sharing", "swrn", "--ctor", "depth=16", "--ctor", "width=1",
                                   "--out", str(tmp_path), "--format", "markdown"])
    assert "### Sharing budget (parameters)" in markdown.stdout
    assert "| stage1.bank | 2 | 13,824 | 12 | 13,836 | 4,608 | 3.003 |" in markdown.stdout


def test_cli_gates_on_an_untrained_spec(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["gates", "egrr", *TINY_EGRR_CTOR, "--n", "1", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "Gate shares per step: egrr (untrained), 1 test images of fake" in result.stdout
    assert png(tmp_path / "reports" / "egrr-untrained" / "plots" / "gate_maps.png")[2] > 0


@pytest.mark.parametrize("command, message", [
    ("gates", "no entropy gates"),
    ("sharing", "no soft-shared layers"),
])
def test_cli_models_without_gates_or_banks_exit_2(runner, tmp_path, command, message):
    result = runner.invoke(cli, [command, "basic", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_cli_attribute_true_target_needs_enough_outputs(runner, error_of, tmp_path):
    result = runner.invoke(cli, ["attribute", "egrr", *TINY_EGRR_CTOR[2:], "--ctor", "num_classes=2",
                                 "--target", "true", "--n", "4", "--data-dir", str(tmp_path),
                                 "--out", str(tmp_path)])
    assert error_of(result).arguments == ("target_class", "ctor")
