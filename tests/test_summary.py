"""`summary`: params unique vs per call, MACs per call, checked against torch's own flop counter."""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cnnscope import zoo
from cnnscope.cli import cli
from cnnscope.core.summary import summarize

# Small keyword configs where the registry default is too heavy for a 2-core test run.
SMALL = {"swrn": {"depth": 16, "width": 2, "num_templates": 3}}


def test_basic_and_dilated_macs_match_the_seed():
    basic = summarize(zoo.build("basic"))
    dilated = summarize(zoo.build("dilated"))
    assert basic.params_unique == 84_322 and dilated.params_unique == 197_858
    assert basic.macs == pytest.approx(13.73e6, rel=1e-3)
    assert dilated.macs == pytest.approx(200.03e6, rel=1e-3)


@pytest.mark.parametrize("name", zoo.list_models())
def test_macs_agree_with_flop_counter(name):
    model = zoo.build(name, **SMALL.get(name, {})).eval()
    result = summarize(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert result.macs == counter.get_total_flops() // 2
    assert result.params_unique == sum(p.numel() for p in model.parameters())


class Tied(nn.Module):
    """One conv called three times at dilations 1, 2, 3 (two through its module, one functionally)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.stem = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.conv(x)
        x = self.conv(x)
        x = F.conv2d(x, self.conv.weight, padding=3, dilation=3)  # charged to Tied itself
        return self.head(x.mean((2, 3)))


def test_weight_tied_module_counted_once_for_params_and_per_call_for_macs():
    result = summarize(Tied(), (3, 8, 8))
    conv_rows = [r for r in result.layers if r.name == "conv"]
    assert [r.call for r in conv_rows] == [1, 2] and all(r.calls == 2 for r in conv_rows)
    conv_params, conv_macs = 4 * 4 * 9, 4 * 8 * 8 * 4 * 9
    assert all(r.params == conv_params and r.macs == conv_macs for r in conv_rows)
    stem_params, head_params = 3 * 4 + 4, 4 * 10 + 10
    assert result.params_unique == conv_params + stem_params + head_params
    assert result.params_per_call == 2 * conv_params + stem_params + head_params
    root = next(r for r in result.layers if r.name == "")
    assert root.macs == conv_macs  # the functional call
    assert result.macs == 3 * conv_macs + 3 * 4 * 8 * 8 + 4 * 10


def test_ectied_block_rows_one_per_iteration():
    result = summarize(zoo.build("ectied", iterations=6))
    expand_calls = [r for r in result.layers if r.name.endswith("expand") or r.name.endswith("expand.0")]
    assert len(expand_calls) == 6
    assert result.params_unique == 38_475 and result.params_per_call > result.params_unique


def test_summary_cli_json(runner):
    out = runner.invoke(cli, ["summary", "basic", "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["params_unique"] == 84_322 and data["macs"] == summarize(zoo.build("basic")).macs
    assert [layer["name"] for layer in data["layers"][:3]] == ["", "c1a", "c1a.conv"]  # the hierarchy, in call order
    assert any(layer["name"] == "c4a.dw" for layer in data["layers"])
    assert data["memory_bytes"]["params"] == 4 * 84_322 and data["memory_bytes"]["input"] == 4 * 3 * 32 * 32


def test_summary_cli_markdown_and_input_shape(runner):
    out = runner.invoke(cli, ["summary", "basic", "--format", "markdown", "--input", "3", "64", "64"])
    assert out.exit_code == 0, out.output
    indent = "\u00a0" * 4  # two levels: the model, c1a, its conv
    assert f"| 3 | {indent}conv | Conv2d | 24x64x64 | 3 | 1 | 1 | 1 | 648 | 648 | 2.65 M |" in out.output
    assert "**Unique trainable params:** 84,322" in out.output


def test_summary_geometry_per_call_hierarchy_and_memory():
    """Depthwise and pointwise convs told apart by kernel and groups; a kernel reused at another dilation
    shows each call's; a block's own and total parameters; memory as torchinfo counts it."""
    result = summarize(zoo.build("basic"))
    rows = {layer.name: layer for layer in result.layers}
    dw, pw = rows["c2a.dw"], rows["c2a.pw"]
    assert (dw.kernel, dw.stride, dw.dilation, dw.groups) == ([3, 3], [1, 1], [1, 1], 48)
    assert (pw.kernel, pw.groups) == ([1, 1], 1) and rows["c4a.dw"].dilation == [2, 2]
    assert rows["c2a.bn"].kernel is None and rows["c2a"].depth == 1 and rows["c2a.dw"].depth == 2
    block = rows["c2a"]  # a container: no parameters of its own, its children's in total
    assert block.params == 0 and block.total_params == sum(rows[f"c2a.{c}"].params for c in ("dw", "pw", "bn"))
    assert rows[""].total_params == result.params_unique == 84_322
    leaves = [layer for layer in result.layers if layer.name and not any(
        other.name.startswith(layer.name + ".") for other in result.layers)]
    assert result.activation_bytes == 2 * 4 * sum(math.prod(layer.output_shape) for layer in leaves)
    assert result.param_bytes == 4 * 84_322
    tied = summarize(zoo.build("ectied"))
    assert [layer.dilation for layer in tied.layers if layer.type == "ECBlock"][:3] == [[1, 1], [1, 1], [2, 2]]


def test_summary_table_fits_80_columns_and_labels_own_and_total(runner):
    for width, shown in ((80, False), (140, True)):
        out = runner.invoke(cli, ["summary", "torchvision.models:resnet18", "--format", "table"],
                            env={"COLUMNS": str(width)})
        assert out.exit_code == 0, out.output
        lines = out.stdout.splitlines()
        assert max(map(len, lines)) <= width and "…" not in out.stdout
        header = " ".join(lines[1:5])
        assert "Params" in header and "(own)" in header and ("(total)" in header) is shown
        assert "│     0 " in out.stdout and "│       conv1 " in out.stdout  # layer1.0.conv1, indented
        left_out = " ".join(lines).partition("Not shown at 80 columns: ")[2]
        assert ("'Params (total)'" in left_out) is not shown and ("'k'" in left_out or "'g'" in left_out) is False


def test_models_cli_lists_every_registered_model(runner):
    out = runner.invoke(cli, ["models", "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)}
    assert set(rows) == set(zoo.list_models())
    assert rows["basic"]["params"] == 84_322 and rows["egrr"]["dataset"] == "cifar100"


class Attention(nn.Module):
    """A functional conv, scaled-dot-product attention over the 64 positions and an einsum."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.mix = nn.Parameter(torch.randn(2, 4, 4))

    def forward(self, x):
        x = F.conv2d(x, self.kernel, padding=1)  # (1, 8, 8, 8)
        heads = x.flatten(2).transpose(1, 2).reshape(1, 64, 2, 4).transpose(1, 2)  # (1, 2, 64, 4)
        att = F.scaled_dot_product_attention(heads, heads, heads)
        return torch.einsum("bhld,hde->bhle", att, self.mix).mean((1, 2))


def test_attention_einsum_and_functional_conv_counted_like_flop_counter():
    conv = 8 * 8 * 8 * (3 * 3 * 3)  # output elements x (in channels x kernel)
    sdpa = 2 * (2 * 64 * 64 * 4)  # scores q.k and the weighted sum of v: heads x L x L x d each
    einsum = 2 * 64 * 4 * 4  # h l d e
    model = Attention()
    result = summarize(model, (3, 8, 8))
    assert result.macs == conv + sdpa + einsum == 81_408 and result.warnings == []
    # flop_counter has no formula for the CPU attention kernel; on the math path it counts the bmms
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        model(torch.zeros(1, 3, 8, 8))
    assert counter.get_total_flops() // 2 == result.macs


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x @ x.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        x = Square.apply(self.stem(x))  # (1, 4, 8, 8): 4 x 8 x 8 x 8 MACs, seen inside the Function
        return torch.cdist(x, x)  # arithmetic flop_counter has no formula for


def test_uncounted_operation_named_in_a_warning(runner):
    result = summarize(Opaque(), (3, 8, 8))
    assert result.macs == 4 * 8 * 8 * 3 + 4 * 8 * 8 * 8
    assert len(result.warnings) == 1 and result.warnings[0].startswith("aten._cdist_forward ran uncounted in (model)")
    out = runner.invoke(cli, ["summary", "tests.test_summary:Opaque", "--input", "3", "8", "8", "--format", "markdown"])
    assert out.exit_code == 0, out.output
    assert "> warning: aten._cdist_forward ran uncounted in (model)" in out.output


class Activations(nn.Module):
    """In-place hardswish (MobileNetV3) and the resampling modes: elementwise work, no MACs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.act = nn.Hardswish(inplace=True)

    def forward(self, x):
        x = self.act(self.conv(x))
        ups = [F.interpolate(x, scale_factor=2, mode=mode) for mode in ("nearest", "bilinear", "bicubic")]
        return torch.cat([*ups, F.mish(ups[0]), F.gelu(ups[1])], 1).mean((2, 3))


def test_in_place_activations_and_resampling_are_known_elementwise():
    """aten.hardswish_ and aten._unsafe_index once ran "uncounted" with a warning: they are classified."""
    result = summarize(Activations(), (3, 8, 8))
    assert result.macs == 4 * 3 * 8 * 8 and result.warnings == []
