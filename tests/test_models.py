"""The model zoo: exact sizes, MACs and the behaviour each seed family promises (MODELS.md)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cnnscope.zoo import build, get_entry, list_models
from cnnscope.zoo.blocks import BlurPool2d, DivisiveNorm
from cnnscope.zoo.ectied import ECTiedNet
from cnnscope.zoo.egrr import STAGES, EGRRNet, EntropyGate, SymConv1x1
from cnnscope.zoo.soft_sharing import SConv2d, TemplateBank, coefficient_param_groups

# Keyword configs that keep a forward pass cheap; every other model runs at its defaults.
SMALL = {"swrn": dict(depth=16, width=1, num_templates=2)}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def macs(model, shape=(1, 3, 32, 32)):
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(shape))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name, kw, expected", [
    ("basic", {}, 84_322),
    ("dilated", {}, 197_858),
    ("tiny", {}, 36_170),
    ("ectied", {}, 38_475),
    ("egrr", {}, 492_308),
    ("swrn", {}, 36_479_302),  # SWRN-28-10-6, the registry default
    ("swrn", dict(num_templates=1), 12_287_212),
])
def test_exact_parameter_counts(name, kw, expected):
    assert n_params(build(name, **kw)) == expected


def test_egrr_count_is_the_sum_of_its_components_and_under_budget():
    # Stem conv + BN; per stage: projection (1x1 conv + BN) when channels or stride change,
    # C(C+1)/2 symmetric weights, gate C->C/4->3 with biases, one 3x3 depthwise kernel, T BNs.
    expected, in_ch = 3 * 32 * 9 + 2 * 32, 32
    for c, steps, stride in STAGES:
        if in_ch != c or stride != 1:
            expected += in_ch * c + 2 * c
        expected += c * (c + 1) // 2 + (c * (c // 4) + c // 4) + (c // 4 * 3 + 3) + 9 * c + 2 * c * steps
        in_ch = c
    expected += 384 * 100 + 100
    model = build("egrr")
    assert n_params(model) == expected < 500_000


@pytest.mark.parametrize("name, expected", [("basic", 13.73e6), ("dilated", 200.03e6)])
def test_macs_match_the_seed_summary(name, expected):
    assert macs(build(name)) == pytest.approx(expected, rel=1e-3)


# The seed's receptive-field tables (seed 002): layer name -> (kernel, stride, dilation).
RF_TABLES = {
    "basic": (55, [("c1a.conv", 3, 1, 1), ("c1b.conv", 3, 1, 1), ("c1c.conv", 3, 2, 1),
                   ("c2a.dw", 3, 1, 1), ("c2a.pw", 1, 1, 1), ("c2b.dw", 3, 2, 1), ("c2b.pw", 1, 1, 1),
                   ("c3a.conv", 1, 1, 1), ("c3b.dw", 3, 2, 1), ("c3b.pw", 1, 1, 1),
                   ("c4a.dw", 3, 1, 2), ("c4a.pw", 1, 1, 1), ("c4b.conv", 1, 1, 1)]),
    "dilated": (45, [("c1a.conv", 3, 1, 1), ("c1b.conv", 3, 1, 1), ("c2a_dw.dw", 3, 1, 2),
                     ("c2a_dw.pw", 1, 1, 1), ("c2b_pw.conv", 1, 1, 1), ("c2c.conv", 3, 1, 2),
                     ("c3a_pw.conv", 1, 1, 1), ("c3b.conv", 3, 1, 4), ("c3c.conv", 3, 1, 4),
                     ("c4a.dw", 3, 1, 8), ("c4a.pw", 1, 1, 1), ("c4b_pw.conv", 1, 1, 1)]),
}


@pytest.mark.parametrize("name", RF_TABLES)
def test_layer_names_and_geometry_follow_the_seed_rf_table(name):
    final_rf, table = RF_TABLES[name]
    convs = {n: m for n, m in build(name).named_modules() if isinstance(m, nn.Conv2d)}
    assert list(convs) == [row[0] for row in table]  # every conv, in forward order
    rf, jump = 1, 1
    for layer, k, s, d in table:
        conv = convs[layer]
        assert (conv.kernel_size[0], conv.stride[0], conv.dilation[0]) == (k, s, d)
        assert conv.padding[0] == d * (k - 1) // 2
        rf, jump = rf + (k - 1) * d * jump, jump * s
    assert rf == final_rf


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_classes", [10, 100])
def test_every_model_gives_finite_logits(name, num_classes):
    model = build(name, num_classes=num_classes, **SMALL.get(name, {}))
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


def test_registry_entries_name_their_seed_and_dataset():
    assert list_models() == ["basic", "dilated", "ectied", "egrr", "swrn", "tiny"]
    assert get_entry("egrr").dataset == "cifar100"
    assert (get_entry("basic").seed_doc == get_entry("dilated").seed_doc
            == "Compact CNNs with DW-Separable + Dilation (No MaxPool)")
    assert build("egrr").fc.out_features == 100 and build("tiny").head.out_channels == 10


# --- shared blocks ---------------------------------------------------------------------------

def test_blurpool_halves_the_size_and_keeps_a_constant_image():
    blur = BlurPool2d(4)
    assert n_params(blur) == 0 and "kernel" not in blur.state_dict()
    y = blur(torch.full((1, 4, 8, 8), 3.0))
    assert y.shape == (1, 4, 4, 4)
    assert torch.allclose(y[..., 1:, 1:], torch.full_like(y[..., 1:, 1:], 3.0))  # away from padding


def test_divisive_norm_divides_by_the_local_mean_magnitude():
    x = torch.randn(1, 2, 6, 6)
    expected = x / (F.avg_pool2d(x.abs(), 3, stride=1, padding=1) + 1e-3)
    assert torch.allclose(DivisiveNorm()(x), expected)
    assert n_params(DivisiveNorm()) == 0


# --- ectied -----------------------------------------------------------------------------------

@pytest.mark.parametrize("iterations", [3, 6, 9])
def test_ectied_count_does_not_depend_on_iterations(iterations):
    assert n_params(ECTiedNet(iterations=iterations)) == 38_475


def test_ectied_calls_one_block_with_each_iterations_dilation_and_blurs_once():
    model = ECTiedNet(channels=16, iterations=9)
    events = []
    model.block.register_forward_pre_hook(
        lambda m, args, kwargs: events.append(kwargs["dilation"]), with_kwargs=True)
    model.blur.register_forward_hook(lambda m, args, out: events.append(("blur", out.shape[-1])))
    model(torch.randn(1, 3, 32, 32))
    assert events == [1, 1, 2, 1, ("blur", 16), 2, 3, 1, 1, 2]  # schedule cycled past 6


def test_ectied_dilation_changes_the_blocks_output():
    block = ECTiedNet(channels=16).block
    nn.init.ones_(block.gamma)
    x = torch.randn(1, 16, 12, 12)
    outs = [block(x, dilation=d) for d in (1, 2, 3)]
    assert all(o.shape == x.shape for o in outs)
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


# --- egrr -------------------------------------------------------------------------------------

def test_symconv_is_symmetric_and_stores_only_the_lower_triangle():
    c = 48
    sym = SymConv1x1(c)
    w = sym.weight_matrix()
    assert torch.equal(w, w.T)
    assert n_params(sym) == c * (c + 1) // 2
    assert sum(t.numel() for t in sym.state_dict().values()) == c * (c + 1) // 2
    rows, cols = torch.tril_indices(c, c)
    off = rows != cols
    assert torch.equal(w[rows[off], cols[off]], sym.tril[off])
    assert torch.equal(w.diagonal(), 2 * sym.tril[~off])
    x = torch.randn(2, c, 4, 4)
    assert torch.allclose(sym(x), torch.einsum("oi,bihw->bohw", w, x), atol=1e-5)


def _gate_maps(model, x):
    model.record_gates = True
    model(x)
    return model.gate_maps


@pytest.mark.parametrize("train", [True, False])
def test_egrr_gate_probabilities_are_per_pixel_distributions(train):
    model = EGRRNet().train(train)
    maps = _gate_maps(model, torch.randn(2, 3, 32, 32))
    assert [(m["stage"], m["step"]) for m in maps] == [
        (s, t) for s, (_, steps, _) in enumerate(STAGES) for t in range(steps)]
    sizes = {0: 32, 1: 16, 2: 16, 3: 8, 4: 8, 5: 8, 6: 4, 7: 4}
    for m in maps:
        size = sizes[m["stage"]]
        assert m["probs"].shape == (2, 3, size, size)
        assert m["variance"].shape == (2, size, size)
        assert (m["probs"] >= 0).all() and (m["variance"] >= 0).all()
        assert torch.allclose(m["probs"].sum(dim=1), torch.ones(2, size, size), atol=1e-5)


def test_egrr_set_depth_runs_fewer_steps():
    model = EGRRNet().eval()
    x = torch.randn(1, 3, 32, 32)
    assert len(_gate_maps(model, x)) == sum(steps for _, steps, _ in STAGES) == 38
    model.set_depth(1)
    assert [m["step"] for m in _gate_maps(model, x)] == [0] * len(STAGES)
    model.set_depth(4)
    assert len(_gate_maps(model, x)) == 3 + 4 * 7
    model.set_depth(None)
    assert len(_gate_maps(model, x)) == 38


def test_entropy_gate_eval_is_softmax_at_tau_and_training_is_stochastic():
    model = EGRRNet()
    model.set_tau(0.5)
    gate = model.stages[0].gate
    assert isinstance(gate, EntropyGate) and gate.tau == 0.5
    x = torch.randn(2, 48, 8, 8)
    mean = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    variance = (F.avg_pool2d(x * x, 3, 1, 1, count_include_pad=False) - mean**2).clamp_min(0)
    probs, var = gate.eval()(x)
    assert torch.allclose(var, variance, atol=1e-6)
    assert torch.allclose(probs, F.softmax(gate.head(variance) / 0.5, dim=1), atol=1e-6)
    gate.train()
    assert not torch.allclose(gate(x)[0], gate(x)[0])  # Gumbel noise


# --- soft sharing -----------------------------------------------------------------------------

def test_sconv_weight_is_the_coefficient_weighted_sum_of_templates():
    bank = TemplateBank(num_templates=4, in_planes=5, out_planes=7, kernel_size=3)
    conv = SConv2d(bank, stride=2, padding=1)
    expected = sum(conv.coefficients[t] * bank.templates[t] for t in range(4))
    assert torch.allclose(conv.weight, expected, atol=1e-6)
    x = torch.randn(2, 5, 9, 9)
    assert torch.allclose(conv(x), F.conv2d(x, expected, stride=2, padding=1), atol=1e-5)


class ReadmeCNN(nn.Module):
    """The seed README's plug-and-play example (with its typos fixed)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=3, stride=1, padding=0)
        self.bank = TemplateBank(num_templates=3, in_planes=10, out_planes=10, kernel_size=3)
        self.conv2 = SConv2d(bank=self.bank, stride=1, padding=1)
        self.conv3 = SConv2d(bank=self.bank, stride=1, padding=1)
        self.conv4 = SConv2d(bank=self.bank, stride=1, padding=1)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        return x


