"""The figures of training, evaluation and the inspections. Each function takes plain data (arrays,
lists, dicts) and returns a matplotlib Figure (render/figures.py draws them from result objects:
`cnnscope.plot`); `save` writes one as a PNG. Nothing here knows about models or training, so
analysis code stays testable alone.

Figures are made with matplotlib.figure.Figure, not pyplot: no window, no global state, and a
notebook shows them with its own backend.
"""
import sys
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from cnnscope.files import atomic_write_bytes
from cnnscope.render import figure_code


def drawn(fig):
    """`fig`, marked as built by the function that calls this, so that `save` stamps the PNG with
    that function's code too."""
    fig.cnnscope_built_by = figure_code.drawer(sys._getframe(1))
    return fig


def save(fig, path) -> Path:
    """Write `fig` as a PNG at `path` (atomically, folders made as needed). The PNG is stamped with
    the code that drew it (the function that built it, the caller; render/figure_code.py)."""
    path = Path(path)
    metadata = {figure_code.KEY: figure_code.stamp(sys._getframe(1), getattr(fig, "cnnscope_built_by", None))}
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight", metadata=metadata))
    return path


def subplots(*args, figsize, **kwargs):
    """(Figure, axes) as pyplot.subplots gives them, on a Figure of its own."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


# ---- inspection: entropy gates, soft sharing (cnnscope.runs.inspect) ---------------------------------

# One Okabe-Ito colour per dilation, in order (blue, orange, bluish green, vermillion, reddish purple,
# sky blue, yellow): distinguishable with every common colour-vision deficiency (Okabe & Ito 2008).
DILATION_COLOURS = tuple(tuple(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))
                         for h in ("0072B2", "E69F00", "009E73", "D55E00", "CC79A7", "56B4E9", "F0E442"))
GATE_LEGEND_TITLE = "most probable gate dilation\n(paler = less confident; white = all equally likely)"
GATE_PANELS_PER_ROW = 10  # the steps of one image wrap into rows of at most this many panels
LABEL_SIZE = 9  # points: readable with the figure shown at a README's 800 pixels


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


def bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def gate_maps(images, probs, *, dilations, panel_titles, row_titles, title="", cell=1.0,
              per_row=GATE_PANELS_PER_ROW):
    """Per image, a block of rows: the image, then its gate map at every stage/step (gate_colours,
    nearest upsampling), `per_row` panels a row, each titled (`panel_titles`, e.g. "s0.t1").

    images: (N, H, W, 3) in [0, 1]; probs[i][j]: (D, h, w) gate probabilities; dilations: D labels.
    """
    from matplotlib.patches import Patch

    steps = len(panel_titles)
    lines = max(1, -(-steps // per_row))  # rows per image
    cols = -(-steps // lines)  # the steps spread evenly over them
    rows = len(images) * lines
    fig, axes = subplots(rows, 1 + cols, figsize=(cell * (1 + cols), 1.25 * cell * rows + 1.1), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 1.0 / (1.25 * cell * rows + 1.1), bottom=0.01,
                        wspace=0.08, hspace=0.35)
    for ax in axes.flat:
        bare(ax)
        ax.axis("off")
    for i, image in enumerate(images):
        first = axes[i * lines][0]
        first.axis("on")
        first.imshow(image, interpolation="nearest")
        first.set_title(row_titles[i], fontsize=LABEL_SIZE)
        for j, p in enumerate(probs[i]):
            ax = axes[i * lines + j // cols][1 + j % cols]
            ax.axis("on")
            ax.imshow(gate_colours(p), interpolation="nearest")
            ax.set_title(panel_titles[j], fontsize=LABEL_SIZE)
    legend = fig.legend(handles=[Patch(color=rgb, label=label) for label, rgb in zip(dilations, DILATION_COLOURS)],
                        loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=len(dilations), fontsize=LABEL_SIZE,
                        frameon=False, title=(title + "\n" if title else "") + GATE_LEGEND_TITLE,
                        title_fontsize=LABEL_SIZE)
    legend.get_title().set_multialignment("center")
    return drawn(fig)


def gate_shares(labels, shares, dilations, *, groups, title=""):
    """Stacked bars: the mean share of each dilation (columns of `shares`, (S, D); `dilations`: D
    labels) per step. groups: one id per bar (the stage); a dashed line separates consecutive groups.
    """
    import numpy as np

    shares = np.asarray(shares)
    fig, ax = subplots(figsize=(max(4.0, 0.28 * len(labels) + 1.5), 3.2))
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
    return drawn(fig)


def similarity_heatmap(matrix, names, *, threshold, title=""):
    """A layers x layers similarity matrix in [0, 1], with layer names and (when small) values; the
    pairs at or above the fold `threshold` outlined, and the threshold marked on the colour bar."""
    import numpy as np
    from matplotlib.patches import Rectangle

    matrix = np.asarray(matrix)
    n = len(names)
    side = max(3.0, 0.45 * n + 2.0)
    fig, ax = subplots(figsize=(side + 1.0, side))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i, j in zip(*np.nonzero(matrix >= threshold)):
        if i != j:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.8))
    if n <= 16:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if matrix[i, j] > 0.6 else "white")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="|cosine similarity|")
    bar.ax.axhline(threshold, color="red", linewidth=2.5)
    ax.set_title(title + ("\n" if title else "") + f"red: >= the fold threshold {threshold:g}", fontsize=9)
    return drawn(fig)


# ---- training and evaluation ------------------------------------------------------------------

def run_colours(n: int) -> list:
    """n distinguishable colours: tab10 up to 10 runs, then tab20, then evenly around the hue circle."""
    import numpy as np

    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(matplotlib.colormaps["tab20"].colors[:n])
    return [matplotlib.colormaps["hsv"](h) for h in np.linspace(0, 1, n, endpoint=False)]


def curves(runs: dict, *, title: str, ylabel: str, xlabel: str = "epoch", logy: bool = False, best=None, test=None):
    """Line plot of {run: {kind: (xs, ys)}}: one colour per run, one line style and marker per kind.

    One run's train/val accuracy is {"": {"train": (epochs, acc), "val": (epochs, acc)}}; several
    runs give the combined plots of `cnnscope compare`. A run of one point (one epoch) is drawn as
    large markers. best: (x, label), a dotted line at the best epoch; test: (value, label), a star at
    (that x, value): the test accuracy or loss of the best epoch's weights.
    """
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]
    kinds = list(dict.fromkeys(k for lines in runs.values() for k in lines))
    fig, ax = subplots(figsize=(7, 4.2))
    for color, (run, lines) in zip(run_colours(len(runs)), runs.items()):
        for kind, (xs, ys) in lines.items():
            k = kinds.index(kind)
            few = len(xs) < 30
            ax.plot(xs, ys, styles[k % len(styles)], color=color, marker=markers[k % len(markers)] if few else None,
                    markersize=9 if len(xs) == 1 else 4, markerfacecolor="white" if k else color,
                    label=f"{run} {kind}".strip())
    if best is not None:
        ax.axvline(best[0], color="0.35", linestyle=":", linewidth=1.2, label=best[1])
        if test is not None:
            ax.plot([best[0]], [test[0]], "*", color="black", markersize=13, label=test[1])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs: no 1.5
    xs = [x for lines in runs.values() for run_xs, _ in lines.values() for x in run_xs]
    if xs and max(xs) - min(xs) < 1:  # one epoch only: room around it
        ax.set_xlim(min(xs) - 1, max(xs) + 1)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(runs) * len(kinds) > 1 or best is not None:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return drawn(fig)


def confusion_matrix(counts, classes, *, title: str = "Confusion matrix (row-normalised)"):
    """Row-normalised confusion matrix (rows true, columns predicted); the non-zero cells annotated
    with their share (an empty cell: no image), the colour bar labelled."""
    import numpy as np

    counts = np.asarray(counts, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's test images")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 30:  # beyond that the numbers are unreadable; the colours still tell
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, f"{rates[i, j]:.2f}" if rates[i, j] >= 0.005 else "<.01", ha="center", va="center",
                    fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    return drawn(fig)


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
    fig, ax = subplots(figsize=(1.3 * ncols, 1.3 * nrows * (h + caption) / h * 0.8 + 0.3))
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
    fig, axes = subplots(2 * pairs, ncols, figsize=(1.4 * ncols + 0.6, 2.9 * pairs + 0.5), squeeze=False)
    for row, images in ((0, originals), (1, augmented)):
        for i in range(pairs * ncols):
            ax = axes[2 * (i // ncols) + row, i % ncols]
            bare(ax)
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
