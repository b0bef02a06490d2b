"""Figures of the attributions and of their sanity check. Each function builds and returns a
matplotlib Figure from plain arrays (so a test can read its colour scales); plots.save writes it.

Colour: a signed method is drawn with a diverging map (RdBu_r) centred at zero; a non-negative one
with a perceptual sequential map (magma). Each method's legend (under its column) says what its
colours mean: red is evidence for the class only for attributions that add up to the score.

Scale: by default every map has its own (scale="image": its SCALE_PERCENTILE-th percentile of
|value|, written in the panel's corner), so that no map is drawn near black because another image
has larger values; scale="method" gives each method one scale over all images, for comparing
images. Beyond the scale colours saturate, and the colour bar's arrows say so. With `overlay` the
map is laid over the image in grey, transparent where the map is near zero.
"""
import textwrap

import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.ticker import FixedFormatter, FuncFormatter

from matplotlib.figure import Figure

from cnnscope.core.sanity import average_ranks
from cnnscope.render.plots import bare, drawn, subplots

SCALE_PERCENTILE = 99.5
SIGNED_CMAP, UNSIGNED_CMAP = "RdBu_r", "magma"
SCALES = ("image", "method")
FONT = 7.5  # points, with a 1.8-inch panel: readable at a README's width


def scale_top(maps: np.ndarray) -> float:
    """The SCALE_PERCENTILE-th percentile of |maps| (a tiny positive number for all-zero maps)."""
    top = float(np.percentile(np.abs(maps), SCALE_PERCENTILE)) if maps.size else 0.0
    return top if top > 0 else 1e-12


def method_norm(maps: np.ndarray, signed: bool):
    """The colour norm of maps (any shape) on their own scale: symmetric about 0 if signed, else from 0."""
    top = scale_top(maps)
    return TwoSlopeNorm(vcenter=0.0, vmin=-top, vmax=top) if signed else Normalize(vmin=0.0, vmax=top)


BAR, BAR_TEXT = 0.16, 0.8  # inches: a colour bar, and its ticks and legend under it


def _grid(rows: int, cols: int, cell: float, title_band: float):
    """A figure of rows x cols panels, the first column for the image, and a band of colour bars."""
    height = cell * rows + title_band + BAR + BAR_TEXT
    fig = Figure(figsize=(cell * cols + 1.2, height))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[cell] * rows + [BAR], wspace=0.06, hspace=0.12,
                            left=1.2 / (cell * cols + 1.2), right=0.99, top=1 - title_band / height,
                            bottom=BAR_TEXT / height)
    axes = [[fig.add_subplot(grid[r, c]) for c in range(cols)] for r in range(rows)]
    for ax in (a for row in axes for a in row):
        bare(ax)
    return fig, grid, axes


def _colour_bar(fig, grid, column, image, label, extend, relative=False):
    """A horizontal colour bar under `column` with three ticks (its ends, and 0 or the middle); on a
    relative scale the ticks read -top, 0, top."""
    bar = fig.add_subplot(grid[-1, column])
    low, high = image.norm.vmin, image.norm.vmax
    if relative:
        formatter = FixedFormatter(["-top", "0", "top"] if low < 0 else ["0", "top/2", "top"])
        unit_label = ""
    else:  # tick labels in units of a power of ten, named in the label, so that neighbours' labels stay apart
        power = int(np.floor(np.log10(max(abs(low), abs(high)))))
        formatter = FuncFormatter(lambda value, _: f"{value / 10.0 ** power:.2g}")
        unit_label = f" (x 1e{power})" if power else ""
    colorbar = fig.colorbar(image, cax=bar, orientation="horizontal", extend=extend,
                            ticks=[low, (low + high) / 2, high], format=formatter)
    colorbar.ax.tick_params(labelsize=FONT)
    for tick, align in zip(colorbar.ax.xaxis.get_major_ticks(), ("left", "center", "right")):
        tick.label1.set_horizontalalignment(align)  # the end labels inside the bar: neighbours' stay apart
    colorbar.set_label("\n".join(textwrap.wrap(label + unit_label, 30)), fontsize=FONT)
    return colorbar


def _overlaid(image, values, norm, cmap):
    """RGBA of `values` in `cmap` over `image` in grey: opaque where |value| reaches the scale's top,
    transparent near zero."""
    from matplotlib import colormaps

    grey = image.mean(axis=-1, keepdims=True) if image.ndim == 3 else image[..., None]
    top = max(abs(norm.vmin), abs(norm.vmax))
    alpha = np.clip(np.abs(values) / top, 0, 1)[..., None] ** 0.7
    colour = colormaps[cmap](norm(values))[..., :3]
    return np.concatenate([alpha * colour + (1 - alpha) * np.repeat(grey, 3, axis=-1), np.ones_like(alpha)], axis=-1)