def test_template_bank_is_plug_and_play_in_a_user_model():
    model = ReadmeCNN()
    assert n_params(model) == (90 + 10) + 3 * 10 * 10 * 9 + 3 * 3  # conv1, one bank, coefficients
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10, 6, 6)
    out.sum().backward()
    for conv in (model.conv2, model.conv3, model.conv4):
        assert conv.coefficients.grad.abs().sum() > 0
    assert model.bank.templates.grad.abs().sum() > 0

    decayed, coefficients = coefficient_param_groups(model, 5e-4)
    assert decayed["weight_decay"] == 5e-4 and coefficients["weight_decay"] == 0.0
    assert {id(p) for p in coefficients["params"]} == {
        id(c.coefficients) for c in (model.conv2, model.conv3, model.conv4)}
    assert sorted(map(id, decayed["params"] + coefficients["params"])) == sorted(
        map(id, model.parameters()))
    torch.optim.SGD([decayed, coefficients], lr=0.1).step()


@pytest.mark.parametrize("num_templates", [6, 2])
def test_swrn_stage_shares_one_bank_with_orthogonal_coefficients(num_templates):
    model = build("swrn", depth=22, width=1, num_templates=num_templates)  # 3 blocks per stage
    for stage in (model.stage1, model.stage2, model.stage3):
        sconvs = [m for m in stage.modules() if isinstance(m, SConv2d)]
        assert len(sconvs) == 4 and all(s.bank is stage.bank for s in sconvs)
        assert not any(isinstance(m, SConv2d) for m in stage.blocks[0].modules())
        coeffs = torch.stack([s.coefficients.detach() for s in sconvs])  # (layers, T)
        gram = coeffs @ coeffs.T if num_templates >= 4 else coeffs.T @ coeffs
        assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)


def test_swrn_rejects_a_depth_that_is_not_6n_plus_4():
    with pytest.raises(ValueError, match="6n\\+4"):
        build("swrn", depth=20)


def test_the_zoo_installs_as_cnnscope_zoo_and_no_top_level_name_can_collide(tmp_path):
    """A user's repository has its own `models/`: cnnscope installs no top-level module but `cnnscope`,
    and outside this repository `import models` finds nothing of cnnscope's."""
    import importlib.metadata
    import subprocess
    import sys

    assert importlib.metadata.distribution("cnnscope").read_text("top_level.txt").split() == ["cnnscope"]
    probe = ("import importlib.util, cnnscope.zoo; print(importlib.util.find_spec('models') is None, "
             "sorted(cnnscope.zoo.list_models()) == sorted(%r))" % list_models())
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "True"], done.stderr
