"""The figures a reviewer reads (issue 26), each test reading what is drawn: scales, colours, markers,
labels, titles and sizes; and `cnnscope.plot`, which draws every result's figure for the API and the CLI."""
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn as nn
from matplotlib.colors import LogNorm, Normalize
from matplotlib.patches import Circle, Rectangle

import cnnscope
from cnnscope.cli import cli
from cnnscope.core.attribution_methods import METHODS
from cnnscope.core.metrics import CompareResult, EvalResult
from cnnscope.core.rf import effective_receptive_field, receptive_field
from cnnscope.render import attribution_plots, figures, plots, rf_plots
from cnnscope.runs.readme.figures import read_stamp


def methods(*names):
    return [(METHODS[m].title, METHODS[m].signed, METHODS[m].reads) for m in names]


def panel(fig, row, col, cols):
    """The axes of panel (row, col) of a grid figure (attribution_plots._grid makes them row by row)."""
    return fig.axes[row * cols + col]


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


# ---- attributions -----------------------------------------------------------------------------------

def test_default_scale_is_each_maps_own_so_no_map_is_black():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 2, 8, 8))
    maps[0] *= 100  # one image's maps a hundred times larger than the others'
    images = np.full((3, 8, 8, 3), 0.5)
    own = attribution_plots.attribution_figure(images, maps, methods=methods("ig", "saliency"), row_titles=list("abc"))
    shared = attribution_plots.attribution_figure(images, maps, methods=methods("ig", "saliency"),
                                                  row_titles=list("abc"), scale="method")
    for r in range(3):
        for c in range(2):
            norm = panel(own, r, c + 1, 3).images[0].norm
            assert norm.vmax == pytest.approx(np.percentile(np.abs(maps[r, c]), attribution_plots.SCALE_PERCENTILE))
            spread = norm(maps[r, c])
            assert spread.max() >= 0.99 or spread.min() <= 0.01  # every map reaches an end of its colours
            corner = [t.get_text() for t in panel(own, r, c + 1, 3).texts]
            assert corner == [f"top {norm.vmax:.2g}"]
    # one scale per method: the small images' maps sit in the middle of the colour map, near black/white
    for r in (1, 2):
        assert np.abs(panel(shared, r, 1, 3).images[0].norm(maps[r, 0]) - 0.5).max() < 0.02
        assert not panel(shared, r, 1, 3).texts


def test_maps_lie_over_the_grey_image_transparent_where_zero():
    image = np.zeros((1, 4, 4, 3))
    image[0, :, :2] = 1.0  # left half white
    maps = np.zeros((1, 1, 4, 4))
    maps[0, 0, 3, 3] = 2.0  # one strong pixel, zero elsewhere
    fig = attribution_plots.attribution_figure(image, maps, methods=methods("ig"), row_titles=["a"])
    ax = panel(fig, 0, 1, 2)
    assert not ax.images[0].get_visible()  # the map's own image keeps the scale; the overlay is drawn
    overlay = ax.images[1].get_array()
    np.testing.assert_allclose(overlay[0, 0, :3], 1.0)  # zero attribution: the image (white) shows
    np.testing.assert_allclose(overlay[0, 3, :3], 0.0)  # and black where the image is black
    top_colour = np.array(ax.images[0].get_cmap()(1.0)[:3])
    np.testing.assert_allclose(overlay[3, 3, :3], top_colour, atol=1e-6)  # the top value: the map's colour alone
    no_overlay = attribution_plots.attribution_figure(image, maps, methods=methods("ig"), row_titles=["a"],
                                                      overlay=False)
    assert len(panel(no_overlay, 0, 1, 2).images) == 1 and panel(no_overlay, 0, 1, 2).images[0].get_visible()


