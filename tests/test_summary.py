"""`summary`: params unique vs per call, MACs per call, checked against torch's own flop counter."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import models
from cnnscope.cli import cli
from cnnscope.core.summary import summarize

# Small keyword configs where the registry default is too heavy for a 2-core test run.
SMALL = {"swrn": {"depth": 16, "width": 2, "num_templates": 3}}


def test_basic_and_dilated_macs_match_the_seed():
    basic = summarize(models.build("basic"))
    dilated = summarize(models.build("dilated"))
    assert basic.params_unique == 84_322 and dilated.params_unique == 197_858
    assert basic.macs == pytest.approx(13.73e6, rel=1e-3)
    assert dilated.macs == pytest.approx(200.03e6, rel=1e-3)


@pytest.mark.parametrize("name", models.list_models())
def test_macs_agree_with_flop_counter(name):
    model = models.build(name, **SMALL.get(name, {})).eval()
    result = summarize(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert result.macs == pytest.approx(counter.get_total_flops() / 2, rel=0.01)
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
    result = summarize(models.build("ectied", iterations=6))
    expand_calls = [r for r in result.layers if r.name.endswith("expand") or r.name.endswith("expand.0")]
    assert len(expand_calls) == 6
    assert result.params_unique == 38_475 and result.params_per_call > result.params_unique


def test_summary_cli_json(runner):
    out = runner.invoke(cli, ["summary", "basic", "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["params_unique"] == 84_322 and data["macs"] == summarize(models.build("basic")).macs
    assert data["layers"][0]["name"] == "c1a.conv" and any(layer["name"] == "c4a.dw" for layer in data["layers"])


def test_summary_cli_markdown_and_input_shape(runner):
    out = runner.invoke(cli, ["summary", "basic", "--format", "markdown", "--input", "3", "64", "64"])
    assert out.exit_code == 0, out.output
    assert "| c1a.conv | Conv2d | 24x64x64 | 648 |" in out.output
    assert "84,322" in out.output


def test_models_cli_lists_every_registered_model(runner):
    out = runner.invoke(cli, ["models", "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)}
    assert set(rows) == set(models.list_models())
    assert rows["basic"]["params"] == 84_322 and rows["egrr"]["dataset"] == "cifar100"
