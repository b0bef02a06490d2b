"""Small image-folder trees, as users have them: empty selections (no misclassified image, a class
without test images, an empty read), a one-class tree, a recipe fitted to a small tree (its batch)
with the fix said where a run takes too few steps, and the reasons given when validation ends far
below training."""
import json
import textwrap
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from cnnscope.cli import cli
from cnnscope.core.metrics import predict
from cnnscope.errors import DataError
from cnnscope.runs import image_folder, recipes
from cnnscope.runs.datasets import load_dataset
from cnnscope.runs.train_console import far_below
from cnnscope.runs.train_options import new_options

COLOURS = {"blue": (0, 0, 200), "green": (0, 200, 0), "red": (200, 0, 0)}
# A classifier that is right on every solid-colour image without learning anything: its logits are
# the channel means in the order of the (sorted) class names blue, green, red.
BY_COLOUR = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class ByColour(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.scale.abs() * x.mean((2, 3))[:, [2, 1, 0]]
''')


def write_colours(folder, counts: dict):
    """`counts[colour]` solid-colour 8x8 PNGs in folder/<colour>/ (with a little noise per image)."""
    for name, n in counts.items():
        (folder / name).mkdir(parents=True)
        for i in range(n):
            pixel = tuple(max(0, min(255, v + 3 * (i % 5) - 6)) for v in COLOURS[name])
            Image.new("RGB", (8, 8), pixel).save(folder / name / f"{i:03d}.png")


@pytest.fixture(scope="module")
def perfect_run(tmp_path_factory):
    """A tree whose test/ has no green image, and a run of ByColour on it: every test image right."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("colours")
    write_colours(root / "tree" / "train", {"blue": 12, "green": 12, "red": 12})
    write_colours(root / "tree" / "test", {"blue": 3, "red": 4})
    (root / "by_colour.py").write_text(BY_COLOUR)
    result = CliRunner().invoke(cli, ["train", f"{root / 'by_colour.py'}:ByColour", "--dataset", str(root / "tree"),
                                      "--epochs", "1", "--out", str(root / "runs"), "--name", "colours"])
    assert result.exit_code == 0, result.output
    return root, root / "runs" / "colours", result


def test_a_tree_read_with_an_empty_index_gives_no_images(tmp_path):
    write_colours(tmp_path / "tree", {"blue": 4, "red": 4})
    ds = load_dataset(str(tmp_path / "tree"), tmp_path / "data", image_size=(8, 8))
    empty = ds.train.take(torch.tensor([], dtype=torch.int64))
    assert empty.shape == (0, 3, 8, 8) and empty.dtype == torch.uint8


def test_no_misclassified_image_is_an_empty_grid_that_says_so(perfect_run, runner):
    root, run, trained = perfect_run
    assert "test acc 100.00%" in trained.output
    grid = run / "plots" / "misclassified_grid.png"
    assert grid.is_file() and grid.stat().st_size > 0
    grid.unlink()
    evaluated = runner.invoke(cli, ["evaluate", str(run), "--trust-spec", "--format", "json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["test_acc"] == 100.0 and report["num_test"] == 7 and report["top_confusions"] == []
    assert grid.is_file()


def test_a_class_without_test_images_is_reported_as_such(perfect_run):
    _, run, _ = perfect_run
    rows = (run / "classification_report.csv").read_text().splitlines()
    assert rows[1:4] == ["blue,1.0000,1.0000,1.0000,3", "green,0.0000,0.0000,0.0000,0", "red,1.0000,1.0000,1.0000,4"]
    assert rows[4] == "macro avg,1.0000,1.0000,1.0000,7"  # over the classes that occur
    assert "No test images of green: recall and F1 undefined" in (run / "classification_report.md").read_text()
    assert (run / "confusion_matrix.csv").read_text().splitlines()[2] == "green,0,0,0"
    assert (run / "plots" / "cm.png").is_file()


def test_a_one_class_tree_is_a_clear_error(runner, error_of, tmp_path):
    write_colours(tmp_path / "photos", {"red": 5})
    result = runner.invoke(cli, ["train", "basic", "--dataset", str(tmp_path / "photos")])
    error = error_of(result)
    assert isinstance(error, DataError) and error.arguments == ("dataset",)
    message = " ".join(result.stderr.split())
    assert f"{tmp_path / 'photos'} has one class folder, red/: a classifier needs two classes or more" in message
    assert "Traceback" not in result.output and not (tmp_path / "reports").exists()


def test_predicting_an_empty_share_gives_empty_results():
    loss, preds, targets = predict(torch.nn.Linear(3, 2), [], torch.device("cpu"))
    assert loss == 0.0 and preds.shape == targets.shape == (0,) and preds.dtype == torch.int64


@pytest.mark.parametrize("images, batch, note", [
    (50_000, 128, ""),  # CIFAR-sized: the recipe as it is
    (4_000, 128, ""),  # 32 steps an epoch already
    (3_000, 64, "batch 64 instead of the recipe's 128, so that an epoch has 47 optimizer steps, not 24"),
    (1_212, 32, "batch 32 instead of the recipe's 128, so that an epoch has 38 optimizer steps, not 10"),
    (194, 32, "batch 32 instead of the recipe's 128, so that an epoch has 7 optimizer steps, not 2"),
    (20, 20, "batch 20 instead of the recipe's 128, the whole split"),  # never a batch larger than the split
])
def test_a_small_trees_batch_gives_an_epoch_more_steps(images, batch, note):
    fitted, said = recipes.fit_to_tree(recipes.get_recipe("basic"), images)
    assert fitted.batch_size == batch and (note in said if note else said == "")
    assert fitted.lr == 0.1 and fitted.epochs == 25  # the peak LR and the epochs stay the recipe's


def test_too_few_steps_are_said_with_the_epochs_that_would_do():
    recipe = recipes.get_recipe("basic")
    assert recipes.too_few_steps(recipes.fit_to_tree(recipe, 1_212)[0], 1_212) == ""  # 25 x 38 steps
    assert recipes.too_few_steps(recipe, 1_212).endswith("Train 30 epochs or more.")  # 25 x 10 steps of 128
    short = recipes.resolve(recipe, {"epochs": 5, "batch_size": 32})
    assert recipes.too_few_steps(short, 194) == (
        "5 epochs of 7 batches are 35 optimizer steps in all: likely too few for the learning-rate schedule, and "
        "for batch norm's running statistics (which evaluation uses) to settle. Train 43 epochs or more.")


def test_a_tree_run_gets_the_fitted_batch_unless_one_is_given(tmp_path):
    write_colours(tmp_path / "tree", {"blue": 40, "green": 40, "red": 40})
    opts = new_options("basic", recipe_overrides={"dataset": str(tmp_path / "tree")})
    # 120 images: 12 test, 11 validation, 97 training images
    assert image_folder.split_sizes(tmp_path / "tree", 0.1) == {"train": 97, "val": 11, "test": 12}
    assert opts.recipe.batch_size == 32 and opts.adapted.startswith("A small tree (97 training images): batch 32")
    given = new_options("basic", recipe_overrides={"dataset": str(tmp_path / "tree"), "batch_size": 128})
    assert given.recipe.batch_size == 128 and given.adapted == ""
    named = new_options("basic", recipe_overrides={"dataset": "fake"}, train_subset=64)
    assert named.recipe.batch_size == 128 and named.adapted == ""  # a named dataset keeps its recipe


def test_a_small_tree_run_says_what_it_changed_and_warns_with_the_fix(perfect_run):
    _, run, trained = perfect_run
    # 36 images in train/: 4 for validation, 32 to train on
    assert "A small tree (32 training images): batch 32 instead of the recipe's 128, the whole split" in trained.stdout
    assert "cpu, 1 epochs x 1 batches of 32 ->" in trained.stdout  # one process for a batch of 32
    assert ("warning: 1 epochs of 1 batches are 1 optimizer steps in all: likely too few for the learning-rate "
            "schedule, and for batch norm's running statistics (which evaluation uses) to settle. Train 300 epochs "
            "or more.") in " ".join(trained.stderr.split())
    assert json.loads((run / "config.json").read_text())["options"]["adapted"].startswith("A small tree (32 ")


def fake_run(train_acc, val_acc, steps, train_images, classes=6, selected_on="val"):
    state = SimpleNamespace(history=[{"train_acc": train_acc, "val_acc": val_acc}], lr_steps=[0.1] * steps)
    return SimpleNamespace(loop=SimpleNamespace(state=state),
                           ds=SimpleNamespace(train=range(train_images), classes=list(range(classes))),
                           selected_on=selected_on)


def test_validation_far_below_training_says_why():
    assert far_below(fake_run(78.0, 65.0, 15, 292)) == ""  # 13 points: not far
    said = far_below(fake_run(78.0, 15.6, 15, 292))
    assert said.startswith("the val accuracy ended at 15.6%, far below the training accuracy (78.0%). Possible "
                           "causes: in 15 optimizer steps batch norm's running statistics")
    assert "49 training images per class can be learned by heart" in said and "may differ" in said
    many = far_below(fake_run(99.0, 60.0, 5000, 60_000, classes=10, selected_on="test"))
    assert many.startswith("the test accuracy ended at 60.0%") and "by heart" not in many
    assert "batch norm" not in many and "may differ from the training images" in many


def test_augmentation_sizes_in_pixels_follow_the_image_size():
    basic, ectied = recipes.get_recipe("basic"), recipes.get_recipe("ectied")
    assert basic.augment.cutout == 16 and ectied.augment.crop_pad == 4  # for 32x32 images
    assert recipes.resolve(basic, {"image_size": (16, 16)}).augment.cutout == 8  # not all of a 16x16 image
    assert recipes.resolve(basic, {"image_size": (64, 48)}).augment.cutout == 24  # by the shorter side
    assert recipes.resolve(basic, {"image_size": (64, 64)}, {"cutout": 5}).augment.cutout == 5  # given: kept
    assert recipes.resolve(ectied, {"image_size": (8, 8)}).augment.crop_pad == 1
    assert recipes.resolve(basic, {"image_size": (32, 32)}).augment == basic.augment
