"""Record the CLI's json and markdown outputs over the zoo and a few torchvision models, and its tables
at 80 columns (golden files).

CASES and TABLES are the lists of the golden cases; tests/test_golden.py runs each of them and compares with the
files recorded here. After a change of output that is meant:  python tests/golden/record.py tests/golden
"""
import sys
from pathlib import Path

SMALL = ["--ctor", "depth=16", "--ctor", "width=2", "--ctor", "num_templates=3"]
CASES = {
    "models": ["models"],
    **{f"summary-{m}": ["summary", m] for m in ("basic", "dilated", "tiny", "ectied", "egrr")},
    "summary-swrn": ["summary", "swrn", *SMALL],
    "summary-resnet18": ["summary", "torchvision.models:resnet18"],
    "summary-mobilenet_v2": ["summary", "torchvision.models:mobilenet_v2"],
    **{f"rf-{m}": ["rf", m] for m in ("basic", "dilated", "tiny", "ectied", "egrr", "swrn")},
    "rf-basic-verify": ["rf", "basic", "--verify"],
    "rf-resnet18": ["rf", "torchvision.models:resnet18", "--input", "3", "64", "64"],
    "rf-mobilenet_v2": ["rf", "torchvision.models:mobilenet_v2"],
    "rf-squeezenet1_0": ["rf", "torchvision.models:squeezenet1_0", "--input", "3", "64", "64"],
    "rf-resnet50-224": ["rf", "torchvision.models:resnet50", "--input", "3", "224", "224"],
}
FORMATS = {"json": "json", "markdown": "md"}  # --format -> file extension

# The tables as a terminal 80 columns wide shows them (--format table, COLUMNS=80): <name>.txt. OUT is a
# temporary folder for the files the command writes; the runs are the curated ones under reports/.
WIDTH = 80
OUT = "{out}"
RUNS = [str(Path(__file__).resolve().parents[2] / "reports" / name) for name in (
    "basic-fmnist", "basic-speed-fmnist", "tiny-fmnist", "dilated-fmnist", "ectied-fmnist", "egrr-fmnist", "swrn-fmnist")]
TABLES = {
    "table-models": ["models"],
    "table-compare": ["compare", *RUNS, "--out", OUT],
    "table-rf-basic": ["rf", "basic"],
    "table-rf-egrr": ["rf", "egrr"],
    "table-summary-ectied": ["summary", "ectied"],
    "table-sanity-basic": ["attribute", "basic", "--n", "2", "--sanity", "--method", "saliency", "--method", "guided",
                           "--method", "edges", "--out", OUT],
}


def run_case(args, fmt) -> str:
    """The CLI's stdout for one case in one format (one torch thread, as recorded)."""
    from click.testing import CliRunner

    from cnnscope.cli import cli

    result = CliRunner().invoke(cli, [*args, "--format", fmt])
    assert result.exit_code == 0, (args, fmt, result.output)
    return result.stdout


def run_table(args) -> str:
    """The CLI's stdout for one table case: --format table at WIDTH columns."""
    import tempfile

    from click.testing import CliRunner

    from cnnscope.cli import cli

    with tempfile.TemporaryDirectory() as out:
        args = [out if a == OUT else a for a in args]
        result = CliRunner().invoke(cli, [*args, "--format", "table"], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def record(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, args in CASES.items():
        for fmt, ext in FORMATS.items():
            text = run_case(args, fmt)
            (out / f"{name}.{ext}").write_text(text, encoding="utf-8")
            print(name, fmt, len(text))
    for name, args in TABLES.items():
        text = run_table(args)
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
        print(name, "table", len(text))


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    record(Path(sys.argv[1]))
