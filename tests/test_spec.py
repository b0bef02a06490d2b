"""SPEC resolution and its errors, through the CLI as a user meets them."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch.nn as nn

from cnnscope.cli import cli
from cnnscope.errors import SpecError
from cnnscope.runs.spec import build_model, parse_key_values


def test_parse_key_values_literals_and_bare_words():
    assert parse_key_values(["num_classes=100", "dilations=[1, 2, 4]", "name=fast", "p=0.5", "b=True"]) == {
        "num_classes": 100, "dilations": [1, 2, 4], "name": "fast", "p": 0.5, "b": True}


@pytest.mark.parametrize("bad", ["num_classes", "=3", "1x=2", "x=[1,2"])
def test_parse_key_values_rejects_malformed_naming_the_argument_not_a_flag(bad):
    with pytest.raises(SpecError) as e:
        parse_key_values([bad], argument="recipe")
    assert e.value.arguments == ("recipe",) and "--" not in str(e.value)


def test_registry_name_and_module_attr_give_the_same_model():
    a = build_model("basic", {"num_classes": 7})
    b = build_model("cnnscope.zoo.compact:Net", {"num_classes": 7})
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


def _assert_spec_error(error, result, arguments=(), *named):
    """A SpecError (`error`: error_of(result)) naming `arguments`, no traceback; its message holds each
    of `named` (what it suggests or lists)."""
    assert isinstance(error, SpecError) and error.arguments == arguments
    assert "Traceback" not in result.output
    for needle in named:
        assert needle in result.output, result.output


def check(runner, error_of, args, arguments=(), *named):
    result = runner.invoke(cli, args)
    _assert_spec_error(error_of(result), result, arguments, *named)


def test_unknown_name_suggests_closest(runner, error_of):
    check(runner, error_of, ["summary", "basci"], (), "Did you mean basic")


def test_missing_file(runner, error_of, tmp_path):
    check(runner, error_of, ["summary", f"{tmp_path}/nope.py:Net"])


def test_missing_attribute_lists_module_classes(runner, error_of, model_file):
    check(runner, error_of, ["summary", f"{model_file}:Nope"], (), "Other, Tiny")


def test_constructor_missing_arguments(runner, error_of, model_file):
    check(runner, error_of, ["summary", f"{model_file}:Tiny"], ("ctor",), "width=...", "ctor is --ctor K=V")


def test_malformed_ctor(runner, error_of):
    check(runner, error_of, ["summary", "basic", "--ctor", "num_classes"], ("ctor",))


def test_unknown_ctor_keyword(runner, error_of):
    check(runner, error_of, ["summary", "basic", "--ctor", "widht=2"], ("ctor",))


def test_attribute_that_is_not_a_model(runner, error_of, model_file):
    check(runner, error_of, ["summary", f"{model_file}:NOT_A_MODEL"])


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in sorted(cli.commands)])
def test_help_does_not_import_torch(argv):
    code = ("import sys\nfrom cnnscope.cli import cli\n"
            f"try:\n    cli.main({argv!r}, prog_name='cnnscope')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage:" in out and out.strip().endswith("NO-TORCH")


# A package on disk: relative imports need the file imported as part of its package.
BLOCKS = "import torch.nn as nn\n\ndef conv3x3(c):\n    return nn.Conv2d(c, c, 3, padding=1)\n"
NET = textwrap.dedent("""
    import torch.nn as nn
    from {dots}blocks import conv3x3

    class Net(nn.Module):
        def __init__(self, depth={depth}):
            super().__init__()
            self.convs = nn.Sequential(*(conv3x3(3) for _ in range(depth)))

        def forward(self, x):
            return self.convs(x)
""")


@pytest.fixture
def clean_import_path(monkeypatch):
    """A test's package folders leave sys.path as it was (sys.modules is the loader's business)."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def _write_package(base, depth=2):
    (base / "pkg" / "sub").mkdir(parents=True)
    (base / "pkg" / "__init__.py").write_text("")
    (base / "pkg" / "sub" / "__init__.py").write_text("")
    (base / "pkg" / "blocks.py").write_text(BLOCKS)
    (base / "pkg" / "net.py").write_text(NET.format(dots=".", depth=depth))
    (base / "pkg" / "sub" / "net.py").write_text(NET.format(dots="..", depth=depth))


