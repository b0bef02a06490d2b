"""Whether a figure a README shows is what its code would draw now (see render/figure_code.py)."""
import importlib
import struct
from pathlib import Path

from cnnscope.render.figure_code import KEY, drawers_hash

CURRENT, STALE, UNKNOWN = "current", "stale", "unknown"


def read_stamp(path) -> str | None:
    """KEY's text in the PNG at `path`; None when it has none (or is no PNG)."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"tEXt":
            keyword, _, text = data[pos + 8:pos + 8 + length].partition(b"\0")
            if keyword == KEY.encode("latin-1"):
                return text.decode("latin-1")
        pos += 12 + length
    return None


def figure_state(path) -> str:
    """CURRENT, STALE (the code that drew it has changed since) or UNKNOWN (no stamp: drawn before
    cnnscope stamped its figures, or not by cnnscope)."""
    text = read_stamp(path)
    *names, recorded = (text or "").split() or [""]
    pairs = [n.split(":", 1) for n in names]
    # a stamp is data read from a file: only cnnscope's own modules are imported for it
    if not pairs or any(len(p) != 2 or not p[0].startswith("cnnscope.") for p in pairs):
        return UNKNOWN
    try:
        drawers = [(importlib.import_module(m), f) for m, f in pairs]
    except ImportError:  # a module cnnscope no longer has
        return STALE
    return CURRENT if drawers_hash(drawers) == recorded else STALE
