"""One number format for every command, table, figure and README block.

Counts carry thousands separators (84,322); MACs and FLOPs are three significant figures in K, M
or G (13.7 M, 5.42 G); a learning rate is three significant figures (0.0637); a count of things
names them in the right number (1 epoch, 2 epochs).
"""
import math


def count(value) -> str:
    """A whole number with thousands separators; '-' for None."""
    return "-" if value is None else f"{int(value):,}"


def significant(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant figures in plain notation (13.7, 200, 0.000479)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    if len(text.lstrip("-").replace(".", "").lstrip("0")) > digits:  # rounded up a decade: 999.6 -> 1000
        text = f"{value:.{max(0, decimals - 1)}f}"
    return text


def macs(value, unit: str = "") -> str:
    """MACs (or FLOPs) in K, M or G to three significant figures: 13.7 M, 200 M, 5.42 G; '-' for None."""
    if value is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale * 0.9995:  # what rounds to 1.00 of this prefix is shown in it
            return f"{significant(value / scale)} {prefix}{unit}"
    return f"{significant(value) if value else 0} {unit}".rstrip()


def lr(value) -> str:
    """A learning rate to three significant figures (0.0637, 0.0001, 0.000479; 1e-05 below 1e-4)."""
    return f"{value:.3g}"


def plural(n: int, noun: str, plural_form: str = "") -> str:
    """'1 epoch', '2 epochs', '10,000 images'."""
    return f"{n:,} {noun if n == 1 else plural_form or noun + 's'}"


def fixed(value, digits: int = 3) -> str:
    """A fraction or score with `digits` decimals; '-' for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def scientific(value) -> str:
    """A quantity of any scale (an integration error) in one format: -1.0e-01, 3.0e-05; '-' for None."""
    return "-" if value is None else f"{value:.1e}"


def megabytes(n_bytes) -> str:
    """A memory size in MB to three significant figures (0.34 MB, 45.1 MB)."""
    return f"{significant(n_bytes / 1e6)} MB"