def test_legends_say_what_each_methods_colours_mean_and_ticks_stay_apart():
    names = ("ig", "occlusion", "guided", "guided-gradcam", "saliency", "gradcam")
    fig = attribution_plots.attribution_figure(np.zeros((1, 8, 8, 3)), np.random.default_rng(1).normal(size=(1, 6, 8, 8)),
                                               methods=methods(*names), row_titles=["a"])
    bars = fig.axes[7:]  # after the 1 x 7 panels: a colour bar per method
    labels = {name: " ".join(bar.get_xlabel().split()) for name, bar in zip(names, bars)}
    assert labels["ig"].startswith("red: evidence for the class, blue: against")
    assert "covering it lowers the score" in labels["occlusion"]
    for gradient in ("guided", "guided-gradcam"):  # a modified gradient's sign is not evidence
        assert not labels[gradient].startswith("red: evidence") and "not evidence" in labels[gradient]
    assert labels["saliency"].startswith("|gradient|") and "evidence" not in labels["gradcam"]
    for bar, name in zip(bars, names):
        ticks = bar.xaxis.get_major_ticks()
        assert [t.label1.get_horizontalalignment() for t in ticks] == ["left", "center", "right"]
        assert all(t.label1.get_fontsize() >= 7 for t in ticks)
        expected = ["-top", "0", "top"] if METHODS[name].signed else ["0", "top/2", "top"]
        assert [bar.xaxis.get_major_formatter()(v, i) for i, v in enumerate(bar.get_xticks())] == expected


def attribution_report(target_class="pred", targets=None):
    torch.manual_seed(0)
    report = cnnscope.attribute(Small().eval(), torch.randn(2, 3, 8, 8), targets, methods=("saliency", "guided"))
    report.target, report.weights, report.dataset = "reports/small", "trained", "fake"
    report.images = [{"index": 4, "label": 1, "class": "b"}, {"index": 9, "file": "photos/cat.png"}]
    report.classes, report.target_class = ["a", "b", "c"], target_class
    return report


def test_attribution_title_names_model_run_weights_images_and_target():
    fig = cnnscope.plot(attribution_report("c", targets=[2, 2]))
    title = fig._suptitle.get_text()
    assert title.startswith("Attributions of Small, trained: reports/small, 2 test images of fake; target: class c")
    rows = [panel(fig, r, 0, 3).get_ylabel() for r in range(2)]
    assert rows[0].startswith("#4 b\npred: ") and rows[1].startswith("cat.png\npred: ")  # a file by its name


def test_cli_attributes_chosen_images_for_a_class_by_name(runner, tmp_path):
    result = runner.invoke(cli, ["attribute", "basic", "--index", "3", "--index", "7", "--target", "blue-vertical",
                                 "--method", "saliency", "--out", str(tmp_path), "--format", "json"])
    assert result.exit_code == 0, result.output
    import json
    data = json.loads(result.stdout)
    assert [im["index"] for im in data["images"]] == [3, 7] and data["target_class"] == "blue-vertical"
    classes = {im["target"] for im in data["images"]}
    assert len(classes) == 1  # the one class asked for, for every image
    assert f"wrote {tmp_path / 'attributions.png'}" in result.stderr
    for bad, message in ((["--target", "zebra"], "target_class 'zebra' is no class of this model"),
                         (["--index", "99999"], "Test image index 99999 is out of range")):
        failed = runner.invoke(cli, ["attribute", "basic", *bad, "--method", "saliency", "--out", str(tmp_path)])
        assert failed.exit_code == 2 and message in failed.stderr


# ---- the effective RF ---------------------------------------------------------------------------------

