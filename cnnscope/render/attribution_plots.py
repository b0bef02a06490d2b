"""Figures of the attributions and of their sanity check. Each function builds and returns a
matplotlib Figure from plain arrays (so a test can read its colour scales); plots.save writes it.

Colour: a signed method is drawn with a diverging map (RdBu_r: red for evidence for the class,
blue against) centred at zero; a non-negative method with a perceptual sequential map (magma).
Each method has ONE scale over all images (its SCALE_PERCENTILE-th percentile of |value|, beyond
which colours saturate; the colour bar's arrows say so) and one colour bar under its column.
"""
import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.ticker import FuncFormatter

from cnnscope.render.plots import _bare, plt

SCALE_PERCENTILE = 99.5
SIGNED_CMAP, UNSIGNED_CMAP = "RdBu_r", "magma"


def method_norm(maps: np.ndarray, signed: bool):
    """The colour norm of one method's maps (any shape): symmetric about 0 if signed, else from 0."""
    top = float(np.percentile(np.abs(maps), SCALE_PERCENTILE)) if maps.size else 0.0
    top = top if top > 0 else 1e-12
    return TwoSlopeNorm(vcenter=0.0, vmin=-top, vmax=top) if signed else Normalize(vmin=0.0, vmax=top)


def _grid(rows: int, cols: int, cell: float, bar: float):
    """A figure of rows x cols panels, the first column for the image, and a band of colour bars."""
    fig = plt.figure(figsize=(cell * cols, cell * rows + 0.5 + bar))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[cell] * rows + [bar], wspace=0.06, hspace=0.1,
                            left=0.02, right=0.98, top=1 - 0.4 / (cell * rows + 0.5 + bar), bottom=0.02)
    axes = [[fig.add_subplot(grid[r, c]) for c in range(cols)] for r in range(rows)]
    for ax in (a for row in axes for a in row):
        _bare(ax)
    return fig, grid, axes


def _colour_bar(fig, grid, column, image, label, extend):
    """A horizontal colour bar under `column` with ticks at its ends (and 0 or the middle)."""
    bar = fig.add_subplot(grid[-1, column])
    low, high = image.norm.vmin, image.norm.vmax
    # tick labels in units of a power of ten, named in the label, so that neighbours' labels stay apart
    power = int(np.floor(np.log10(max(abs(low), abs(high)))))
    unit = 10.0 ** power
    colorbar = fig.colorbar(image, cax=bar, orientation="horizontal", extend=extend,
                            ticks=[low, (low + high) / 2, high],
                            format=FuncFormatter(lambda value, _: f"{value / unit:.2g}"))
    colorbar.ax.tick_params(labelsize=6)
    colorbar.set_label(label + (f" (x 1e{power})" if power else ""), fontsize=6)
    return colorbar


def attribution_figure(images, maps, *, methods, row_titles, cell=1.6):
    """A row per image: the image, then each method's map on the method's shared scale; a colour bar
    per method column. images: (N, H, W, 3) in [0, 1]; maps: (N, M, H, W); methods: [(title, signed)]."""
    maps = np.asarray(maps)
    fig, grid, axes = _grid(len(images), 1 + len(methods), cell, 0.32)
    for r, image in enumerate(images):
        axes[r][0].imshow(image, interpolation="nearest")
        axes[r][0].set_ylabel(row_titles[r], fontsize=7, rotation=0, ha="right", va="center")
    axes[0][0].set_title("image", fontsize=7)
    for c, (title, signed) in enumerate(methods):
        norm = method_norm(maps[:, c], signed)
        shown = [axes[r][c + 1].imshow(maps[r, c], cmap=SIGNED_CMAP if signed else UNSIGNED_CMAP, norm=norm,
                                       interpolation="nearest") for r in range(len(images))]
        axes[0][c + 1].set_title(title, fontsize=7)
        clipped = np.abs(maps[:, c]).max() > norm.vmax
        _colour_bar(fig, grid, c + 1, shown[0], "attribution (signed)" if signed else "attribution",
                    ("both" if signed else "max") if clipped else "neither")
    return fig


def sanity_curves(stage_labels, ranks: dict, *, flagged, controls, threshold, title=""):
    """Mean rank correlation with the original maps vs the number of randomised layers, one line per
    method. stage_labels: the top-most random layer per stage ("" for stage 0); ranks: {method title: values}."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(stage_labels) + 3.5), 4.4))
    styles = ["-", "--", "-.", ":"]
    for k, (name, values) in enumerate(ranks.items()):
        label = name + (" - FLAGGED" if name in flagged else "")
        ax.plot(range(len(values)), values, styles[k % len(styles)], marker="o", markersize=3,
                color="0.45" if name in controls else None, label=label,
                linewidth=2.2 if name in flagged else 1.4)
    ax.axhline(threshold, color="black", linewidth=0.8, linestyle=":")
    ax.text(0, threshold, f" flag above {threshold:g}", va="bottom", fontsize=7)
    ax.set_xticks(range(len(stage_labels)), stage_labels, rotation=90, fontsize=7)
    lowest = min((min(values) for values in ranks.values()), default=0.0)
    ax.set(xlabel="randomised from the output down to this layer (cascading)", ylim=(min(-0.35, lowest - 0.05), 1.05),
           ylabel="Spearman rank correlation of |map|\nwith the original model's (mean over images)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return fig


def rank_map(heat: np.ndarray) -> np.ndarray:
    """|map| as each pixel's rank within the map, scaled to [0, 1]: what the Spearman test compares."""
    flat = np.abs(heat).ravel()
    ranks = np.empty(flat.size)
    ranks[flat.argsort(kind="stable")] = np.arange(flat.size)
    return (ranks / max(flat.size - 1, 1)).reshape(heat.shape)


def sanity_maps(image, snapshots: dict, *, methods, stage_titles: dict, cell=1.5):
    """A row per method: the image, then the method's map at each kept stage, drawn as the rank of
    |value| within the map (one colour bar). snapshots: {stage: (M, H, W)}; methods: titles."""
    stages = sorted(snapshots)
    fig, grid, axes = _grid(len(methods), 1 + len(stages), cell, 0.28)
    norm = Normalize(0.0, 1.0)
    shown = None
    for r, title in enumerate(methods):
        axes[r][0].imshow(image, interpolation="nearest")
        axes[r][0].set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
        for c, stage in enumerate(stages):
            shown = axes[r][c + 1].imshow(rank_map(snapshots[stage][r]), cmap=UNSIGNED_CMAP, norm=norm,
                                          interpolation="nearest")
    for c, stage in enumerate(stages):
        axes[0][c + 1].set_title(stage_titles[stage], fontsize=7)
    axes[0][0].set_title("image", fontsize=7)
    _colour_bar(fig, grid, slice(1, None), shown, "rank of |attribution| within the map", "neither")
    return fig
