"""The one reader of a run folder's files (metrics.json, train_log.csv, generated text) for the
commands that read runs without loading a model (compare, update-readme), and the one writer of its
metrics.json (RunMetrics: training and evaluation hand it their values).

A file that is missing, not UTF-8, not JSON, or has text in a number column is a RunError
naming the file, what is wrong with it, and the command that writes it again.
"""
import csv
import io
import json
from pathlib import Path

from cnnscope.errors import RunError
from cnnscope.files import atomic_write_text


def _fail(path, problem: str, made_by: str):
    raise RunError(f"{path} {problem}. Restore it, or write it again with `{made_by}`.")


def read_text(path, made_by="cnnscope train") -> str:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        _fail(path, f"cannot be read ({e.strerror or e})", made_by)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(path, f"is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})", made_by)


def read_json(path, made_by="cnnscope train") -> dict:
    """A JSON object."""
    text = read_text(path, made_by)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        _fail(path, f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})", made_by)
    except ValueError as e:  # an integer of more digits than Python converts
        _fail(path, f"holds a number cnnscope does not read ({str(e).split(';')[0]})", made_by)
    except RecursionError:
        _fail(path, "nests lists or objects deeper than cnnscope reads (a run's files are flat)", made_by)
    if not isinstance(obj, dict):
        _fail(path, f"holds a JSON {type(obj).__name__}, not an object", made_by)
    return obj


def read_csv(path, numeric=(), made_by="cnnscope train") -> list[dict]:
    """Rows of a CSV file with a header; the `numeric` columns must be there and hold numbers (floats)."""
    rows = list(csv.DictReader(io.StringIO(read_text(path, made_by), newline="")))
    header = rows[0].keys() if rows else ()
    missing = [c for c in numeric if rows and c not in header]
    if missing:
        _fail(path, f"has no column {', '.join(missing)}", made_by)
    for line, row in enumerate(rows, 2):
        for column in numeric:
            try:
                row[column] = float(row[column])
            except TypeError:  # a short row
                _fail(path, f"has no value in the column {column} on line {line}", made_by)
            except ValueError:
                _fail(path, f"has {row[column]!r} in the number column {column} on line {line}", made_by)
    return rows


METRIC_NUMBERS = ("params", "macs", "best_val_acc", "test_acc", "test_loss", "best_epoch", "epochs", "train_time_s",
                  "images_per_s")
AVERAGES = ("macro_avg", "weighted_avg")  # each {precision, recall, f1}


def _check_numbers(obj: dict, keys, path, made_by, prefix=""):
    for key in keys:
        value = obj.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            _fail(path, f"has {_shown(value)} as {prefix}{key}, which should be a number", made_by)
        if value is not None and not _fits_float(value):
            _fail(path, f"has {_shown(value)} as {prefix}{key}, which is too large for a number cnnscope shows", made_by)


def _fits_float(number) -> bool:
    try:
        float(number)
    except OverflowError:  # an int of hundreds of digits
        return False
    return True


def _shown(value) -> str:
    """`value` as an error message quotes it: at most 60 characters of its repr."""
    text = repr(value) if not isinstance(value, (list, dict)) or len(value) < 20 else f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def read_metrics(path, made_by="cnnscope train") -> dict:
    """A run's metrics.json, its numbers checked (each may be absent or null)."""
    metrics = read_json(path, made_by)
    _check_numbers(metrics, METRIC_NUMBERS, path, made_by)
    lrs = metrics.get("lr_per_step")
    if lrs is not None and not (isinstance(lrs, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and _fits_float(v) for v in lrs)):
        _fail(path, "has an lr_per_step that is not a list of numbers", made_by)
    for key in AVERAGES:
        average = metrics.get(key)
        if average is not None and not isinstance(average, dict):
            _fail(path, f"has {_shown(average)} as {key}, which should be an object of precision, recall and f1", made_by)
        _check_numbers(average or {}, ("precision", "recall", "f1"), path, made_by, prefix=f"{key}.")
    return metrics


class RunMetrics:
    """A run folder's metrics.json, held in memory: `update` merges values in and writes the whole
    file again (atomically). Training hands it the model's MACs and receptive field and each epoch's
    numbers; evaluation the test metrics."""

    def __init__(self, run_dir, values: dict | None = None):
        self.path, self.values = Path(run_dir) / "metrics.json", dict(values or {})

    @classmethod
    def read(cls, run_dir, made_by="cnnscope train") -> "RunMetrics":
        """The run's metrics.json as it is (read_metrics), or an empty one where there is none."""
        path = Path(run_dir) / "metrics.json"
        return cls(run_dir, read_metrics(path, made_by) if path.is_file() else {})

    def update(self, values: dict) -> None:
        self.values.update(values)
        atomic_write_text(self.path, json.dumps(self.values, indent=2) + "\n")
