"""The `cnnscope` command line: parse, call one library function, print.

Nothing here imports torch at module level, so `cnnscope --help` answers at once; each command
imports what it needs when it runs. One file per command group; common.py holds what they share.
"""
import atexit
import gc

from cnnscope.cli import bench, data, export, inspect, readme, sweep, training, zoo  # noqa: F401  (registers the commands)
from cnnscope.cli.common import cli
from cnnscope.core.runtime import tune_cpu_runtime


def main():
    tune_cpu_runtime()  # process-wide, so here and not at import (tests import this module)
    # The interpreter's last garbage collections walk every object that torch and its compiler stack
    # made (a second or two after a command's work is done); at exit there is nothing to reclaim, so
    # the objects are frozen once every other exit handler has run (handlers run last-registered first).
    atexit.register(gc.freeze)
    try:
        cli(prog_name="cnnscope")
    except SystemExit as end:
        from cnnscope.runs import launch

        if launch.launched():  # a rank of torchrun's (this launcher's run launch.main): it ends as those do
            launch.exit_rank(end.code if isinstance(end.code, int) else int(end.code is not None))
        raise


if __name__ == "__main__":
    main()