def test_erf_figure_shows_the_tail_on_a_log_scale_the_box_whole_and_the_peak():
    heat = np.full((16, 16), 1e-6)
    heat[8, 9] = 1.0
    fig = rf_plots.erf_heatmap(heat, centre=(7.5, 7.5), box=(-4, -4, 19, 19), radius=30.0)
    ax = fig.axes[0]
    assert isinstance(ax.images[0].norm, LogNorm) and ax.images[0].norm.vmin == pytest.approx(1e-4)
    box = next(p for p in ax.patches if isinstance(p, Rectangle))
    (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()
    assert x0 <= box.get_x() and box.get_x() + box.get_width() <= x1  # the whole box in view, not on the border
    assert y0 <= box.get_y() and box.get_y() + box.get_height() <= y1
    assert x1 - x0 <= 2 * 16 + 1  # the view reaches at most half the input past each side
    circle = next(p for p in ax.patches if isinstance(p, Circle))
    assert circle.get_clip_on() and circle.radius == 30.0  # drawn at its size, clipped to the view
    peak = next(line for line in ax.get_lines() if line.get_label().startswith("peak"))
    assert (peak.get_xdata()[0], peak.get_ydata()[0]) == (9, 8) and peak.get_path_effects()
    linear = rf_plots.erf_heatmap(heat, centre=(7.5, 7.5), box=(0, 0, 15, 15), log=False)
    assert type(linear.axes[0].images[0].norm) is Normalize


def test_plot_of_an_rf_result_draws_its_erf_centred_on_an_even_map(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1))
    rf = receptive_field(model, (3, 8, 8))
    rf.erf = effective_receptive_field(model, torch.rand(2, 3, 8, 8), rf)
    fig = cnnscope.plot(rf)
    ax = fig.axes[0]
    centre = next(line for line in ax.get_lines() if line.get_label().startswith("centre"))
    assert (centre.get_xdata()[0], centre.get_ydata()[0]) == rf.erf.centre[::-1]
    assert abs(rf.erf.centre[0] - 3.5) <= 0.5  # at the input's middle, not a unit off it
    assert "unit" in ax.get_title() and "4x4 final map" in ax.get_title()
    with pytest.raises(TypeError, match="no effective RF"):
        cnnscope.plot(receptive_field(model, (3, 8, 8)))


# ---- the sanity check's maps ------------------------------------------------------------------------

def test_rank_map_keeps_a_flat_map_flat_and_ranks_ties_on_average():
    edges = np.zeros((6, 6))
    edges[2:4, 2:4] = [[1.0, 2.0], [3.0, 4.0]]  # an object on a flat black background
    ranks = attribution_plots.rank_map(edges)
    background = ranks[edges == 0]
    assert np.unique(background).size == 1  # no ramp drawn where the map is flat
    assert background[0] == pytest.approx((31 / 2) / 35)  # 32 tied pixels share ranks 0..31: 15.5 of 35
    np.testing.assert_allclose(ranks[2:4, 2:4], np.array([[32, 33], [34, 35]]) / 35)
    fig = attribution_plots.sanity_maps(np.zeros((6, 6, 3)), {0: np.stack([edges]), 2: np.stack([edges])},
                                        methods=["Edges (control)"], stage_titles={0: "original", 2: "2 random"},
                                        title="Sanity check of Net")
    assert fig._suptitle.get_text() == "Sanity check of Net"


# ---- gates, confusion matrix, curves, sharing --------------------------------------------------------

def test_gate_maps_of_38_steps_wrap_into_rows_readable_at_readme_width():
    steps, images = 38, 2
    probs = [[np.full((3, 4, 4), 1 / 3) for _ in range(steps)] for _ in range(images)]
    fig = plots.gate_maps(np.zeros((images, 8, 8, 3)), probs, dilations=["d=1", "d=2", "d=4"],
                          panel_titles=[f"s{i // 5}.t{i % 5}" for i in range(steps)], row_titles=["a", "b"])
    width, height = fig.get_size_inches()
    assert width <= 11.5  # 1 + 10 panels of an inch: at 800 px each panel is ~70 px wide
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == images * (1 + steps)
    titles = [ax.title for ax in drawn]
    assert min(t.get_fontsize() for t in titles) >= 9  # labels readable, not 5 pt
    rows = {round(ax.get_position().y0, 3) for ax in drawn}
    assert len(rows) == images * 4  # 38 steps: 4 rows of at most 10 per image


