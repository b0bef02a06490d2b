"""Networks laid out as real repositories lay them out, each trained, resumed and inspected as a user
would: `cnnscope train` with the default --procs (2 processes for a batch of 128) from the repository
root, `train --resume` from that root, then evaluate, attribute and export from another folder.

The layouts (all written here, none copied): a `models/` package whose __init__ imports its siblings;
a LeNet whose forward flattens with `x.view(x.size(0), -1)` (it fails on channels_last batches, so it
must get contiguous ones); a builder function that needs `num_classes`; a `create_model(name,
**kwargs)` factory module named by its module path. Training and resuming run in fresh processes from
the repository folder, where `python -m` puts that folder first on the import path, as for a user.
"""
import csv
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cnnscope.cli import cli

CONV_BN = '''
import torch.nn as nn


def conv_bn(i, o, stride=1):
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
'''
RESNET = '''
import torch.nn as nn

from .blocks import conv_bn


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class ResNetTiny(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 2), Residual(8), conv_bn(8, 16, 2), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))
'''
LENET = '''
import torch.nn as nn
import torch.nn.functional as F


class LeNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)  # a 5x5 map: a view of a channels_last tensor cannot do this
        return self.fc2(F.relu(self.fc1(x)))
'''
BUILDER = CONV_BN + '''

def build_net(num_classes, width=8):
    """No default for num_classes: the caller must say how many classes."""
    return nn.Sequential(conv_bn(3, width, 2), conv_bn(width, 2 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, num_classes))
'''
FACTORY = '''
from .nets import SmallNet, WideNet

_MODELS = {"small": SmallNet, "wide": WideNet}


def create_model(name, **kwargs):
    return _MODELS[name](**kwargs)
'''
FACTORY_NETS = CONV_BN + '''

class SmallNet(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, width, 2), conv_bn(width, width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class WideNet(SmallNet):
    def __init__(self, num_classes=10):
        super().__init__(num_classes, width=32)
'''

# name -> (files of the repository, the SPEC and its --ctor arguments as typed from its root)
LAYOUTS = {
    "models-package": ({"models/__init__.py": "from .blocks import conv_bn\nfrom .resnet import ResNetTiny\n",
                        "models/blocks.py": CONV_BN, "models/resnet.py": RESNET},
                       ["models/resnet.py:ResNetTiny"]),
    "view-lenet": ({"lenet.py": LENET}, ["lenet.py:LeNet"]),
    "builder": ({"nets.py": BUILDER}, ["nets.py:build_net"]),
    "factory": ({"pkg/__init__.py": "", "pkg/factory.py": FACTORY, "pkg/nets.py": FACTORY_NETS},
                ["pkg.factory:create_model", "--ctor", "name='small'"]),
}
QUICK = ["--dataset", "fake", "--train-subset", "256"]  # 2 batches of 128 an epoch: 2 processes of 64


def cnnscope(args, cwd):
    """`python -m cnnscope ARGS` in a fresh process started in `cwd`, as a user runs it there (the
    installed cnnscope; no PYTHONPATH, so the repository's folder is what `python -m` puts first)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "cnnscope", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def in_folder(runner, args, cwd):
    """`cnnscope ARGS` in this process, from the folder `cwd`."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, list(map(str, args)), catch_exceptions=False)
    finally:
        os.chdir(old)


def log_rows(run: Path) -> list:
    with open(run / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", params=list(LAYOUTS))
def repository_run(request, tmp_path_factory):
    """One layout's repository, trained for 1 epoch from its root with the default --procs, then
    resumed from its root to 2 epochs: (layout, repository, run folder, train and resume outputs)."""
    layout = request.param
    files, spec = LAYOUTS[layout]
    root = tmp_path_factory.mktemp(layout)
    repository = root / "repository"
    for name, text in files.items():
        (repository / name).parent.mkdir(parents=True, exist_ok=True)
        (repository / name).write_text(textwrap.dedent(text))
    run = root / "runs" / layout
    started = time.time()
    trained = cnnscope(["train", *spec, *QUICK, "--epochs", 1, "--out", run.parent, "--name", layout], repository)
    trained.wall = time.time() - started
    assert trained.returncode == 0, trained.stdout + trained.stderr
    resumed = cnnscope(["train", "--resume", run, "--epochs", 2, "--trust-spec"], repository)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return layout, repository, run, trained, resumed


@pytest.mark.slow
def test_trains_in_two_processes_and_resumes_from_the_repository_root(repository_run):
    layout, repository, run, trained, resumed = repository_run
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and "cpu x2, 1 epochs x 2 batches of 128 (2 x 64)" in trained.stdout
    # the launching command's wall time, start-up included (the ranks' training takes about a second)
    done = int(re.search(r"Done in (\d+)s \(training \d+s\)", trained.stdout).group(1))
    assert 0.5 * trained.wall <= done <= trained.wall + 0.5
    assert [row["epoch"] for row in log_rows(run)] == ["1", "2"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["lr_per_step"]) == 4 and metrics["params"] > 0
    assert "Resuming at epoch 2" in resumed.stdout
    assert "warning" not in resumed.stderr  # the package on the path is the run's own code: nothing to say
    copied = {str(p.relative_to(run / "model_source")) for p in (run / "model_source").rglob("*.py")}
    assert copied >= {name for name in LAYOUTS[layout][0] if name.endswith(".py") and "__init__" not in name}
    if layout == "view-lenet":  # contiguous batches and weights, said once in each run and recorded
        assert config["channels_last"] is False and "view size is not compatible" in config["contiguous_because"]
        for output in (trained, resumed):
            assert output.stdout.count("lenet.py:LeNet runs on contiguous batches and weights: its forward fails "
                                       "on channels_last batches only (RuntimeError: view size") == 1
    else:
        assert config["channels_last"] is True and "contiguous_because" not in config


@pytest.mark.slow
def test_evaluate_attribute_and_export_from_another_folder(repository_run, runner, tmp_path):
    layout, repository, run, _, _ = repository_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = in_folder(runner, ["evaluate", run, "--trust-spec", "--format", "json"], elsewhere)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["num_test"] == 128 and sum(map(sum, report["confusion"])) == 128
    assert report["test_acc"] == pytest.approx(json.loads((run / "metrics.json").read_text())["test_acc"])
    attributed = in_folder(runner, ["attribute", run, "--trust-spec", "--n", 2, "--method", "saliency",
                                    "--method", "ixg", "--format", "json"], elsewhere)
    assert attributed.exit_code == 0, attributed.output
    maps = json.loads(attributed.stdout)
    assert maps["methods"] == ["saliency", "ixg"] and len(maps["images"]) == 2
    assert Path(maps["figures"]["attributions"]).is_file()
    exported = in_folder(runner, ["export", run, "--trust-spec", "--format", "json"], elsewhere)
    assert exported.exit_code == 0, exported.output
    result = json.loads(exported.stdout)
    assert Path(result["path"]) == run / "export" / f"{layout}.pt2" and Path(result["path"]).stat().st_size > 0
    assert result["images"] == 16 and result["max_abs_diff"] <= result["tolerance"]