def attribution_figure(images, maps, *, methods, row_titles, title="", scale="image", overlay=True, cell=1.8):
    """A row per image: the image, then each method's map; a colour bar and legend per method column.

    images: (N, H, W, 3) in [0, 1]; maps: (N, M, H, W); methods: [(title, signed, reads)], `reads`
    saying what the colours mean. scale: "image" (each map its own scale, its top in the panel's
    corner) or "method" (one scale per method over all images); overlay: maps over the grey image.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
    maps, images = np.asarray(maps), np.asarray(images)
    fig, grid, axes = _grid(len(images), 1 + len(methods), cell, 0.75 if title else 0.35)
    for r, image in enumerate(images):
        axes[r][0].imshow(image, interpolation="nearest")
        axes[r][0].set_ylabel(row_titles[r], fontsize=FONT, rotation=0, ha="right", va="center")
    axes[0][0].set_title("image", fontsize=FONT + 0.5)
    for c, (name, signed, reads) in enumerate(methods):
        cmap = SIGNED_CMAP if signed else UNSIGNED_CMAP
        shared = method_norm(maps[:, c], signed) if scale == "method" else None
        for r in range(len(images)):
            norm = shared or method_norm(maps[r, c], signed)
            shown = axes[r][c + 1].imshow(maps[r, c], cmap=cmap, norm=norm, interpolation="nearest")
            if overlay:
                shown.set_visible(False)  # kept for its scale (the colour bar, a test); the overlay is drawn
                axes[r][c + 1].imshow(_overlaid(images[r], maps[r, c], norm, cmap), interpolation="nearest")
            if scale == "image":
                axes[r][c + 1].text(0.98, 0.02, f"top {norm.vmax:.2g}", transform=axes[r][c + 1].transAxes,
                                    ha="right", va="bottom", fontsize=FONT - 1, color="black",
                                    bbox={"facecolor": "white", "alpha": 0.75, "pad": 1, "linewidth": 0})
            if r == 0:
                first = shown
        axes[0][c + 1].set_title(name, fontsize=FONT + 0.5)
        clipped = any(np.abs(maps[r, c]).max() > axes[r][c + 1].images[0].norm.vmax for r in range(len(images)))
        _colour_bar(fig, grid, c + 1, first, reads, ("both" if signed else "max") if clipped else "neither",
                    relative=scale == "image")
    if title:
        fig.suptitle(title, fontsize=FONT + 1.5)
    return drawn(fig)


def sanity_curves(stage_labels, ranks: dict, *, flagged, controls, threshold, title=""):
    """Mean rank correlation with the original maps vs the number of randomised layers, one line per
    method. stage_labels: the top-most random layer per stage ("" for stage 0); ranks: {method title: values}."""
    fig, ax = subplots(figsize=(max(6.0, 0.28 * len(stage_labels) + 3.5), 4.4))
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
    return drawn(fig)


def rank_map(heat: np.ndarray) -> np.ndarray:
    """|map| as each pixel's rank within the map, scaled to [0, 1]: what the Spearman test compares.
    Tied pixels share their average rank (as the test ranks them), so a flat map stays flat."""
    flat = np.abs(heat).ravel()
    return (average_ranks(flat) / max(flat.size - 1, 1)).reshape(heat.shape)


def sanity_maps(image, snapshots: dict, *, methods, stage_titles: dict, title="", cell=1.5):
    """A row per method: the image, then the method's map at each kept stage, drawn as the rank of
    |value| within the map (one colour bar). snapshots: {stage: (M, H, W)}; methods: titles."""
    stages = sorted(snapshots)
    fig, grid, axes = _grid(len(methods), 1 + len(stages), cell, 0.95 if title else 0.55)
    norm = Normalize(0.0, 1.0)
    shown = None
    for r, name in enumerate(methods):
        axes[r][0].imshow(image, interpolation="nearest")
        axes[r][0].set_ylabel(name, fontsize=FONT, rotation=0, ha="right", va="center")
        for c, stage in enumerate(stages):
            shown = axes[r][c + 1].imshow(rank_map(snapshots[stage][r]), cmap=UNSIGNED_CMAP, norm=norm,
                                          interpolation="nearest")
    for c, stage in enumerate(stages):
        axes[0][c + 1].set_title(stage_titles[stage], fontsize=FONT)
    axes[0][0].set_title("image", fontsize=FONT)
    _colour_bar(fig, grid, slice(1, None), shown, "rank of |attribution| within the map (ties share their "
                "average rank)", "neither")
    if title:
        fig.suptitle(title, fontsize=FONT + 1.5)
    return drawn(fig)
