"""The `cnnscope` command line: parse, call one library function, print.

Nothing here imports torch at module level, so `cnnscope --help` answers at once; each command
imports what it needs when it runs. One file per command group; common.py holds what they share.
"""
from cnnscope.cli import bench, data, export, inspect, readme, sweep, training, zoo  # noqa: F401  (registers the commands)
from cnnscope.cli.common import cli
from cnnscope.core.runtime import tune_cpu_runtime


def main():
    tune_cpu_runtime()  # process-wide, so here and not at import (tests import this module)
    cli(prog_name="cnnscope")


if __name__ == "__main__":
    main()