def _final_rf(runner, spec):
    result = runner.invoke(cli, ["rf", spec, "--input", "3", "16", "16", "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["final_rf"]


@pytest.mark.parametrize("spec", ["{tmp}/pkg/net.py:Net", "pkg/net.py:Net", "pkg.net:Net",
                                  "{tmp}/pkg/sub/net.py:Net", "pkg/sub/net.py:Net", "pkg.sub.net:Net"])
def test_package_file_with_relative_import(runner, tmp_path, monkeypatch, clean_import_path, spec):
    _write_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _final_rf(runner, spec.format(tmp=tmp_path)) == 5  # two 3x3 convs, stride 1: 1 + 2 + 2
    assert sys.modules["pkg"].__file__ == str(tmp_path / "pkg" / "__init__.py")  # this test's, not a cached one


def test_same_package_name_in_two_folders_is_not_served_from_the_cache(runner, tmp_path, monkeypatch,
                                                                       clean_import_path):
    for depth in (2, 3, 4):  # the same dotted names pkg.net, pkg.blocks in three folders
        _write_package(tmp_path / f"d{depth}", depth=depth)
    assert _final_rf(runner, f"{tmp_path}/d2/pkg/net.py:Net") == 5
    assert _final_rf(runner, f"{tmp_path}/d3/pkg/sub/net.py:Net") == 7
    monkeypatch.chdir(tmp_path / "d4")
    assert _final_rf(runner, "pkg.net:Net") == 9
    assert _final_rf(runner, f"{tmp_path}/d2/pkg/net.py:Net") == 5


def test_broken_relative_import_says_what_was_tried(runner, error_of, tmp_path, monkeypatch, clean_import_path):
    _write_package(tmp_path)
    (tmp_path / "pkg" / "net.py").write_text(NET.format(dots=".", depth=2).replace(".blocks", ".bloks"))
    monkeypatch.chdir(tmp_path)
    check(runner, error_of, ["rf", "pkg/net.py:Net"], (),
                        "as the module pkg.net", f"package root {tmp_path / 'pkg'}", f"imported from {tmp_path}",
                        "No module named 'pkg.bloks'", "Relative imports")
    check(runner, error_of, ["rf", "pkg.net:Net"], (), "No module named 'pkg.bloks'",
                        "an import inside it failed")


def test_relative_import_outside_a_package_advises_an_init_file(runner, error_of, tmp_path, clean_import_path):
    (tmp_path / "blocks.py").write_text(BLOCKS)
    (tmp_path / "loose_net.py").write_text(NET.format(dots=".", depth=2))
    check(runner, error_of, ["rf", f"{tmp_path}/loose_net.py:Net"], (),
                        "relative import", "has no __init__.py")


def test_module_spec_not_found_says_where_it_looked(runner, error_of, tmp_path, monkeypatch, clean_import_path):
    monkeypatch.chdir(tmp_path)
    check(runner, error_of, ["rf", "nopkg_i13.net:Net"], (), "No module named 'nopkg_i13'",
                        f"current folder {tmp_path.resolve()}", "path/to/nopkg_i13/net.py:Net")


def test_package_named_like_an_imported_module_is_refused_not_shadowed(runner, error_of, tmp_path, clean_import_path):
    (tmp_path / "click").mkdir()
    (tmp_path / "click" / "__init__.py").write_text("")
    (tmp_path / "click" / "blocks.py").write_text(BLOCKS)
    (tmp_path / "click" / "net.py").write_text(NET.format(dots=".", depth=2))
    check(runner, error_of, ["rf", f"{tmp_path}/click/net.py:Net"], (),
                        "as the package 'click'", "Rename the package folder")
    import click
    assert hasattr(click, "ClickException")  # the real click is still the one imported