def test_confusion_matrix_labels_its_colour_bar_and_leaves_zeros_blank():
    counts = [[8, 2, 0], [0, 10, 0], [1, 0, 9]]
    fig = cnnscope.plot(EvalResult.from_predictions(
        1.0, torch.tensor([0] * 8 + [1] * 2 + [1] * 10 + [0] + [2] * 9), torch.tensor([0] * 10 + [1] * 10 + [2] * 10),
        ["a", "b", "c"], run="r", model="m"))
    ax, bar = fig.axes
    assert bar.get_ylabel() == "share of the true class's test images"
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert set(texts) == {(i, j) for i in range(3) for j in range(3) if counts[i][j]}  # a zero prints nothing
    assert texts[(0, 1)] == "0.20" and texts[(2, 0)] == "0.10"


def test_loss_curves_mark_the_test_loss_at_the_best_epoch():
    history = [{"epoch": e, "train_loss": 2 - e / 5, "val_loss": 2.1 - e / 5, "train_acc": 0, "val_acc": 0}
               for e in (1, 2, 3)]
    fig = figures.training_curves(history, "run", "loss", best_epoch=2, test=(1.55, "test loss 1.5500"))
    star = next(line for line in fig.axes[0].get_lines() if line.get_marker() == "*")
    assert (star.get_xdata()[0], star.get_ydata()[0], star.get_label()) == (2, 1.55, "test loss 1.5500")
    assert "test loss 1.5500" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def compare_result(runs: int, epochs: int) -> CompareResult:
    rows = [{"run": f"r{i}", "dataset": "fashion-mnist" if i % 2 else "fake"} for i in range(runs)]
    log = [{"epoch": e, "train_acc": 10.0 * e, "val_acc": 9.0 * e, "train_loss": 1 / e, "val_loss": 1.1 / e}
           for e in range(1, epochs + 1)]
    return CompareResult(rows, histories={row["run"]: log for row in rows})


def test_compare_plots_name_datasets_tell_many_runs_apart_and_show_one_epoch_runs():
    fig = cnnscope.plot(compare_result(14, 3), "accuracy")
    lines = [line for line in fig.axes[0].get_lines() if line.get_label().endswith(" train")]
    assert lines[0].get_label() == "r0 (fake) train" and lines[1].get_label() == "r1 (fashion-mnist) train"
    assert len({line.get_color() for line in lines}) == 14  # no colour reused, past tab10's ten
    one = cnnscope.plot(compare_result(2, 1), "loss").axes[0]
    assert all(line.get_markersize() >= 9 for line in one.get_lines())  # a one-epoch run: large markers
    low, high = one.get_xlim()
    assert low <= 0 and high >= 2  # room around the single epoch


def test_sharing_figure_shows_the_fold_threshold():
    similarity = np.array([[1.0, 0.96, 0.2], [0.96, 1.0, 0.5], [0.2, 0.5, 1.0]])
    fig = plots.similarity_heatmap(similarity, ["a", "b", "c"], threshold=0.95)
    ax, bar = fig.axes
    outlined = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert sorted((round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in outlined) == [(0, 1), (1, 0)]
    assert [line.get_ydata()[0] for line in bar.get_lines()] == [0.95]  # the threshold on the colour bar
    assert "0.95" in ax.get_title()


# ---- cnnscope.plot and the stamp of what drew a figure --------------------------------------------------

def test_plot_refuses_results_without_a_figure_and_names_the_kinds():
    from cnnscope.core.summary import ZooTable

    with pytest.raises(TypeError, match="cnnscope draws no figure of a ZooTable; it draws .*EvalResult"):
        cnnscope.plot(ZooTable([]))
    with pytest.raises(ValueError, match="CompareResult has no figure 'maps'; kinds: accuracy, loss"):
        cnnscope.plot(compare_result(1, 2), "maps")


def test_a_written_figure_is_stamped_with_the_function_that_built_it(tmp_path):
    path = figures.write(compare_result(2, 2), tmp_path / "acc.png", "accuracy")
    assert read_stamp(path).startswith("cnnscope.render.plots:curves cnnscope.render.figures:write ")
    width, height = mpimg.imread(path).shape[1::-1]
    assert width > 600 and height > 300
