"""Every bad input is one clear paragraph and exit code 2, never a traceback, never a hang (issues 11
and 23); an input that is valid but suspicious is one `warning:` line and the command goes on.

Two tables: (case, command, a fragment the message must hold), CASES for the refusals and WARNINGS
for the warnings. The bad files the commands read (model files whose forward raises or returns a
tuple, corrupt run folders and checkpoints, broken dataset folders) are written once per module into
`world`; `{name}` in a command is one of them.
"""
import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnscope.cli import cli

MODEL_FILE = '''
import sys
import torch
import torch.nn as nn


class Raises(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3)

    def forward(self, x):
        raise ValueError("boom in forward")


class Tuple(Raises):
    def forward(self, x):
        logits = self.conv(x).mean((2, 3))
        return logits, logits


class Dict(Raises):
    def forward(self, x):
        return {"logits": self.conv(x).mean((2, 3))}


class Exits(Raises):
    def forward(self, x):
        sys.exit(4)


class ExitsInInit(nn.Module):
    def __init__(self):
        sys.exit(5)


class NoParams(nn.Module):
    def forward(self, x):
        return x.mean((2, 3)).repeat(1, 4)[:, :10]


class WrongBatch(Raises):
    def forward(self, x):
        return self.conv(x).mean((2, 3)).reshape(1, -1)[:, :10]  # one row, whatever the batch


class IntLogits(Raises):
    def forward(self, x):
        return self.conv(x).mean((2, 3)).long()


class ComplexLogits(Raises):
    def forward(self, x):
        return self.conv(x).mean((2, 3)).to(torch.complex64)
'''

FASHION_FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
                 "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}


def idx_bytes(array: np.ndarray) -> bytes:
    return b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion_mnist(root: Path, size=28, labels=range(4), header_cut=False) -> Path:
    """A 4-train, 2-test Fashion-MNIST folder in IDX format, spoilt as asked."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    labels = np.array(list(labels), dtype=np.uint8)
    arrays = {"train_images": np.full((4, size, size), 100, np.uint8), "train_labels": labels,
              "test_images": np.full((2, size, size), 50, np.uint8), "test_labels": labels[:2]}
    for key, name in FASHION_FILES.items():
        raw = idx_bytes(arrays[key])
        (folder / name).write_bytes(gzip.compress(raw[:6] if header_cut and key == "train_images" else raw))
    return root


def write_cifar10(root: Path, spoil: bytes | None = None, batch=None) -> Path:
    """cifar-10-batches-py/ with 2-image batches; data_batch_1 replaced by `spoil` bytes or `batch`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    if spoil is not None or batch is not None:
        (folder / "data_batch_1").write_bytes(spoil if spoil is not None else pickle.dumps(batch))
    return root


class Planted:
    """A pickle that creates a file when unpickled (the way a planted dataset would run code)."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def write_run(folder: Path, metrics="{}", log=None, summary_bytes=b"model\n") -> Path:
    """A run folder as `cnnscope train` leaves it, as far as compare and update-readme read it."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(metrics)
    (folder / "train_log.csv").write_text(log or "epoch,train_loss,train_acc,val_loss,val_acc\n1,2.3,10,2.3,10\n")
    (folder / "model_summary.txt").write_bytes(summary_bytes)
    return folder


def write_checkpoint(folder: Path, dataset: str, **spoil) -> Path:
    """A checkpoint of the zoo's tiny model as `cnnscope train` writes it (untrained weights), with
    the entries in `spoil` replaced."""
    from cnnscope import zoo

    folder.mkdir(parents=True)
    classes = [f"c{i}" for i in range(10)]
    torch.save({"model_spec": "tiny", "ctor": {}, "model": zoo.build("tiny").state_dict(), "dataset": dataset,
                "mean": [0.5] * 3, "std": [0.25] * 3, "classes": classes, **spoil}, folder / "best.pth")
    return folder / "best.pth"


def nan_weights():
    from cnnscope import zoo

    state = zoo.build("tiny").state_dict()
    next(t for t in state.values() if t.is_floating_point()).fill_(float("nan"))
    return state


