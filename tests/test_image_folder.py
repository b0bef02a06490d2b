"""Image-folder trees (cnnscope/runs/image_folder.py) and the named datasets read from files
(cnnscope/runs/file_datasets.py): layouts, split rules, resizing, the cache, statistics, training."""
import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cnnscope.cli import cli
from cnnscope.errors import CnnscopeError, DataError
from cnnscope.runs import image_folder
from cnnscope.runs.datasets import Split, fit_channels, load_dataset
from cnnscope.runs.loaders import make_loader

COUNTS = {"ant": 5, "bee": 6, "cow": 7}  # images per class: 18 in all


def colour(label, i):
    """The solid colour of image i of class `label`: its pixels survive any resize exactly."""
    return (40 * label + 10, 5 * i, 200 - 9 * i)


def write_tree(root, counts=COUNTS, size=(40, 48), grey=False):
    """One solid-colour image per file, PNG for even i and JPEG (a quality that keeps a solid colour
    within 1) for odd i; `size` is (H, W)."""
    for label, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixel = colour(label, i)
            image = Image.new("RGB", (size[1], size[0]), pixel)
            image = image.convert("L") if grey else image
            image.save(root / name / f"{i:02d}.{'png' if i % 2 == 0 else 'jpg'}", quality=95)
    return root


def class_counts(ds):
    return torch.bincount(torch.cat([s.labels for s in (ds.train, ds.val, ds.test) if s is not None]),
                          minlength=len(ds.classes)).tolist()


def test_one_tree_classes_counts_and_split_rule(tmp_path):
    tree = write_tree(tmp_path / "tree")
    ds = load_dataset(str(tree), tmp_path / "data", val_split=0.25, image_size=(24, 32))
    assert ds.name == str(tree) and ds.classes == ["ant", "bee", "cow"]
    assert class_counts(ds) == [5, 6, 7]
    # test: round(18 * 0.1) = 2; val: round(16 * 0.25) = 4; train: the other 12
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 4, 2)
    assert ds.input_shape == (3, 24, 32) and ds.train.images.shape == (12, 3, 24, 32)
    # every image is its solid colour at the new size (JPEG within 2 levels)
    for split in (ds.train, ds.val, ds.test):
        for image, label in zip(split.images, split.labels):
            values = image.reshape(3, -1).int()
            assert (values.max(1).values - values.min(1).values <= 2).all()
            assert values[0, 0].item() in range(40 * label + 8, 40 * label + 13)
    # the held-out images do not move with the run's seed or val_split: the test split is the same
    other = load_dataset(str(tree), tmp_path / "data", val_split=0, seed=5, image_size=(24, 32))
    assert other.val is None and len(other.train) == 16 and torch.equal(other.test.images, ds.test.images)


def test_split_folders(tmp_path):
    root = tmp_path / "tree"
    write_tree(root / "train")
    write_tree(root / "test", {"ant": 2, "bee": 1, "cow": 3})
    ds = load_dataset(str(root), tmp_path / "data", val_split=0.5)
    assert ds.test.labels.tolist() == [0, 0, 1, 2, 2, 2] and (len(ds.train), len(ds.val)) == (9, 9)
    write_tree(root / "val", {"bee": 2})  # a val/ folder: val_split no longer applies
    ds = load_dataset(str(root), tmp_path / "data", val_split=0.5)
    assert ds.val.labels.tolist() == [1, 1] and len(ds.train) == 18 and len(ds.test) == 6


def test_grey_tree_is_one_channel_and_repeats_for_rgb_models(tmp_path):
    tree = write_tree(tmp_path / "tree", grey=True)
    ds = load_dataset(str(tree), tmp_path / "data", image_size=(40, 40))
    assert ds.input_shape == (1, 40, 40) and len(ds.mean) == 1
    rgb = fit_channels(ds, 3)
    assert rgb.input_shape == (3, 40, 40) and rgb.mean == ds.mean * 3
    batch = rgb.train.take(torch.tensor([4, 0]))
    assert batch.shape == (2, 3, 40, 40) and torch.equal(batch, ds.train.images[[4, 0]].expand(-1, 3, -1, -1))
    with pytest.raises(DataError) as refused:  # a 1-channel model cannot take RGB images
        fit_channels(load_dataset(str(write_tree(tmp_path / "rgb")), tmp_path / "data"), 1)
    assert refused.value.arguments == ("dataset", "ctor")


