"""The effective-RF figure: where the gradient of the probed output unit lands on the input, beside
the theoretical RF and the radius that holds 95% of the mass."""
import numpy as np
from matplotlib import patheffects
from matplotlib.colors import LogNorm, Normalize
from matplotlib.patches import Circle, Rectangle

from cnnscope.render.plots import drawn, subplots

LOG_RANGE = 1e-4  # a log scale spans four decades below the peak: the tail that holds most of the mass
OUTLINE = [patheffects.withStroke(linewidth=3, foreground="black")]  # a marker visible on any colour


def erf_heatmap(heat, *, centre, box, radius=None, box_label="theoretical RF", title: str = "", log: bool = True):
    """Effective-RF heatmap (H, W) over the input pixels, on a log scale (or linear), with the
    theoretical RF box (top, left, bottom, right, in pixels), a circle of `radius` pixels around
    `centre` (y, x), the input pixel at the centre of the probed output unit's RF (marked +) and the
    peak of the heat (marked x). The view reaches past the input (grey) far enough to show the box,
    at most half the input on each side; the box and circle are clipped to it."""
    heat = np.asarray(heat, dtype=float)
    h, w = heat.shape
    peak = float(heat.max()) if heat.size else 0.0
    fig, ax = subplots(figsize=(5.6, 5.4))
    ax.set_facecolor("0.82")  # outside the input
    if log and peak > 0:
        norm = LogNorm(vmin=max(peak * LOG_RANGE, heat[heat > 0].min()), vmax=peak)
        shown = np.where(heat > 0, heat, norm.vmin)  # no gradient at all: the bottom of the scale
    else:
        norm, shown = Normalize(vmin=0.0, vmax=peak or 1.0), heat
    image = ax.imshow(shown, cmap="magma", norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="share of |gradient|" + (" (log scale)" if isinstance(norm, LogNorm) else ""))
    top, left, bottom, right = box
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1, fill=False, edgecolor="cyan",
                           linestyle="--", linewidth=2, label=box_label))
    if radius is not None:
        ax.add_patch(Circle((centre[1], centre[0]), radius, fill=False, edgecolor="lime", linewidth=1.8,
                            label=f"95% of the mass: r = {radius:.1f} px"))
    ax.plot(centre[1], centre[0], "+", color="white", markersize=12, markeredgewidth=2, linestyle="none",
            path_effects=OUTLINE, label="centre of the probed output unit's RF")
    if peak > 0:
        py, px = np.unravel_index(int(heat.argmax()), heat.shape)
        ax.plot(px, py, "x", color="cyan", markersize=10, markeredgewidth=2, linestyle="none", path_effects=OUTLINE,
                label=f"peak ({px}, {py})")
    margin_y = min(max(0.0, -top, bottom - (h - 1)) + 1, h / 2)  # enough to show the box, at most half the input
    margin_x = min(max(0.0, -left, right - (w - 1)) + 1, w / 2)
    ax.set_xlim(-0.5 - margin_x, w - 0.5 + margin_x)
    ax.set_ylim(h - 0.5 + margin_y, -0.5 - margin_y)
    ax.set(xlabel="input x (px)", ylabel="input y (px)")
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, facecolor="0.25",
                       labelcolor="white", framealpha=1.0)
    legend.set_title("heat: |d output unit / d input pixel|, mean over images; grey: outside the input",
                     prop={"size": 8})
    legend.get_title().set_color("white")
    ax.set_title(title, fontsize=9)
    return drawn(fig)
