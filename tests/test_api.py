"""The Python API: the README's example runs as written, on the package's public names alone."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cnnscope

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs_as_written(tmp_path):
    (tmp_path / "example.py").write_text(readme_example())
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "55 8" and lines[1] == "(55, 55)"  # the analysis and its gradient check
    assert "| 11 | c4a.dw | 3 | 1 | 2 | 23 | 8 | 55 | 8 |" in lines  # the markdown table
    assert "84322 13728256" in lines  # unique params and MACs of basic
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", out.stdout).group(1))
    assert accuracy > 90  # fit learned the synthetic classes, evaluate measured it
    assert re.search(r"95% of the gradient mass within [\d.]+ px", out.stdout)
    assert lines[-1].endswith("(2, 2, 32, 32)")  # attribution maps: images x methods x H x W


def test_public_names_are_all_reachable_and_lazy():
    assert sorted(cnnscope.__all__) == cnnscope.__all__
    for name in cnnscope.__all__:
        assert getattr(cnnscope, name) is not None
    code = "import sys, cnnscope; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_errors_are_value_errors_of_a_few_kinds():
    """A library user catches a standard type, or the kind of input that was wrong."""
    import pytest

    kinds = [getattr(cnnscope, name) for name in ("SpecError", "TrustError", "DataError", "RunError")]
    assert all(issubclass(kind, cnnscope.CnnscopeError) for kind in kinds)
    assert issubclass(cnnscope.CnnscopeError, ValueError)
    with pytest.raises(ValueError) as unknown:
        cnnscope.build_model("no_such_model")
    assert isinstance(unknown.value, cnnscope.SpecError)
    with pytest.raises(cnnscope.DataError):
        cnnscope.load_dataset("no_such_dataset")