def test_cache_is_reused_then_invalidated_by_a_change(tmp_path, monkeypatch):
    tree = write_tree(tmp_path / "tree")
    first = load_dataset(str(tree), tmp_path / "data")
    cache = tree / image_folder.CACHE_FOLDER
    (u8,) = cache.glob("*.u8")
    assert u8.stat().st_size == 18 * 3 * 32 * 32

    def refuse(*args, **kwargs):
        raise AssertionError("the cache was not used: an image was opened")

    monkeypatch.setattr(Image, "open", refuse)
    again = load_dataset(str(tree), tmp_path / "data")
    assert torch.equal(again.train.images, first.train.images) and again.mean == first.mean
    monkeypatch.undo()

    Image.new("RGB", (48, 40), (1, 2, 3)).save(tree / "ant" / "99.png")  # a new file: decoded again
    changed = load_dataset(str(tree), tmp_path / "data")
    assert class_counts(changed) == [6, 6, 7]
    (new_u8,) = cache.glob("*.u8")  # the old cache of this size is gone
    assert new_u8 != u8 and new_u8.stat().st_size == 19 * 3 * 32 * 32
    os.utime(tree / "ant" / "99.png", ns=(1, 1))  # modified (its time): decoded again
    load_dataset(str(tree), tmp_path / "data")
    assert len(list(cache.glob("*.u8"))) == 1 and next(cache.glob("*.u8")) != new_u8


