"""Every figure cnnscope draws. Functions take plain data (arrays, lists, dicts) and a path, and
write a PNG; nothing here knows about models or training, so analysis code stays testable alone.
"""
import sys
from pathlib import Path

import matplotlib

from cnnscope.files import atomic_write_bytes
from cnnscope.render import figure_code

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path) -> Path:
    """Write `fig` as a PNG at `path` (atomically, folders made as needed) and close it. The PNG is
    stamped with the code that drew it (the caller; render/figure_code.py)."""
    path = Path(path)
    metadata = {figure_code.KEY: figure_code.stamp(sys._getframe(1))}
    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight",
                                                       metadata=metadata))
    finally:
        plt.close(fig)
    return path


# ---- inspection: entropy gates, soft sharing, attributions (cnnscope.runs.inspect) -------------------

# One Okabe-Ito colour per dilation, in order (blue, orange, bluish green, vermillion, reddish purple,
# sky blue, yellow): distinguishable with every common colour-vision deficiency (Okabe & Ito 2008).
DILATION_COLOURS = tuple(tuple(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))
                         for h in ("0072B2", "E69F00", "009E73", "D55E00", "CC79A7", "56B4E9", "F0E442"))
GATE_LEGEND_TITLE = "most probable gate dilation\n(paler = less confident; white = all equally likely)"


def gate_colours(probs, colours=DILATION_COLOURS):
    """(D, H, W) probabilities -> (H, W, 3) RGB: the colour of the most probable dilation, faded
    towards white as the gate is less sure (confidence = (p_max - 1/D) / (1 - 1/D)). Mixing the
    colours instead would turn hesitant pixels into a hue no dilation has."""
    import numpy as np

    probs = np.asarray(probs, dtype=np.float64)
    d = len(probs)
    rgb = np.asarray(colours[:d], dtype=np.float64)[probs.argmax(axis=0)]
    confidence = ((probs.max(axis=0) - 1 / d) / (1 - 1 / d))[..., None] if d > 1 else 1.0
    return 1 - confidence * (1 - rgb)


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _image_rows(images, maps, draw, *, row_titles, column_titles, cell):
    """A row per image: the image, then one panel per map drawn by draw(ax, image, map)."""
    rows, cols = len(images), 1 + len(column_titles)
    height = cell * rows + 0.4
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, height), squeeze=False)
    # a fixed 0.4-inch band on top for the column titles, however many rows
    fig.subplots_adjust(left=0.0, right=1.0, top=1 - 0.4 / height, bottom=0.0, wspace=0.05, hspace=0.08)
    for r in range(rows):
        axes[r][0].imshow(images[r], interpolation="nearest")
        axes[r][0].set_ylabel(row_titles[r], fontsize=7, rotation=0, ha="right", va="center")
        for c, data in enumerate(maps[r]):
            draw(axes[r][c + 1], images[r], data)
    for ax in axes.flat:
        _bare(ax)
    for c, title in enumerate(["image", *column_titles]):
        axes[0][c].set_title(title, fontsize=7)
    return fig


def gate_maps(images, probs, *, dilations, column_titles, row_titles, path, cell=0.9):
    """A row per image: the image, then one gate map per stage/step (gate_colours, nearest upsampling).

    images: (N, H, W, 3) in [0, 1]; probs[i][j]: (D, h, w) gate probabilities; dilations: D labels.
    """
    from matplotlib.patches import Patch

    fig = _image_rows(images, probs, lambda ax, _, p: ax.imshow(gate_colours(p), interpolation="nearest"),
                      row_titles=row_titles, column_titles=column_titles, cell=cell)
    fig.legend(handles=[Patch(color=rgb, label=label) for label, rgb in zip(dilations, DILATION_COLOURS)],
               loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(dilations), fontsize=8, frameon=False,
               title=GATE_LEGEND_TITLE, title_fontsize=8)
    return save(fig, path)


def gate_shares(labels, shares, dilations, *, groups, path, title=""):
    """Stacked bars: the mean share of each dilation (columns of `shares`, (S, D); `dilations`: D
    labels) per step. groups: one id per bar (the stage); a dashed line separates consecutive groups.
    """
    import numpy as np

    shares = np.asarray(shares)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(labels) + 1.5), 3.2))
    bottom = np.zeros(len(labels))
    for d, (label, rgb) in enumerate(zip(dilations, DILATION_COLOURS)):
        ax.bar(range(len(labels)), shares[:, d], bottom=bottom, color=rgb, label=label, width=0.85)
        bottom += shares[:, d]
    for i in range(1, len(groups)):
        if groups[i] != groups[i - 1]:
            ax.axvline(i - 0.5, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean gate probability")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return save(fig, path)


def similarity_heatmap(matrix, names, *, path, title=""):
    """A layers x layers similarity matrix in [0, 1], with layer names and (when small) values."""
    import numpy as np

    matrix = np.asarray(matrix)
    n = len(names)
    side = max(3.0, 0.45 * n + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if matrix[i, j] > 0.6 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="|cosine similarity|")
    ax.set_title(title, fontsize=9)
    return save(fig, path)


# ---- training and evaluation ------------------------------------------------------------------

def curves(runs: dict, path, *, title: str, ylabel: str, xlabel: str = "epoch", logy: bool = False,
           best=None, test_acc=None) -> Path:
    """Line plot of {run: {kind: (xs, ys)}}: one colour per run, one line style per kind.

    One run's train/val accuracy is {"": {"train": (epochs, acc), "val": (epochs, acc)}}; several
    runs give the combined plots of `cnnscope compare`. best: (x, label), a dotted line at the best
    epoch; test_acc: a star at (that x, test_acc), the test accuracy of the best epoch's weights.
    """
    styles = ["-", "--", ":", "-."]
    kinds = list(dict.fromkeys(k for lines in runs.values() for k in lines))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for color, (run, lines) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10, runs.items()):
        for kind, (xs, ys) in lines.items():
            ax.plot(xs, ys, styles[kinds.index(kind) % len(styles)], color=color, marker="." if len(xs) < 30 else None,
                    label=f"{run} {kind}".strip())
    if best is not None:
        ax.axvline(best[0], color="0.35", linestyle=":", linewidth=1.2, label=best[1])
        if test_acc is not None:
            ax.plot([best[0]], [test_acc], "*", color="black", markersize=11, label=f"test acc {test_acc:.2f}%")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs: no 1.5
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(runs) * len(kinds) > 1 or best is not None:
        ax.legend(fontsize=8)
    return save(fig, path)


