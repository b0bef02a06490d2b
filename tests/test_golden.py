"""Byte identity of the CLI's json and markdown outputs (models, summary, rf) and of its tables at 80
columns (models, compare, rf, summary, the sanity check) with tests/golden/.

The cases are tests/golden/record.py's CASES; a failure here is a change of output. When the change is
meant, re-record the files and commit them:  python tests/golden/record.py tests/golden
"""
import difflib
import importlib.util
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location("golden_record", GOLDEN / "record.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)

RERECORD = "python tests/golden/record.py tests/golden"


@pytest.mark.parametrize("fmt", list(record.FORMATS))
@pytest.mark.parametrize("name", list(record.CASES))
def test_output_is_the_recorded_one(name, fmt):
    path = GOLDEN / f"{name}.{record.FORMATS[fmt]}"
    expected = path.read_text(encoding="utf-8")
    actual = record.run_case(record.CASES[name], fmt)
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            str(path), "now", n=1))
        pytest.fail(f"`cnnscope {' '.join(record.CASES[name])} --format {fmt}` no longer prints "
                    f"{path.name}:\n{diff[:4000]}\nIf the change is meant, re-record: {RERECORD}", pytrace=False)


def _differs(path, actual, command):
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            str(path), "now", n=1))
        pytest.fail(f"`{command}` no longer prints {path.name}:\n{diff[:4000]}\nIf the change is meant, "
                    f"re-record: {RERECORD}", pytrace=False)


@pytest.mark.parametrize("name", list(record.TABLES))
def test_table_at_80_columns_is_the_recorded_one(name):
    actual = record.run_table(record.TABLES[name])
    assert max(map(len, actual.splitlines())) <= record.WIDTH, "a line is wider than the terminal"
    assert "…" not in actual, "a cell was cut"
    _differs(GOLDEN / f"{name}.txt", actual, f"COLUMNS=80 cnnscope {' '.join(record.TABLES[name])} --format table")