def test_stats_equal_numpy_and_the_disk_loader_equals_memory(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "tree" / name / f"{i}.png")
    ds = load_dataset(str(tmp_path / "tree"), tmp_path / "data", val_split=0.2)
    pixels = ds.train.images.numpy().astype(np.float64) / 255
    assert np.allclose(ds.mean, pixels.mean((0, 2, 3)), atol=1e-12)
    assert np.allclose(ds.std, pixels.std((0, 2, 3)), atol=1e-12)

    # batches read from the file (pread) are the batches of the same images in memory
    assert ds.train.rows is not None
    from_disk = make_loader(ds.train, ds, batch_size=5, train=True, seed=3)
    from_memory = make_loader(Split(ds.train.images.clone(), ds.train.labels), ds, batch_size=5, train=True, seed=3)
    for (xa, ya), (xb, yb) in zip(from_disk, from_memory, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.slow
def test_train_on_a_tree_then_evaluate_from_elsewhere(tmp_path, runner, monkeypatch):
    tree = write_tree(tmp_path / "tree", {"ant": 10, "bee": 10, "cow": 10})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["train", "basic", "--dataset", "tree", "--image-size", "40", "--epochs", "1",
                                 "--procs", "1", "--recipe", "batch_size=8", "--out", "runs"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "runs" / "basic" / "config.json").read_text())
    assert config["data"]["dataset"] == str(tree) and config["data"]["image_size"] == [40, 40]
    assert config["data"]["classes"] == ["ant", "bee", "cow"] and config["data"]["channels"] == 3
    assert "Net, input 3x40x40" in (tmp_path / "runs" / "basic" / "model_summary.txt").read_text()
    monkeypatch.chdir(tmp_path / "runs")
    result = runner.invoke(cli, ["evaluate", "basic", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["num_test"] == 3 and report["classes"] == ["ant", "bee", "cow"]


# ---- named datasets from files ------------------------------------------------------------------

def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


@pytest.mark.parametrize("name, folder, first_class", [("mnist", "MNIST/raw", "0 - zero"),
                                                       ("kmnist", "kmnist", "o")])
def test_mnist_and_kmnist_from_idx_files(tmp_path, name, folder, first_class):
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte.gz.*{folder.split('/')[0]}"):  # the files to place
        load_dataset(name, tmp_path)
    train = np.arange(6 * 28 * 28).reshape(6, 28, 28) % 251
    write_idx(tmp_path / folder / "train-images-idx3-ubyte", train)
    write_idx(tmp_path / folder / "train-labels-idx1-ubyte.gz", [0, 1, 2, 3, 4, 9])
    write_idx(tmp_path / folder / "t10k-images-idx3-ubyte.gz", train[:2])
    write_idx(tmp_path / folder / "t10k-labels-idx1-ubyte", [5, 7])
    ds = load_dataset(name, tmp_path, val_split=0)
    assert ds.classes[0] == first_class and len(ds.classes) == 10
    assert ds.train.images.shape == (6, 3, 32, 32) and ds.test.labels.tolist() == [5, 7]
    assert (ds.train.images[:, :, 2:30, 2:30].numpy() == train[:, None]).all()
    big = load_dataset(name, tmp_path, val_split=0, image_size=(64, 64))  # resized from 32x32
    assert big.train.images.shape == (6, 3, 64, 64) and (big.train.images[:, :, :2, :] == 0).all()


def test_svhn_from_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    with pytest.raises(DataError, match="train_32x32.mat and test_32x32.mat"):  # the files to place
        load_dataset("svhn", tmp_path)
    (tmp_path / "svhn").mkdir()
    x = np.arange(32 * 32 * 3 * 4, dtype=np.int64).reshape(32, 32, 3, 4) % 256
    for part in ("train", "test"):
        scipy_io.savemat(tmp_path / "svhn" / f"{part}_32x32.mat", {"X": x.astype(np.uint8), "y": [[10], [1], [2], [9]]})
    ds = load_dataset("svhn", tmp_path, val_split=0)
    assert ds.test.labels.tolist() == [0, 1, 2, 9] and ds.classes == [str(i) for i in range(10)]
    assert torch.equal(ds.train.images[3, 1], torch.from_numpy(x[:, :, 1, 3].astype(np.uint8)))


@pytest.mark.parametrize("backend", ["batch", "albumentations"])
def test_fake_data_and_augmentation_at_a_non_square_size(backend):
    from cnnscope.core.augment import AugmentSpec

    ds = load_dataset("fake", val_split=0, image_size=(24, 40), fake_size=(20, 10))
    assert ds.train.images.shape == (20, 3, 24, 40) and ds.test.input_shape == (3, 24, 40)
    spec = AugmentSpec(crop_pad=4, hflip=0.5, cutout=24, cutout_p=1.0)
    loader = make_loader(ds.train, ds, batch_size=8, train=True, augment=spec, backend=backend, workers=0)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 24, 40) and len(y) == 8


@pytest.mark.slow
def test_own_model_on_a_tree_then_evaluate_attribute_export_from_elsewhere(tmp_path, runner, monkeypatch):
    """The issue's walk-through: a 3-class tree of 40x48 RGB PNGs, a model file with a relative import
    trained on it from one folder; evaluate, attribute (--image) and export from another folder after
    the model file moved."""
    from test_own_models import write_package

    project = tmp_path / "project"
    write_package(project)
    rng = np.random.default_rng(0)
    for label, name in enumerate(("ant", "bee", "cow")):
        (project / "images" / name).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(rng.normal(60 + 70 * label, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(project / "images" / name / f"{i}.png")
    monkeypatch.chdir(project)
    result = runner.invoke(cli, ["train", "mypkg/net.py:Net", "--dataset", "images", "--image-size", "40x48",
                                 "--epochs", "1", "--procs", "1", "--batch-size", "8", "--out", str(tmp_path / "runs"),
                                 "--name", "net"])
    assert result.exit_code == 0, result.output
    (project / "mypkg").rename(tmp_path / "mypkg-moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = str(tmp_path / "runs" / "net")
    result = runner.invoke(cli, ["evaluate", run, "--trust-spec", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classes"] == ["ant", "bee", "cow"]
    image = project / "images" / "bee" / "3.png"
    result = runner.invoke(cli, ["attribute", run, "--trust-spec", "--image", str(image), "--method", "saliency",
                                 "--method", "gradcam", "--layer", "features.0.0", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [i["file"] for i in report["images"]] == [str(image)]
    assert report["gradcam_layer"]["name"] == "features.0.0"
    assert report["gradcam_layer"]["size"] == [40, 48]  # the first conv's map, at the run's image size
    result = runner.invoke(cli, ["export", run, "--trust-spec", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 2  # the tree's test split: round(24 * 0.1)


def test_a_cache_deleted_mid_run_is_a_clear_error(tmp_path):
    tree = write_tree(tmp_path / "tree")
    ds = load_dataset(str(tree), tmp_path / "data")
    assert ds.train.take(torch.tensor([0, 1])).shape[0] == 2
    for u8 in (tree / image_folder.CACHE_FOLDER).glob("*.u8"):
        u8.unlink()  # another process (or a user) removes the cache while a run reads it
    with pytest.raises(CnnscopeError, match="was deleted while this command read it. Run the command again"):
        ds.train.take(torch.tensor([0, 1]))