def confusion_matrix(counts, classes, path, *, title: str = "Confusion matrix (row-normalised)") -> Path:
    """Row-normalised confusion matrix (rows true, columns predicted), each cell annotated."""
    import numpy as np

    counts = np.asarray(counts, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 30:  # beyond that the numbers are unreadable; the colours still tell
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    return save(fig, path)


def image_grid(images, titles, path, *, title: str = "", title_colors=None, ncols: int = 8) -> Path:
    """Grid of images (N, H, W, 3) floats in [0, 1], each under a caption (coloured if given).

    Drawn as one montage on one axes: a grid of separate axes takes seconds to lay out.
    """
    import numpy as np

    images = np.asarray(images)
    n = len(images)
    ncols = min(ncols, max(n, 1))
    nrows = max(1, -(-n // ncols))
    h, w = images.shape[1:3] if n else (32, 32)
    gap, caption = max(2, w // 8), h * 3 // 4  # pixels between tiles, and above each for its caption
    canvas = np.ones((nrows * (h + caption), ncols * (w + gap) - gap, 3))
    corners = [(r * (h + caption) + caption, c * (w + gap)) for r, c in (divmod(i, ncols) for i in range(n))]
    for image, (y, x) in zip(images, corners):
        canvas[y:y + h, x:x + w] = image
    fig, ax = plt.subplots(figsize=(1.3 * ncols, 1.3 * nrows * (h + caption) / h * 0.8 + 0.3))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    for i, (y, x) in enumerate(corners):
        ax.text(x + w / 2, y - 1, titles[i], ha="center", va="bottom", fontsize=6.5,
                color=title_colors[i] if title_colors else "black")
    if title:
        ax.set_title(title, fontsize=9)
    return save(fig, path)


# ---- augmentation preview (cnnscope.runs.augment) -----------------------------------------------------

def augmentation_grid(originals, augmented, titles, path, *, title: str = "", ncols: int = 8) -> Path:
    """Pairs of rows: training images (N, H, W, 3) in [0, 1] captioned by `titles`, and below each
    row the same images after augmentation."""
    import numpy as np

    originals, augmented = np.asarray(originals), np.asarray(augmented)
    n = len(originals)
    ncols = min(ncols, max(n, 1))
    pairs = max(1, -(-n // ncols))
    fig, axes = plt.subplots(2 * pairs, ncols, figsize=(1.4 * ncols + 0.6, 2.9 * pairs + 0.5), squeeze=False)
    for row, images in ((0, originals), (1, augmented)):
        for i in range(pairs * ncols):
            ax = axes[2 * (i // ncols) + row, i % ncols]
            _bare(ax)
            if i >= n:
                ax.axis("off")
                continue
            ax.imshow(images[i], interpolation="nearest")
            if row == 0:
                ax.set_title(titles[i], fontsize=7)
            if i % ncols == 0:
                ax.set_ylabel("augmented" if row else "original", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


# ---- receptive fields (cnnscope.core.rf) -------------------------------------------------------------

def erf_heatmap(heat, path, *, centre, box, radius=None, box_label="theoretical RF", title: str = "") -> Path:
    """Effective-RF heatmap (H, W) over the input pixels with the theoretical RF box (top, left, bottom,
    right, in pixels, drawn clipped to the image), a circle of `radius` pixels around `centre` (y, x),
    the input pixel at the centre of the probed output unit's RF, marked +; a legend names all three."""
    import numpy as np
    from matplotlib.patches import Circle, Rectangle

    heat = np.asarray(heat, dtype=float)
    h, w = heat.shape
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    image = ax.imshow(heat, cmap="magma", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of |gradient|")
    top, left = max(box[0], 0), max(box[1], 0)
    bottom, right = min(box[2], h - 1), min(box[3], w - 1)
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1, fill=False,
                           edgecolor="cyan", linestyle="--", linewidth=2, label=box_label, clip_on=False))
    if radius is not None:
        ax.add_patch(Circle((centre[1], centre[0]), radius, fill=False, edgecolor="lime", linewidth=1.5,
                            label=f"95% of the mass: r = {radius:.1f} px"))
    ax.plot(centre[1], centre[0], "+", color="white", markeredgecolor="white", markersize=9, linestyle="none",
            label="centre of the probed output unit's RF")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set(xlabel="input x (px)", ylabel="input y (px)")
    # a dark key background, so that the white centre marker shows in the legend too
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, facecolor="0.25",
                       labelcolor="white", framealpha=1.0)
    legend.set_title("heat: |d output unit / d input pixel|, mean over images", prop={"size": 8})
    legend.get_title().set_color("white")
    ax.set_title(title, fontsize=9)
    return save(fig, path)
