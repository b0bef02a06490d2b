"""What every command shares: the group, error formatting (in one place), options, output.

Nothing here imports torch at module level, so `cnnscope --help` answers at once; each command
imports what it needs when it runs.
"""
import functools
import math
import os
import sys
import warnings

import click

from cnnscope.errors import CnnscopeError, CnnscopeWarning




FORMATS = ("table", "markdown", "json")
SEED_RANGE = click.IntRange(0, 2**63 - 1)  # what torch.manual_seed and numpy's generators take


class FloatRange(click.FloatRange):
    """click.FloatRange without nan and inf/-inf, which pass its comparisons but are no setting."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class UserError(click.ClickException):
    """A CnnscopeError as Click shows it: one paragraph on stderr, exit code 2; `error` is the
    library's error itself."""

    exit_code = 2

    def __init__(self, message: str, error: CnnscopeError):
        super().__init__(message)
        self.error = error


class CnnscopeGroup(click.Group):
    def invoke(self, ctx):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning(warnings.showwarning)
                return super().invoke(ctx)
        except CnnscopeError as e:
            raise UserError(_user_message(e, self.get_command(ctx, ctx.invoked_subcommand or "")), e) from None


def _show_warning(show_others):
    """A CnnscopeWarning as one `warning:` line on stderr (no file and line: it is about the user's
    input, not cnnscope's code); other warnings as Python shows them."""
    def show(message, category, *args, **kwargs):
        if issubclass(category, CnnscopeWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            show_others(message, category, *args, **kwargs)
    return show


def _user_message(error: CnnscopeError, command) -> str:
    """The library's message, then which options of `command` the arguments it names are (the one
    place where a library message gets flag wording)."""
    options = {p.name: p for p in getattr(command, "params", ()) if isinstance(p, click.Option)}
    named = [f"{name} is {_flag(options[name])}" for name in error.arguments if name in options]
    return str(error) + (f" (On the command line: {'; '.join(named)}.)" if named else "")


def _flag(option: click.Option) -> str:
    return option.opts[0] + ("" if option.is_flag or not option.metavar else f" {option.metavar}")


# ---- shared options, defined once -------------------------------------------------------------

spec_argument = click.argument("spec", metavar="SPEC")
ctor_option = click.option(
    "--ctor", "ctor", multiple=True, metavar="K=V",
    help="Constructor keyword for SPEC, value a Python literal; repeatable (e.g. --ctor num_classes=100).",
)


def trust_spec_option(named_by="RUN's checkpoint"):
    return click.option(
        "--trust-spec", is_flag=True,
        help=f"Build the model that {named_by} names even when it is no zoo model: its file or module is "
             "imported and executed. Only for files you trust; without it such a model is refused (exit 2).",
    )


# the epilog of the commands that take a SPEC
SPEC_RUNS_CODE = ("A SPEC (or MODEL) that names a file or module (path/file.py:Name, package.module:attr) is "
                  "imported, which executes its code: give only your own code or code you trust.")

input_option = click.option(
    "--input", "input_shape", nargs=3, type=int, default=(3, 32, 32), show_default=True,
    metavar="C H W", help="Shape of the probe input.",
)

procs_option = click.option(
    "--procs", default="auto", show_default=True, metavar="N|auto",
    help="Data-parallel training processes on the CPU, each with cores/N threads and 1/N of every batch "
         "(on 2 cores, 2 processes train basic ~1.3x faster than one). auto: one per 64 images of the batch "
         "(at most 8), on any machine, since batch norm sees each process's share and so the count changes the "
         "weights; a resumed run keeps its count.",
)


EVENTS_FOLDER = "tensorboard"  # runs.tensorboard.DEFAULT_FOLDER (importing it would import torch for --help)


def tensorboard_option(help_text):
    """--tensorboard [DIR]: None without it, the default folder (relative: inside the run folder)
    alone, else DIR as an absolute path."""
    def folder(ctx, param, value):
        if value is None:
            return None
        return EVENTS_FOLDER if value == "" else os.path.abspath(value)

    return click.option("--tensorboard", is_flag=False, flag_value="", default=None, metavar="[DIR]", callback=folder,
                        help=help_text)


def device_option(default="auto", used_for=""):
    """--device: where the command computes. The library checks the name (resolve_device), so an
    unknown or absent device is the usual one-paragraph error, exit 2."""
    return click.option(
        "--device", default=default, show_default=default is not None, metavar="auto|cpu|cuda[:N]|mps",
        help="Device " + (used_for or "to compute on") + ": cpu, cuda, cuda:N (the N-th GPU), mps, or auto "
             "(cuda > mps > cpu); one this machine does not have is an error.",
    )


def seed_option(default=0, used_for="of the random numbers the command draws"):
    return click.option("--seed", type=SEED_RANGE, default=default, show_default=default is not None,
                        help=f"Seed {used_for}; the same seed gives the same output.")


def verbosity_options(command):
    """--quiet and --verbose, handed to the command as one `reporter`: a render.progress.Reporter at
    that verbosity (quiet: only results and errors; verbose: every preparation step and per-step detail)."""
    from cnnscope.render.progress import NORMAL, QUIET, VERBOSE, Reporter

    @functools.wraps(command)
    def with_verbosity(*args, quiet, verbose, **kwargs):
        if quiet and verbose:
            raise click.UsageError("--quiet and --verbose exclude each other: give one.")
        return command(*args, reporter=Reporter(QUIET if quiet else VERBOSE if verbose else NORMAL), **kwargs)

    with_verbosity = click.option("--verbose", "-v", is_flag=True,
                                  help="Also print every preparation step and per-step details (on stderr).")(
        with_verbosity)
    return click.option("--quiet", "-q", is_flag=True,
                        help="Print only the results and errors: no progress bars, no preparation lines.")(
        with_verbosity)


def format_option(default=None):
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default=default,
        help="Output format; default: table on a terminal, markdown otherwise.",
    )


def resolve_format(fmt):
    if fmt:
        return fmt
    return "table" if sys.stdout.isatty() else "markdown"


def emit(fmt, result, title=None, *, wrote=(), warnings=()):
    """Print one result object in the chosen format, by cnnscope.render's convention; then, on stderr,
    the files the command wrote (`wrote`), and the `warnings` where the format does not carry them
    (json: the table and the markdown print them under the result)."""
    import json

    from cnnscope import render

    fmt = resolve_format(fmt)
    if fmt == "json":
        click.echo(json.dumps(render.to_json(result), indent=2))
    elif fmt == "markdown":
        click.echo(render.to_markdown(result, title))
    else:
        from rich.console import Console

        Console().print(render.to_table(result, title))
    sys.stdout.flush()  # the result first, then what goes to stderr after it
    for message in warnings if fmt == "json" else ():
        click.echo(f"warning: {message}", err=True)
    for path in wrote:
        click.echo(f"wrote {path}", err=True)


@click.group(cls=CnnscopeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnnscope")
def cli():
    """Train compact CNNs, then inspect how they see.

    \b
    Examples:
      cnnscope models
      cnnscope summary basic
      cnnscope rf path/to/model.py:NetDilated --ctor num_classes=10
      cnnscope train basic --dataset fashion-mnist --epochs 5

    SPEC is a zoo name, path/file.py:Name or package.module:attr. A file or module SPEC is
    imported, which executes its code, and Name is called: it is your own code. A SPEC read from
    a file someone else may have written (a RUN's checkpoint, a README marker) is built only if it
    is a zoo name, or when you allow it with --trust-spec.
    """