def write_tree(root: Path, classes=("a", "b"), spoil=None) -> Path:
    """An image-folder tree of 2 x 2 tiny PNGs per class; `spoil(root)` breaks it."""
    from PIL import Image

    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 50, 100)).save(root / name / f"{i}.png")
    if spoil is not None:
        spoil(root)
    return root


def readme(root: Path, name: str, block: str) -> Path:
    path = root / name
    path.write_text(f"# runs\n\n<!-- {block} -->\n<!-- /{block.split()[0]} -->\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "bad_models.py").write_text(MODEL_FILE)
    (root / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (root / "empty.pth").write_bytes(b"")
    (root / "garbage.pth").write_bytes(b"this is not a checkpoint")
    metrics_ok = json.dumps({"model": "basic", "test_acc": 50.0, "macro_avg": {"precision": 0.5}})
    runs = {
        "run_ok": write_run(root / "runs" / "ok", metrics_ok),
        "run_bad_json": write_run(root / "runs" / "bad_json", '{"test_acc": 5'),
        "run_json_list": write_run(root / "runs" / "json_list", "[1, 2]"),
        "run_text_number": write_run(root / "runs" / "text_number", '{"test_acc": "high"}'),
        "run_text_macs": write_run(root / "runs" / "text_macs", '{"macs": "13.7 M"}'),
        "run_lr_text": write_run(root / "runs" / "lr_text", '{"lr_per_step": [0.1, "fast"]}'),
        "run_avg_list": write_run(root / "runs" / "avg_list", '{"macro_avg": [0.5, 0.5]}'),
        "run_log_text": write_run(root / "runs" / "log_text", metrics_ok,
                                  "epoch,train_loss,train_acc,val_loss,val_acc\n1,2.3,10,2.3,10\n2,2.2,11,2.2,abc\n"),
        "run_short_log": write_run(root / "runs" / "short_log", metrics_ok, "epoch,train_loss\n1,2.3\n"),
        "run_latin1": write_run(root / "runs" / "latin1", metrics_ok, summary_bytes=b"caf\xe9 model\n"),
        "run_huge_int": write_run(root / "runs" / "huge_int", '{"test_acc": 1' + "0" * 5000 + "}"),
        "run_huge_acc": write_run(root / "runs" / "huge_acc", '{"test_acc": 1' + "0" * 400 + "}"),
        "run_deep": write_run(root / "runs" / "deep", "[" * 100_000 + "]" * 100_000),
    }
    fake_run = write_checkpoint(root / "fake_run" / "checkpoints", "fake").parent.parent
    (fake_run / "metrics.json").write_text('{"test_acc": 1')  # cut off, beside a good checkpoint
    (fake_run / ".cnnscope.lock").touch()  # a run folder: evaluate writes into it
    data = root / "data"
    paths = {
        "models": root / "bad_models.py", "exits": root / "exits_at_import.py",
        "empty_pth": root / "empty.pth", "garbage_pth": root / "garbage.pth", "fake_run": fake_run,
        "fmnist_ckpt": write_checkpoint(root / "fmnist_run" / "checkpoints", "fashion-mnist"),
        "idx_cut": write_fashion_mnist(data / "idx_cut", header_cut=True),
        "idx_40": write_fashion_mnist(data / "idx_40", size=40),
        "idx_labels": write_fashion_mnist(data / "idx_labels", labels=range(190, 194)),
        "cifar_garbage": write_cifar10(data / "cifar_garbage", spoil=b"\x80\x04garbage, not a pickle"),
        "cifar_list": write_cifar10(data / "cifar_list", batch=[1, 2, 3]),
        "cifar_no_data": write_cifar10(data / "cifar_no_data", batch={"labels": [0, 1]}),
        "cifar_planted": write_cifar10(data / "cifar_planted", batch=Planted(root / "PWNED")),
        "pwned": root / "PWNED",
        "tree_flat": write_tree(data / "tree_flat", classes=(), spoil=lambda t: t.mkdir() or (t / "1.png").touch()),
        "tree_empty_class": write_tree(data / "tree_empty_class", spoil=lambda t: (t / "c").mkdir()),
        "tree_bad_image": write_tree(data / "tree_bad_image", spoil=lambda t: (t / "b" / "x.jpg").write_bytes(b"no")),
        "tree_no_train": write_tree(data / "tree_no_train" / "test").parent,
        "tree_unknown_class": write_tree(data / "tree_unknown_class" / "train",
                                         spoil=lambda t: write_tree(t.parent / "val", classes=("a", "zebra"))).parent,
        "tree_dangling": write_tree(data / "tree_dangling", spoil=lambda t: (t / "a" / "ghost.png").symlink_to("gone.png")),
        "tree_fifo": write_tree(data / "tree_fifo", spoil=lambda t: os.mkfifo(t / "b" / "pipe.png")),
        "ckpt_mean_text": write_checkpoint(root / "mean_text", "fake", mean="0.5"),
        "ckpt_model_text": write_checkpoint(root / "model_text", "fake", model="weights"),
        "ckpt_std_zero": write_checkpoint(root / "std_zero", "fake", std=[0.0, 0.25, 0.25]),
        "ckpt_nan": write_checkpoint(root / "nan", "fake", model=nan_weights()),
        "readme_long": readme(root, "long.md", "MODEL_SUMMARY run=" + "a" * 100_000),
        "readme_ctor": readme(root, "ctor.md", "RF spec=basic ctor=width"),
        "readme_folder": root / "runs",
        "readme_bad_json": readme(root, "bad_json.md", "RUN_METRICS run=runs/bad_json"),
        "readme_latin1": readme(root, "latin1.md", "MODEL_SUMMARY run=runs/latin1"),
        "readme_avg_list": readme(root, "avg_list.md", "CLS_REPORT run=runs/avg_list"),
        "readme_combined": readme(root, "combined.md", 'COMBINED_SUMMARY_TABLE runs="runs/ok runs/text_number"'),
        "out": root / "out",
        **runs,
    }
    return {k: str(v) for k, v in paths.items()}


TRAIN = ("--dataset", "fake", "--epochs", "1", "--procs", "1", "--out", "{out}")
OUT = ("--out", "{out}")

CASES = [
    # models
    ("models-format", ["models", "--format", "xml"], "Invalid value for '--format'"),
    # summary
    ("summary-forward-raises", ["summary", "{models}:Raises"], "ValueError: boom in forward"),
    ("summary-forward-exits", ["summary", "{models}:Exits"], "SystemExit: 4"),
    ("summary-file-exits", ["summary", "{exits}:Net"], "SystemExit: 3"),
    ("summary-constructor-exits", ["summary", "{models}:ExitsInInit"], "SystemExit: 5"),
    ("summary-input-zero", ["summary", "basic", "--input", "0", "32", "32"], "C H W, three whole numbers of at least 1"),
    ("summary-input-negative", ["summary", "basic", "--input", "-3", "32", "32"], "got -3 32 32"),
    ("summary-input-channels", ["summary", "basic", "--input", "1", "32", "32"], "takes 3-channel images"),
    ("summary-input-huge", ["summary", "basic", "--input", "3", "100000", "100000"], "GB is available"),
    ("summary-unknown-model", ["summary", "nosuch"], "Unknown model 'nosuch'"),
    ("summary-bad-ctor", ["summary", "basic", "--ctor", "width"], "Bad ctor item"),
    # rf
    ("rf-forward-raises", ["rf", "{models}:Raises"], "ValueError: boom in forward"),
    ("rf-input-channels", ["rf", "basic", "--input", "1", "32", "32"], "takes 3-channel images"),
    ("rf-input-zero", ["rf", "basic", "--input", "3", "0", "32"], "C H W, three whole numbers of at least 1"),
    ("rf-input-huge", ["rf", "basic", "--input", "3", "100000", "100000"], "GB is available"),
    ("rf-device-unknown", ["rf", "basic", "--device", "tpu"], "Unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
    # bench
    ("bench-input-huge", ["bench", "basic", "--procs", "1", "--input", "3", "100000", "100000"], "GB is available"),
    ("bench-tuple", ["bench", "{models}:Tuple", "--procs", "1"], "returns a tuple of 2"),
    ("bench-no-params", ["bench", "{models}:NoParams", "--procs", "1"], "no trainable parameters"),
    ("bench-forward-raises", ["bench", "{models}:Raises", "--procs", "1"], "boom in forward"),
    ("bench-device-index", ["bench", "basic", "--device", "cuda:99"], "Device 'cuda:99' was asked for"),
    ("bench-quiet-verbose", ["bench", "basic", "--quiet", "--verbose"], "--quiet and --verbose exclude each other"),
    # train
    ("train-lr-negative", ["train", "basic", "--recipe", "lr=-1", *TRAIN], "lr=-1 is not allowed: lr takes a number in (0, 1e+06]"),
    ("train-batch-zero", ["train", "basic", "--recipe", "batch_size=0", *TRAIN], "batch_size=0 is not allowed"),
    ("train-hflip-text", ["train", "basic", "--augment", "hflip=abc", *TRAIN], "hflip='abc' is not allowed"),
    ("train-scale-number", ["train", "basic", "--augment", "scale=5", *TRAIN], "scale=5 is not allowed"),
    ("train-scale-reversed", ["train", "basic", "--augment", "scale=(1.2,0.8)", *TRAIN], "ascending order"),
    ("train-momentum", ["train", "basic", "--recipe", "momentum=1.5", *TRAIN], "momentum takes a number in [0, 1)"),
    ("train-milestones", ["train", "swrn", "--recipe", "step_milestones=[0.5,2]", *TRAIN], "step_milestones"),
    ("train-tau-end", ["train", "basic", "--recipe", "tau_start=1", *TRAIN], "tau_end must be > 0"),
    ("train-unknown-field", ["train", "basic", "--recipe", "warmup=3", *TRAIN], "Unknown recipe field(s) warmup"),
    ("train-subset-procs", ["train", "basic", "--train-subset", "1", *TRAIN[:4], "--procs", "2", "--out", "{out}"],
     "cannot be shared by 2 processes"),
    ("train-forward-raises", ["train", "{models}:Raises", *TRAIN], "boom in forward"),
    ("train-device-unknown", ["train", "basic", *TRAIN, "--device", "gpu"], "Unknown device 'gpu'"),
    ("train-tuple", ["train", "{models}:Tuple", *TRAIN], "one logits tensor"),
    ("train-dict", ["train", "{models}:Dict", *TRAIN], "returns a dict of 1"),
    ("train-no-params", ["train", "{models}:NoParams", *TRAIN], "no trainable parameters"),
    ("train-file-exits", ["train", "{exits}:Net", *TRAIN], "SystemExit: 3"),
    ("train-resume-empty", ["train", "--resume", "{empty_pth}", "--procs", "1"], "the file is empty"),
    ("train-cifar-garbage", ["train", "basic", "--dataset", "cifar10", "--data-dir", "{cifar_garbage}", "--procs", "1",
                             "--out", "{out}"], "data_batch_1 is not a CIFAR batch"),
    # evaluate
    ("train-tree-missing", ["train", "basic", *TRAIN, "--dataset", "{out}/no/such/tree"], "does not exist"),
    ("train-tree-flat", ["train", "basic", *TRAIN, "--dataset", "{tree_flat}"], "has no class folders"),
    ("train-tree-empty-class", ["train", "basic", *TRAIN, "--dataset", "{tree_empty_class}"], "/c has no images"),
    ("train-tree-bad-image", ["train", "basic", *TRAIN, "--dataset", "{tree_bad_image}"], "x.jpg cannot be read"),
    ("train-tree-no-train", ["train", "basic", *TRAIN, "--dataset", "{tree_no_train}"], "but no train/ folder"),
    ("train-tree-unknown-class", ["train", "basic", *TRAIN, "--dataset", "{tree_unknown_class}"],
     "class folders that train/ lacks: zebra"),
    ("train-image-size-text", ["train", "basic", *TRAIN, "--image-size", "big"], "is not N or HxW"),
    ("train-cutout-too-big", ["train", "basic", *TRAIN, "--image-size", "8", "--augment", "cutout=16"],
     "cutout=16 does not fit 8x8 images"),
    ("train-mnist-missing", ["train", "basic", *TRAIN, "--dataset", "mnist", "--data-dir", "{out}"],
     "never downloads it"),
    ("evaluate-empty", ["evaluate", "{empty_pth}"], "the file is empty"),
    ("evaluate-garbage", ["evaluate", "{garbage_pth}"], "could not be read"),
    ("evaluate-corrupt-metrics", ["evaluate", "{fake_run}"], "metrics.json is not valid JSON"),
    ("evaluate-device-index", ["evaluate", "{fmnist_ckpt}", "--device", "cuda:99"], "Device 'cuda:99' was asked for"),
    ("evaluate-labels", ["evaluate", "{fmnist_ckpt}", "--data-dir", "{idx_labels}"], "labels 190..193 outside the 10"),
    # augment: dataset folders
    ("augment-idx-cut", ["augment", "basic", "--dataset", "fashion-mnist", "--data-dir", "{idx_cut}", *OUT],
     "its header needs 16 bytes, the file has 6"),
    ("augment-idx-40x40", ["augment", "basic", "--dataset", "fashion-mnist", "--data-dir", "{idx_40}", *OUT],
     "28x28 images"),
    ("augment-labels", ["augment", "basic", "--dataset", "fashion-mnist", "--data-dir", "{idx_labels}", *OUT],
     "labels 190..193 outside the 10 classes"),
    ("augment-cifar-list", ["augment", "basic", "--dataset", "cifar10", "--data-dir", "{cifar_list}", *OUT],
     "holds a list, not a dict"),
    ("augment-cifar-no-data", ["augment", "basic", "--dataset", "cifar10", "--data-dir", "{cifar_no_data}",
                               *OUT], "KeyError: 'data'"),
    ("augment-cifar-planted", ["augment", "basic", "--dataset", "cifar10", "--data-dir", "{cifar_planted}",
                               *OUT], "refers to io.open"),
    ("augment-empty-run", ["augment", "{empty_pth}"], "the file is empty"),
    # compare
    ("compare-bad-json", ["compare", "{run_bad_json}", "--out", "{out}"], "metrics.json is not valid JSON"),
    ("compare-json-list", ["compare", "{run_json_list}", "--out", "{out}"], "holds a JSON list, not an object"),
    ("compare-text-number", ["compare", "{run_text_number}", "--out", "{out}"], "'high' as test_acc"),
    ("compare-text-macs", ["compare", "{run_text_macs}", "--out", "{out}"], "'13.7 M' as macs"),
    ("compare-lr-text", ["compare", "{run_lr_text}", "--out", "{out}"], "an lr_per_step that is not a list of numbers"),
    ("compare-log-text", ["compare", "{run_log_text}", "--out", "{out}"],
     "'abc' in the number column val_acc on line 3"),
    ("compare-log-columns", ["compare", "{run_short_log}", "--out", "{out}"], "has no column train_acc"),
    ("compare-not-a-run", ["compare", "{models}", "--out", "{out}"], "is not a finished run folder"),
    # gates, sharing, attribute
    ("gates-no-gates", ["gates", "basic"], "has no entropy gates"),
    ("gates-empty", ["gates", "{empty_pth}"], "the file is empty"),
    ("sharing-no-banks", ["sharing", "basic"], "no soft-shared layers"),
    ("sharing-threshold", ["sharing", "swrn", "--threshold", "2"], "Invalid value for '--threshold'"),
    ("attribute-forward-raises", ["attribute", "{models}:Raises", "--n", "1", *OUT], "boom in forward"),
    ("attribute-tuple", ["attribute", "{models}:Tuple", "--n", "1", *OUT], "returns a tuple of 2"),
    ("attribute-garbage", ["attribute", "{garbage_pth}"], "could not be read"),
    ("attribute-device-index", ["attribute", "basic", "--device", "cuda:99", *OUT],
     "Device 'cuda:99' was asked for but this machine has"),
    ("attribute-seed-text", ["attribute", "basic", "--seed", "one", *OUT], "Invalid value for '--seed'"),
    ("gates-device-unknown", ["gates", "egrr", "--device", "cuda:x", *OUT], "Unknown device 'cuda:x'"),
    ("attribute-image-missing", ["attribute", "{fmnist_ckpt}", "--image", "{out}/missing.png", *OUT],
     "missing.png does not exist. Give an image file or a folder of images. (On the command line: image_paths is --image PATH.)"),
    ("attribute-image-garbage", ["attribute", "{fmnist_ckpt}", "--image", "{garbage_pth}", *OUT],
     "cannot be read"),
    # export
    ("export-garbage", ["export", "{garbage_pth}"], "could not be read"),
    ("export-format", ["export", "{garbage_pth}", "--to", "pdf"], "Invalid value for '--to'"),
    # own runs
    ("train-init-from-garbage", ["train", "basic", "--dataset", "fake", "--procs", "1", "--init-from", "{garbage_pth}",
                                 *OUT], "could not be read"),
    ("rf-image-without-erf", ["rf", "basic", "--image", "{garbage_pth}"], "Image files are for the effective RF"),
    ("attribute-layer-unknown", ["attribute", "basic", "--layer", "nope", "--n", "1", *OUT],
     "Net has no layer 'nope'. Layers a layer method can use"),
    ("attribute-layer-not-a-map", ["attribute", "basic", "--layer", "fc", "--n", "1", *OUT],
     "Layer fc of Net gives a tensor of shape (1, 10), not an (N, C, H, W) map"),
    ("attribute-ig-tolerance", ["attribute", "basic", "--ig-tolerance", "0"], "Invalid value for '--ig-tolerance'"),
    ("attribute-sanity-no-params", ["attribute", "{models}:NoParams", "--sanity", "--n", "1", *OUT],
     "no weights to randomise"),
    # sweep
    ("sweep-bad-param", ["sweep", "--trials", "2", "--param", "lr=log:0:1", "basic", "--dataset", "fake", *OUT],
     "a log scale needs LOW > 0"),
    ("sweep-no-param", ["sweep", "--trials", "2", "basic", *OUT], "A sweep needs at least one param"),
    # update-readme
    ("readme-bad-json", ["update-readme", "{readme_bad_json}"], "metrics.json is not valid JSON"),
    ("readme-not-utf8", ["update-readme", "{readme_latin1}"], "model_summary.txt is not UTF-8 text (byte 0xe9"),
    ("readme-avg-list", ["update-readme", "{readme_avg_list}", "--check"], "as macro_avg, which should be an object"),
    ("readme-combined", ["update-readme", "{readme_combined}"], "'high' as test_acc"),
    # issue 23: a model output of the wrong batch size or dtype, in train and bench
    ("train-wrong-batch", ["train", "{models}:WrongBatch", *TRAIN], "returns 1 rows of logits for a batch of 2 images"),
    ("train-int-logits", ["train", "{models}:IntLogits", *TRAIN], "returns logits of dtype torch.int64"),
    ("train-complex-logits", ["train", "{models}:ComplexLogits", *TRAIN], "returns logits of dtype torch.complex64"),
    ("bench-wrong-batch", ["bench", "{models}:WrongBatch", "--procs", "1"], "one row per image"),
    ("bench-int-logits", ["bench", "{models}:IntLogits", "--procs", "1"], "real floating-point scores"),
    # numbers: seeds in [0, 2^63), finite ranged floats, bounded epochs and rates
    ("train-seed-negative", ["train", "basic", *TRAIN, "--seed", "-1"], "-1 is not in the range 0<=x<=9223372036854775807"),
    ("train-seed-23-digits", ["train", "basic", *TRAIN, "--seed", "1" * 23], "is not in the range 0<=x"),
    ("attribute-seed-negative", ["attribute", "basic", "--seed", "-5", *OUT], "is not in the range 0<=x"),
    ("sweep-sampler-seed-negative", ["sweep", "--trials", "2", "--param", "lr=log:0.01:0.1", "--sampler-seed", "-1",
                                     "basic", *OUT], "is not in the range 0<=x"),
    ("sweep-trial-seed-negative", ["sweep", "--trials", "2", "--param", "lr=log:0.01:0.1", "basic", "--seed", "-1",
                                   *OUT], "is not in the range 0<=x"),
    ("sweep-param-inf", ["sweep", "--trials", "2", "--param", "lr=float:0.1:1e999", "basic", "--dataset", "fake", *OUT],
     "inf is not a value of lr"),
    ("train-lr-huge", ["train", "basic", *TRAIN, "--lr", "1e300"], "lr=1e+300 is not allowed: lr takes a number in (0, 1e+06]"),
    ("train-lr-inf", ["train", "basic", *TRAIN, "--lr", "inf"], "'inf' is not a finite number"),
    ("train-epochs-huge", ["train", "basic", *TRAIN[:2], *TRAIN[4:], "--epochs", "99999999999999999999"],
     "epochs=99999999999999999999 is not allowed: epochs takes a whole number in [1, 10000]"),
    ("train-epochs-recipe", ["train", "basic", *TRAIN[:2], *TRAIN[4:], "--recipe", "epochs=10001"], "in [1, 10000]"),
    ("train-val-split-nan", ["train", "basic", *TRAIN, "--val-split", "nan"], "'nan' is not a finite number"),
    ("sharing-threshold-nan", ["sharing", "swrn", "--threshold", "nan"], "'nan' is not a finite number"),
    ("attribute-ig-tolerance-nan", ["attribute", "basic", "--ig-tolerance", "nan"], "'nan' is not a finite number"),
    ("attribute-sanity-threshold-nan", ["attribute", "basic", "--sanity-threshold", "nan"], "not a finite number"),
    ("export-tolerance-nan", ["export", "{garbage_pth}", "--tolerance", "nan"], "'nan' is not a finite number"),
    # sizes and costs: estimated before allocating, bounded before starting
    ("train-image-size-huge", ["train", "basic", *TRAIN, "--image-size", "100000"],
     "fake at 100000x100000 needs about 249,600.0 GB"),
    ("rf-iterations-huge", ["rf", "ectied", "--ctor", "iterations=100000"], "more than the 1000 this model allows"),
    # constructor keywords and run names
    ("summary-num-classes-0", ["summary", "basic", "--ctor", "num_classes=0"], "num_classes=0 builds no classifier"),
    ("summary-ctor-twice", ["summary", "basic", "--ctor", "width=2", "--ctor", "width=3"], "width is given twice"),
    ("train-recipe-twice", ["train", "basic", *TRAIN, "--recipe", "momentum=0.5", "--recipe", "momentum=0.8"],
     "momentum is given twice"),
    ("train-name-empty", ["train", "basic", *TRAIN, "--name", ""], "name='' is no run folder name"),
    ("train-name-dot", ["train", "basic", *TRAIN, "--name", "."], "name='.' is no run folder name"),
    ("train-name-path", ["train", "basic", *TRAIN, "--name", "../escape"], "without slashes"),
    # checkpoint entries of the wrong kind
    ("evaluate-mean-text", ["evaluate", "{ckpt_mean_text}", *OUT], "mean: a list of numbers per channel"),
    ("evaluate-model-text", ["evaluate", "{ckpt_model_text}", *OUT], "model: a state_dict of named tensors"),
    # hostile run files
    ("compare-huge-int", ["compare", "{run_huge_int}", *OUT], "holds a number cnnscope does not read"),
    ("compare-huge-number", ["compare", "{run_huge_acc}", *OUT], "too large for a number cnnscope shows"),
    ("compare-deep-nesting", ["compare", "{run_deep}", *OUT], "nests lists or objects deeper than cnnscope reads"),
    # README: a 100,000-character marker value, a bad ctor= located, a folder given as README
    ("readme-long-argument", ["update-readme", "{readme_long}", "--check"], "(100,000 characters) is no path"),
    ("readme-ctor-located", ["update-readme", "{readme_ctor}", "--check"], "ctor.md:3: block RF: Bad ctor item 'width'"),
    ("readme-folder", ["update-readme", "{readme_folder}"], "is a folder, not a file"),
    ("attribute-image-device", ["attribute", "{fmnist_ckpt}", "--image", "/dev/null", *OUT],
     "Image /dev/null is a character device, not an image file"),
]

# valid but suspicious: the command goes on, and says what is odd in one `warning:` line
WARNINGS = [
    ("evaluate-nan-weights", ["evaluate", "{ckpt_nan}", "--device", "cpu", *OUT], "holds weights that are NaN or infinite"),
    ("evaluate-std-zero", ["evaluate", "{ckpt_std_zero}", "--device", "cpu", *OUT], "a std of 0 (or not finite)"),
    ("summary-never-called", ["summary", "ectied", "--ctor", "iterations=-3"], "the forward pass never calls block"),
    ("bench-never-called", ["bench", "ectied", "--ctor", "iterations=0", "--procs", "1", "--steps", "1",
                            "--batch-size", "2"], "never calls block: 35,969 parameters take no part"),
    ("augment-tree-dangling-link", ["augment", "basic", "--dataset", "{tree_dangling}", "--n", "2", *OUT],
     "skipped 1 image name(s) that are not regular files: {tree_dangling}/a/ghost.png (broken symbolic link)"),
    ("augment-tree-fifo", ["augment", "basic", "--dataset", "{tree_fifo}", "--n", "2", *OUT],
     "{tree_fifo}/b/pipe.png (FIFO)"),
]


@pytest.mark.parametrize("case, args, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_paragraph_and_exit_2(runner, world, case, args, fragment):
    result = runner.invoke(cli, [a.format(**world) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert fragment in " ".join(result.output.split()), result.output  # rich may wrap lines


@pytest.mark.parametrize("case, args, fragment", WARNINGS, ids=[c[0] for c in WARNINGS])
def test_suspicious_input_is_a_warning_line(runner, world, case, args, fragment):
    result = runner.invoke(cli, [a.format(**world) for a in args])
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines() if "warning:" in line]
    assert any(fragment.format(**world) in line for line in lines), result.output


def test_the_table_covers_every_command():
    assert {args[0] for _, args, _ in CASES} == set(cli.commands)
    assert len(CASES) >= 40


def test_a_planted_cifar_pickle_runs_no_code(runner, world, tmp_path):
    payload = pickle.dumps(Planted(tmp_path / "proof"))
    pickle.loads(payload)  # unpickled by plain pickle, the payload does create its file ...
    assert (tmp_path / "proof").exists()
    result = runner.invoke(cli, ["train", "basic", "--dataset", "cifar10", "--data-dir", world["cifar_planted"],
                                 "--procs", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "refers to io.open" in result.output
    assert not Path(world["pwned"]).exists()  # ... cnnscope's loader does not


def test_a_corrupt_stats_cache_is_computed_again(runner, tmp_path):
    data_dir = write_fashion_mnist(tmp_path / "data")
    cache = data_dir / "stats" / "fashion-mnist_0.1_0.json"
    cache.parent.mkdir()
    cache.write_text('{"n_train": 3, "mean": [0.1, ')
    result = runner.invoke(cli, ["augment", "basic", "--dataset", "fashion-mnist", "--data-dir", str(data_dir),
                                 "--n", "2", "--out", str(tmp_path / "out"), "--format", "json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(cache.read_text())
    assert stats["n_train"] == 4 and len(stats["mean"]) == 3  # 4 images, none held out (round(0.4) = 0)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left
