"""Datasets, the two augmentation backends and the loaders (cnnscope/runs/datasets.py, loaders.py,
cnnscope/core/augment.py)."""
import gzip
import json
import math
import pickle
import struct
import tarfile
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn as nn

from cnnscope.cli import cli
from cnnscope.core.augment import AugmentSpec
from cnnscope.runs import datasets, file_datasets, loaders
from cnnscope.runs.datasets import Dataset, Split, load_dataset
from cnnscope.runs.loaders import make_loader
from cnnscope.errors import CnnscopeError, DataError
from cnnscope.runs.recipes import get_recipe


# ---- tiny files in the original formats --------------------------------------------------------

def numbered_images(n, offset=0):
    """uint8 (n, 3, 32, 32) images whose pixel [c, 0, 0] is their number: identifiable after a split."""
    g = torch.Generator().manual_seed(offset)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[:, :, 0, 0] = torch.arange(offset, offset + n, dtype=torch.uint8).view(n, 1)
    return images


def write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root, per_batch=4, n_test=3):
    """cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta; returns the arrays."""
    folder = root / "cifar-10-batches-py"
    train = numbered_images(5 * per_batch)
    train_labels = [i % 10 for i in range(5 * per_batch)]
    for b in range(5):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        write_pickle(folder / f"data_batch_{b + 1}", {"data": train[rows].reshape(per_batch, -1).numpy(),
                                                    "labels": train_labels[rows], "batch_label": f"batch {b + 1}"})
    test = numbered_images(n_test, offset=100)
    write_pickle(folder / "test_batch", {"data": test.reshape(n_test, -1).numpy(), "labels": [7, 8, 9][:n_test]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return train, torch.tensor(train_labels), test, names


def test_cifar10_reads_the_pickled_batches(tmp_path):
    train, labels, test, names = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path, val_split=0)
    assert ds.classes == names and ds.val is None
    assert torch.equal(ds.train.images, train) and torch.equal(ds.train.labels, labels)
    assert torch.equal(ds.test.images, test) and ds.test.labels.tolist() == [7, 8, 9]
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64


def test_cifar10_archive_placed_by_hand_is_extracted(tmp_path):
    source = tmp_path / "src"
    train, _, _, _ = write_cifar10(source)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir, val_split=0)
    assert (data_dir / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert torch.equal(ds.train.images, train)


def test_cifar100_reads_train_test_meta(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train, test = numbered_images(6), numbered_images(2, offset=50)
    fine_names = [f"fine{i}" for i in range(100)]
    write_pickle(folder / "train", {"data": train.reshape(6, -1).numpy(), "fine_labels": [0, 99, 5, 5, 42, 1],
                                    "coarse_labels": [0] * 6})
    write_pickle(folder / "test", {"data": test.reshape(2, -1).numpy(), "fine_labels": [3, 77], "coarse_labels": [0, 0]})
    write_pickle(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": ["c"] * 20})
    ds = load_dataset("cifar100", tmp_path, val_split=0)
    assert ds.classes == fine_names
    assert torch.equal(ds.train.images, train) and ds.train.labels.tolist() == [0, 99, 5, 5, 42, 1]
    assert torch.equal(ds.test.images, test) and ds.test.labels.tolist() == [3, 77]


def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("name, file_name", [("cifar10", "cifar-10-python.tar.gz"),
                                             ("cifar100", "cifar-100-python.tar.gz")])
def test_unreachable_download_is_a_clear_error(tmp_path, monkeypatch, runner, name, file_name):
    offline(monkeypatch)
    with pytest.raises(DataError, match=file_name) as err:  # it names the file to place by hand
        load_dataset(name, tmp_path)
    assert "dataset fashion-mnist" in str(err.value)  # and the offline alternative
    result = runner.invoke(cli, ["augment", "basic", "--dataset", name, "--data-dir", str(tmp_path),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and file_name in result.output and "Traceback" not in result.output


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(1, 256, (10, 28, 28)), rng.integers(1, 256, (4, 28, 28))
    folder = tmp_path / "fashion-mnist"
    write_idx(folder / "train-images-idx3-ubyte.gz", train)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(10))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", test)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", [9, 0, 3, 3])
    ds = load_dataset("fashion-mnist", tmp_path, val_split=0)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    assert ds.train.images.shape == (10, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    for split, original in ((ds.train, train), (ds.test, test)):
        images = split.images.numpy()
        assert (images[:, :, 2:30, 2:30] == original[:, None]).all()  # grey repeated over 3 channels
        border = images.copy()
        border[:, :, 2:30, 2:30] = 0
        assert not border.any()  # zero padding of 2
    assert ds.test.labels.tolist() == [9, 0, 3, 3] and ds.train.labels.dtype == torch.int64
    own = load_dataset("fashion-mnist", tmp_path, val_split=0, image_size=(28, 28))  # the original images
    assert (own.train.images.numpy() == train[:, None]).all() and (own.test.images.numpy() == test[:, None]).all()
    assert own.mean[0] == pytest.approx(train.mean() / 255) and ds.mean[0] == pytest.approx(train.mean() / 255 * 784 / 1024)
    assert (tmp_path / "stats" / "fashion-mnist_0_0_28x28-unpadded.json").is_file()

    if file_datasets.FASHION_MNIST_SYSTEM_DIR.is_dir():  # Debian's dataset-fashion-mnist: the real thing
        real = load_dataset("fashion-mnist", tmp_path / "elsewhere", val_split=0)
        assert real.train.images.shape == (60000, 3, 32, 32) and real.test.images.shape == (10000, 3, 32, 32)
        assert torch.bincount(real.test.labels).tolist() == [1000] * 10


def test_which_datasets_several_processes_may_load_at_once(tmp_path, monkeypatch):
    """Where loading only reads files, every training process loads at once; a download or a tree's
    decoding happens in the first process alone."""
    from cnnscope.runs.datasets import loads_from_files

    monkeypatch.setattr(file_datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-such-dir")
    assert loads_from_files("fake", tmp_path) and loads_from_files("mnist", tmp_path)  # mnist: never downloaded
    assert not loads_from_files("fashion-mnist", tmp_path) and not loads_from_files("cifar10", tmp_path)
    for key, stem in file_datasets.IDX_FILES.items():
        write_idx(tmp_path / "fashion-mnist" / f"{stem}.gz", np.zeros((1, 28, 28) if "images" in key else (1,)))
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert loads_from_files("fashion-mnist", tmp_path) and loads_from_files("cifar10", tmp_path)
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "b").mkdir()
    assert not loads_from_files(str(tmp_path / "tree"), tmp_path)


def test_fashion_mnist_missing_everywhere_is_a_clear_error(tmp_path, monkeypatch):
    offline(monkeypatch)
    monkeypatch.setattr(file_datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-such-dir")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):  # it names the file to place
        load_dataset("fashion-mnist", tmp_path)


def test_bad_names_and_splits_are_refused(tmp_path):
    with pytest.raises(DataError) as unknown:
        load_dataset("imagenet", tmp_path)
    assert unknown.value.arguments == ("dataset",)
    with pytest.raises(DataError):
        load_dataset("fake", tmp_path, val_split=1.0)
    with pytest.raises(CnnscopeError):  # no such augmentation backend
        make_loader(load_dataset("fake").train, load_dataset("fake"), batch_size=8, train=True, backend="dali")
    with pytest.raises(CnnscopeError):  # hflip is a probability
        AugmentSpec(hflip=1.5)
    with pytest.raises(CnnscopeError) as hole:  # the cutout hole is larger than the image
        make_loader(load_dataset("fake").train, load_dataset("fake"), batch_size=8, train=True,
                    augment=AugmentSpec(cutout=40, cutout_p=1))
    assert hole.value.arguments == ("augment",)


# ---- validation split and statistics -----------------------------------------------------------

def test_val_split_is_disjoint_fixed_by_seed(tmp_path):
    train, _, _, _ = write_cifar10(tmp_path, per_batch=8)  # 40 numbered images
    ids = lambda split: split.images[:, 0, 0, 0].tolist()  # noqa: E731
    ds = load_dataset("cifar10", tmp_path, val_split=0.25, seed=3)
    assert len(ds.val) == 10 and len(ds.train) == 30
    assert sorted(ids(ds.train) + ids(ds.val)) == list(range(40))
    # each image keeps its label
    assert ds.val.labels.tolist() == [i % 10 for i in ids(ds.val)]
    again = load_dataset("cifar10", tmp_path, val_split=0.25, seed=3)
    other = load_dataset("cifar10", tmp_path, val_split=0.25, seed=4)
    assert ids(again.val) == ids(ds.val) and ids(other.val) != ids(ds.val)

    fake = load_dataset("fake", val_split=0.1)
    assert (len(fake.train), len(fake.val), len(fake.test)) == (461, 51, 128)


def test_stats_are_cached_with_the_train_split_numbers(tmp_path):
    write_cifar10(tmp_path, per_batch=8)
    ds = load_dataset("cifar10", tmp_path, val_split=0.25, seed=3)
    pixels = ds.train.images.numpy().astype(np.float64) / 255
    cache = tmp_path / "stats" / "cifar10_0.25_3.json"
    saved = json.loads(cache.read_text())
    assert saved["n_train"] == 30
    np.testing.assert_allclose(saved["mean"], pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(saved["std"], pixels.std(axis=(0, 2, 3)), rtol=1e-12)
    assert ds.mean == tuple(saved["mean"]) and ds.std == tuple(saved["std"])
    # the cache is what a second load reads
    cache.write_text(json.dumps({**saved, "mean": [0.1, 0.2, 0.3]}))
    assert load_dataset("cifar10", tmp_path, val_split=0.25, seed=3).mean == (0.1, 0.2, 0.3)


# ---- fake data ---------------------------------------------------------------------------------

def test_fake_is_deterministic_and_balanced():
    a, b = load_dataset("fake", val_split=0), load_dataset("fake", val_split=0)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.shape == (512, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert torch.bincount(torch.cat([a.train.labels, a.test.labels])).tolist() == [64] * 10
    small = load_dataset("fake", val_split=0, fake_size=(40, 20))
    assert (len(small.train), len(small.test)) == (40, 20)


def test_fake_is_learnable_through_the_training_pipeline():
    torch.manual_seed(0)
    ds = load_dataset("fake")
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = make_loader(ds.train, ds, batch_size=64, train=True, augment=get_recipe("basic").augment)
    for epoch in range(8):
        loader.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item()
                      for x, y in make_loader(ds.test, ds, batch_size=128, train=False))
    assert correct / len(ds.test) > 0.6  # chance is 0.1; colour alone gives 0.5


# ---- loaders -----------------------------------------------------------------------------------

def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("backend, workers", [("batch", 0), ("albumentations", 0), ("albumentations", 2)])
def test_loader_replays_an_epoch_exactly(backend, workers):
    ds = load_dataset("fake", fake_size=(200, 10))
    spec = get_recipe("basic").augment
    make = lambda: make_loader(ds.train, ds, batch_size=64, train=True, augment=spec,  # noqa: E731
                               backend=backend, seed=5, workers=workers)
    loader = make()
    assert len(loader) == math.ceil(180 / 64) == 3
    first, second = epoch_batches(loader, 0), epoch_batches(loader, 1)
    replay = epoch_batches(make(), 1)  # a fresh loader, as after --resume
    assert [len(y) for _, y in second] == [64, 64, 52]
    for (x1, y1), (x2, y2) in zip(second, replay):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(first[0][1], second[0][1])  # another epoch, another order
    x = second[0][0]
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)


def test_loader_without_augmentation_normalizes_and_keeps_order():
    ds = load_dataset("fake", fake_size=(100, 70))
    loader = make_loader(ds.test, ds, batch_size=32, train=False, drop_last=True)
    assert len(loader) == 2
    x = torch.cat([x for x, _ in loader])
    expected = (ds.test.images[:64].double() / 255 - torch.tensor(ds.mean).view(1, 3, 1, 1)) / torch.tensor(
        ds.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaders.denormalize(x, ds.mean, ds.std), ds.test.images[:64].float() / 255, atol=1e-6,
                               rtol=0)


def test_ranks_take_disjoint_equal_shards():
    ds = load_dataset("fake", fake_size=(101, 11))
    shards = [make_loader(ds.train, ds, batch_size=8, train=True, seed=1, rank=r, world_size=3) for r in range(3)]
    for loader in shards:
        loader.set_epoch(2)
    indices = [loader.indices().tolist() for loader in shards]
    n = len(ds.train)  # 91
    assert [len(i) for i in indices] == [n // 3] * 3
    assert len(set(sum(indices, []))) == 3 * (n // 3)
    # the permutation is shared: together the ranks walk epoch 2's order
    single = make_loader(ds.train, ds, batch_size=8, train=True, seed=1)
    single.set_epoch(2)
    order = single.indices().tolist()
    assert indices[1] == order[1:3 * (n // 3):3]
    # evaluation: every test image exactly once over the ranks
    tests = [make_loader(ds.test, ds, batch_size=4, train=False, rank=r, world_size=3).indices().tolist()
             for r in range(3)]
    assert sorted(sum(tests, [])) == list(range(11))


# ---- the two backends draw the same augmentations ----------------------------------------------

def probe_dataset(n=256):
    """Grey images with one white 6x6 square in the left half: flips, shifts and holes are measurable."""
    g = torch.Generator().manual_seed(0)
    images = torch.full((n, 3, 32, 32), 100, dtype=torch.uint8)
    xs = torch.randint(5, 10, (n,), generator=g)
    ys = torch.randint(6, 20, (n,), generator=g)
    for i in range(n):
        images[i, :, ys[i]:ys[i] + 6, xs[i]:xs[i] + 6] = 255
    split = Split(images, torch.zeros(n, dtype=torch.int64))
    # a mean unlike any pixel of the images, so that cutout holes are recognisable
    return Dataset("probe", ["square"], split, None, split, mean=(0.2, 0.5, 0.7), std=(0.25, 0.25, 0.25))


def augment_all(ds, spec, backend, epochs=3):
    """(originals, augmented) float (N, 3, 32, 32) in [0, 1] over `epochs` epochs."""
    loader = make_loader(ds.train, ds, batch_size=128, train=True, augment=spec, backend=backend, seed=11,
                         workers=0)
    originals, augmented = [], []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        originals.append(ds.train.images[loader.indices()].float() / 255)
        augmented += [loaders.denormalize(x, ds.mean, ds.std) for x, _ in loader]
    return torch.cat(originals), torch.cat(augmented)


def square_centroid(images):
    """(x, y) centroid of the white square (the brightness above the grey background)."""
    weight = (images.mean(1) - 0.5).clamp(min=0)
    grid = torch.arange(32, dtype=torch.float32)
    total = weight.sum((1, 2))
    return (weight.sum(1) * grid).sum(1) / total, (weight.sum(2) * grid).sum(1) / total


def flip_stats(original, augmented):
    flipped = (augmented - original.flip(3)).abs().amax((1, 2, 3)) < 1e-6
    kept = (augmented - original).abs().amax((1, 2, 3)) < 1e-6
    assert (flipped | kept).all()  # nothing else happens
    return {"flipped": flipped.float().mean()}


def shift_stats(original, augmented):
    (x0, y0), (x1, y1) = square_centroid(original), square_centroid(augmented)
    return {"mean |dx|": (x1 - x0).abs().mean(), "mean |dy|": (y1 - y0).abs().mean(),
            "share unshifted": (((x1 - x0).abs() < 0.5) & ((y1 - y0).abs() < 0.5)).float().mean()}


def polar(images):
    x, y = square_centroid(images)
    return torch.atan2(y - 15.5, x - 15.5), torch.hypot(x - 15.5, y - 15.5)


def rotate_scale_stats(original, augmented):
    (a0, r0), (a1, r1) = polar(original), polar(augmented)
    turn = torch.rad2deg(torch.remainder(a1 - a0 + math.pi, 2 * math.pi) - math.pi)
    return {"mean |angle|": turn.abs().mean(), "mean radius ratio": (r1 / r0).mean(),
            "mean |radius ratio - 1|": (r1 / r0 - 1).abs().mean()}


def cutout_stats(ds):
    fill = torch.tensor(ds.mean).view(1, 3, 1, 1)

    def stats(original, augmented):
        hole = ((augmented - fill).abs() < 0.6 / 255).all(1)  # (N, H, W)
        area = hole.sum((1, 2))
        assert set(area.tolist()) <= {0, 256}  # one whole 16x16 hole or none
        holed = area > 0
        rows = hole.any(2).float().argmax(1)[holed].float()
        return {"share with a hole": holed.float().mean(), "mean hole top": rows.mean()}

    return stats


def pixel_stats(original, augmented):
    return {"pixel mean": augmented.mean(), "pixel std": augmented.std()}


PROBE = probe_dataset()
BASIC = get_recipe("basic").augment


# Per statistic: (expected value or None, tolerance for it and for the gap between the backends).
# Sample sizes: 768 augmented images per backend; tolerances are about 4 standard errors.
@pytest.mark.parametrize("spec, measure, expected", [
    (AugmentSpec(hflip=0.5), flip_stats, {"flipped": (0.5, 0.08)}),
    (AugmentSpec(crop_pad=4), shift_stats, {"mean |dx|": (20 / 9, 0.25), "mean |dy|": (20 / 9, 0.25)}),
    # albumentations translates by whole pixels, truncated: |shift| is 0 or 1 with equal chance
    (AugmentSpec(affine_p=1, translate=0.0625), shift_stats,
     {"mean |dx|": (0.5, 0.08), "mean |dy|": (0.5, 0.08), "share unshifted": (0.25, 0.07)}),
    (AugmentSpec(affine_p=1, rotate=20), rotate_scale_stats, {"mean |angle|": (10.0, 1.2)}),
    (AugmentSpec(affine_p=0.5, rotate=20), rotate_scale_stats, {"mean |angle|": (5.0, 1.0)}),
    (AugmentSpec(affine_p=1, scale=(0.8, 1.2)), rotate_scale_stats,
     {"mean radius ratio": (1.0, 0.02), "mean |radius ratio - 1|": (0.1, 0.02)}),
    (AugmentSpec(cutout=16, cutout_p=0.5), cutout_stats(PROBE),
     {"share with a hole": (0.5, 0.08), "mean hole top": (8.0, 1.2)}),
    (BASIC, pixel_stats, {"pixel mean": (None, 0.01), "pixel std": (None, 0.01)}),
    (get_recipe("egrr").augment, pixel_stats, {"pixel mean": (None, 0.04), "pixel std": (None, 0.03)}),
])
def test_backends_draw_the_same_augmentations(spec, measure, expected):
    results = {backend: {k: float(v) for k, v in measure(*augment_all(PROBE, spec, backend)).items()}
               for backend in loaders.BACKENDS}
    batch, albu = results["batch"], results["albumentations"]
    for key, (value, tolerance) in expected.items():
        assert batch[key] == pytest.approx(albu[key], abs=tolerance), (key, results)
        if value is not None:
            assert batch[key] == pytest.approx(value, abs=tolerance), (key, results)


# ---- cnnscope augment --------------------------------------------------------------------------

def test_augment_command_writes_the_grid(runner, tmp_path):
    import matplotlib.image

    result = runner.invoke(cli, ["augment", "basic", "--dataset", "fake", "--data-dir", str(tmp_path / "data"),
                                 "--n", "12", "--out", str(tmp_path / "out"), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    png = tmp_path / "out" / "plots" / "augmented_samples_grid.png"
    assert report["figure"] == str(png) and report["n"] == 12 and report["backend"] == "batch"
    assert report["augment"]["cutout"] == 16 and report["augment"]["translate"] == 0.0625
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 200 and pixels[..., :3].std() > 0.1  # not blank


def test_augment_command_shows_a_runs_own_pipeline(runner, tmp_path):
    import dataclasses

    from cnnscope.runs.checkpoint import save_checkpoint
    from cnnscope.runs.train_options import TrainOptions

    recipe = dataclasses.replace(get_recipe("egrr"), dataset="fake")
    options = TrainOptions(spec="egrr", ctor={}, recipe=recipe, seed=3, aug_backend="albumentations")
    run = tmp_path / "egrr-run"
    save_checkpoint({"model_spec": "egrr", "ctor": {}, "model": {}, "config": {"options": options.to_json()}},
                    run / "checkpoints" / "last.pth")
    (run / ".cnnscope.lock").touch()  # a run folder: the commands write into it
    result = runner.invoke(cli, ["augment", str(run), "--n", "4", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["model"], report["dataset"], report["backend"]) == ("egrr", "fake", "albumentations")
    assert report["augment"]["autoaugment"] is True and report["augment"]["crop_pad"] == 4
    assert report["figure"] == str(run / "plots" / "augmented_samples_grid.png") and (run / "plots").is_dir()
