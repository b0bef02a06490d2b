"""Lines that say what happened: the folder a dataset is actually read from (an image tree's own,
Debian's for Fashion-MNIST, none for the generated `fake`), and "Done in" as the whole command's wall
time, start-up included."""
import os
import re
import subprocess
import sys
import textwrap
import time

from cnnscope.runs import datasets, file_datasets, launch
from cnnscope.runs.datasets import loading_line

IDX_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def test_the_loading_line_names_the_folder_actually_read(tmp_path, monkeypatch):
    assert loading_line("fake", "data") == "generating fake: synthetic images, in memory"
    tree = tmp_path / "photos"
    (tree / "cats").mkdir(parents=True)
    assert loading_line(str(tree), "data", (64, 48)) == (
        f"loading the image-folder tree {tree}/ at 64x48 (the first time at this size: decoding it into its cache, "
        "and its mean/std)")
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    system.mkdir()
    for stem in IDX_STEMS:
        (system / f"{stem}.gz").write_bytes(b"")
    monkeypatch.setattr(file_datasets, "FASHION_MNIST_SYSTEM_DIR", system)
    data = tmp_path / "data"
    assert loading_line("fashion-mnist", data) == (f"loading fashion-mnist from {system}/ (and its mean/std, the "
                                                  "first time)")
    own = data / "fashion-mnist"  # a copy in the data folder comes first, and is named
    own.mkdir(parents=True)
    for stem in IDX_STEMS:
        (own / stem).write_bytes(b"")
    assert loading_line("fashion-mnist", data) == (f"loading fashion-mnist from {own}/ (and its mean/std, the first "
                                                  "time)")
    assert loading_line("cifar10", data) == (f"loading cifar10 from {data / 'cifar-10-batches-py'}/ after downloading "
                                            "or extracting it (and its mean/std, the first time)")
    assert datasets.loads_from_files("fashion-mnist", data)


def test_command_started_is_the_process_start_or_the_launchers():
    code = ("import time; time.sleep(1.5); from cnnscope.runs import launch; "
            "print(time.time() - launch.command_started())")
    env = {k: v for k, v in os.environ.items() if k != launch.STARTED_VAR}
    started = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    tick = 1 / os.sysconf("SC_CLK_TCK")  # the kernel counts a process's start in clock ticks (10 ms)
    assert 1.5 <= float(out.stdout) <= time.time() - started + 2 * tick
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, launch.STARTED_VAR: repr(started - 100)})  # a rank: the launcher's start
    assert 101.5 <= float(out.stdout) <= time.time() - started + 100


def test_done_in_is_the_whole_commands_wall_time(tmp_path):
    """A model whose import takes 3 s (as a heavy import would) trains in well under a second: the
    closing line counts the 3 s, and never more than the command took. The import happens once: the
    test evaluation takes the trained model, not one built again from the run's copy of its source."""
    (tmp_path / "slow_import.py").write_text(textwrap.dedent('''
        import time

        import torch.nn as nn

        with open(IMPORTS_LOG, "a") as log:  # one path, whichever copy of this file runs
            log.write(__name__ + "\\n")
        time.sleep(3)


        class Net(nn.Module):
            def __init__(self, num_classes=10):
                super().__init__()
                self.fc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Linear(4, num_classes))

            def forward(self, x):
                return self.fc(x)
    ''').replace("IMPORTS_LOG", repr(str(tmp_path / "imports.log"))))
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "cnnscope", "train", "slow_import.py:Net", "--dataset", "fake",
                          "--procs", "1", "--train-subset", "32", "--batch-size", "32", "--epochs", "1", "--out",
                          "runs"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    wall = time.time() - started
    assert out.returncode == 0, out.stderr
    done, training = map(float, re.search(r"Done in ([\d.]+)s \(training ([\d.]+)s\)", out.stdout).groups())
    assert training <= 1 and 3 <= done <= wall + 0.5
    assert len((tmp_path / "imports.log").read_text().splitlines()) == 1
