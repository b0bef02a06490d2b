"""Every figure cnnscope draws. Functions take plain data (arrays, lists, dicts) and a path, and
write a PNG; nothing here knows about models or training, so analysis code stays testable alone.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path) -> Path:
    """Write `fig` as a PNG at `path` (folders made as needed) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
