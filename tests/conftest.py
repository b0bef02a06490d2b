import json
import os
import signal
import textwrap

import pytest
import torch

# Two cores are shared by the whole suite: one intra-op thread per test process keeps it predictable.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def machine_cache(tmp_path_factory):
    """`cnnscope bench` reads the machine's peak and bandwidth from cnnscope's cache folder, measuring
    them (seconds) when they are not there: in tests a folder of the session's, holding made-up ones
    (tests/test_roofline.py measures and caches)."""
    from cnnscope.runs import machine

    folder = tmp_path_factory.mktemp("cache")
    record = {"peak_flops_per_s": 1e11, "peak_kernel": "matmul 2048x2048", "bandwidth_bytes_per_s": 2e10, "load_average": 0.5, "threads": 1,
              "measured_at": "2026-01-01T00:00:00"}
    (folder / machine.CACHE_FILE).write_text(json.dumps({machine.machine_key(torch.device("cpu")): record}))
    os.environ[machine.CACHE_ENV] = str(folder)


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture
def error_of():
    """error_of(result): the CnnscopeError a command of the CLI ended with (exit code 2), for a test
    about which error it is (its kind, the arguments it names), not about its wording."""
    def error_of(result):
        assert result.exit_code == 2, result.output
        return result.exception.__context__.error  # the runner caught click's exit from the UserError it showed

    return error_of


# A user model file (not a zoo model) for the training and run-folder tests.
TINY_MODEL = textwrap.dedent('''
    import torch.nn as nn

    class Tiny(nn.Module):
        """BN and dropout, so that resuming must restore running stats and the RNG."""

        def __init__(self, num_classes=10, width=8):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.drop = nn.Dropout(0.3)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.fc(self.drop(self.features(x)))
''')


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny_model.py"
    path.write_text(TINY_MODEL)
    return f"{path}:Tiny"


# ---- interrupting a training run at a batch -------------------------------------------------------

def sigint():
    """A real Ctrl-C to this process (the training loop's stop request)."""
    os.kill(os.getpid(), signal.SIGINT)


class LoaderAt:
    """Wraps a training loader; calls `action()` before batch `batch` of epoch `epoch` (e.g. sigint,
    or raising an error: a crash)."""

    def __init__(self, loader, epoch, batch, action=sigint):
        self.loader, self.at, self.action, self.epoch = loader, (epoch, batch), action, 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if (self.epoch, i) == self.at:
                self.action()
            yield batch


def wrap_training_loaders(monkeypatch, wrap):
    """Every training loader that runs.loaders.make_loader makes comes wrapped: wrap(loader)."""
    from cnnscope.runs import loaders

    make_loader = loaders.make_loader

    def patched(split, dataset, **kw):
        loader = make_loader(split, dataset, **kw)
        return wrap(loader) if kw["train"] else loader

    monkeypatch.setattr(loaders, "make_loader", patched)


def pytest_collection_modifyitems(items):
    """The files with multi-process (slow) tests first, each file's tests in their order: the two
    workers (pytest.ini) take the long files early and end together on the quick ones."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
