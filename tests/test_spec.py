"""SPEC resolution and its errors, through the CLI as a user meets them."""
import subprocess
import sys
import textwrap

import pytest
import torch.nn as nn

from cnnscope.cli import cli
from cnnscope.errors import CnnscopeError
from cnnscope.runs.spec import build_model, parse_key_values


def test_parse_key_values_literals_and_bare_words():
    assert parse_key_values(["num_classes=100", "dilations=[1, 2, 4]", "name=fast", "p=0.5", "b=True"]) == {
        "num_classes": 100, "dilations": [1, 2, 4], "name": "fast", "p": 0.5, "b": True}


@pytest.mark.parametrize("bad", ["num_classes", "=3", "1x=2", "x=[1,2"])
def test_parse_key_values_rejects_malformed_naming_the_argument_not_a_flag(bad):
    with pytest.raises(CnnscopeError, match="Bad recipe item") as e:
        parse_key_values([bad], argument="recipe")
    assert e.value.arguments == ("recipe",) and "--" not in str(e.value)


def test_registry_name_and_module_attr_give_the_same_model():
    a = build_model("basic", {"num_classes": 7})
    b = build_model("models.compact:Net", {"num_classes": 7})
    assert type(a) is type(b) and a.state_dict().keys() == b.state_dict().keys()


MODEL_FILE = textwrap.dedent("""
    import torch.nn as nn
    from neighbour_blocks import Block

    class Tiny(nn.Module):
        def __init__(self, width, num_classes=10):
            super().__init__()
            self.block = Block(3, width)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.block(x).mean((2, 3)))

    class Other(nn.Module):
        pass

    def make_tiny(num_classes=10):
        return Tiny(4, num_classes)

    NOT_A_MODEL = 3
""")


@pytest.fixture
def model_file(tmp_path):
    (tmp_path / "neighbour_blocks.py").write_text(
        "import torch.nn as nn\n\nclass Block(nn.Conv2d):\n"
        "    def __init__(self, i, o):\n        super().__init__(i, o, 3, padding=1)\n")
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_FILE)
    return path


def test_file_spec_imports_its_neighbours(model_file):
    model = build_model(f"{model_file}:Tiny", {"width": 5, "num_classes": 3})
    assert model.head.out_features == 3 and model.block.out_channels == 5
    assert isinstance(build_model(f"{model_file}:make_tiny", {}), nn.Module)


def _assert_clean_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_unknown_name_suggests_closest(runner):
    _assert_clean_error(runner.invoke(cli, ["summary", "basci"]), "Unknown model 'basci'", "Did you mean basic")


def test_missing_file(runner, tmp_path):
    _assert_clean_error(runner.invoke(cli, ["summary", f"{tmp_path}/nope.py:Net"]), "does not exist")


def test_missing_attribute_lists_module_classes(runner, model_file):
    _assert_clean_error(runner.invoke(cli, ["summary", f"{model_file}:Nope"]),
                        "no attribute 'Nope'", "Other, Tiny")


def test_constructor_missing_arguments(runner, model_file):
    _assert_clean_error(runner.invoke(cli, ["summary", f"{model_file}:Tiny"]),
                        "Cannot construct Tiny", "width=...", "ctor is --ctor K=V")


def test_malformed_ctor(runner):
    _assert_clean_error(runner.invoke(cli, ["summary", "basic", "--ctor", "num_classes"]), "Bad ctor item")


def test_unknown_ctor_keyword(runner):
    _assert_clean_error(runner.invoke(cli, ["summary", "basic", "--ctor", "widht=2"]), "Cannot construct basic")


def test_attribute_that_is_not_a_model(runner, model_file):
    _assert_clean_error(runner.invoke(cli, ["summary", f"{model_file}:NOT_A_MODEL"]), "not a class or function")


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in sorted(cli.commands)])
def test_help_does_not_import_torch(argv):
    code = ("import sys\nfrom cnnscope.cli import cli\n"
            f"try:\n    cli.main({argv!r}, prog_name='cnnscope')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage:" in out and out.strip().endswith("NO-TORCH")
