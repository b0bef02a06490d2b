"""The `cnnscope` command line: thin Click commands over the library modules.

Nothing here imports torch at module level, so `cnnscope --help` answers at once; each command
imports what it needs when it runs.
"""
import sys

import click

from cnnscope.errors import CnnscopeError

FORMATS = ("table", "markdown", "json")


class UserError(click.ClickException):
    """A CnnscopeError as Click shows it: one paragraph on stderr, exit code 2."""

    exit_code = 2


class CnnscopeGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnscopeError as e:
            raise UserError(str(e)) from None


# ---- shared options, defined once -------------------------------------------------------------

spec_argument = click.argument("spec", metavar="SPEC")
ctor_option = click.option(
    "--ctor", "ctor", multiple=True, metavar="K=V",
    help="Constructor keyword for SPEC, value a Python literal; repeatable (e.g. --ctor num_classes=100).",
)
input_option = click.option(
    "--input", "input_shape", nargs=3, type=int, default=(3, 32, 32), show_default=True,
    metavar="C H W", help="Shape of the probe input.",
)


def format_option(default=None):
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default=default,
        help="Output format; default: table on a terminal, markdown otherwise.",
    )


def resolve_format(fmt):
    if fmt:
        return fmt
    return "table" if sys.stdout.isatty() else "markdown"


def emit(fmt, *, table, markdown, json_obj):
    """Print one result in the chosen format: a rich renderable, markdown text or a JSON object."""
    import json

    fmt = resolve_format(fmt)
    if fmt == "json":
        click.echo(json.dumps(json_obj, indent=2))
    elif fmt == "markdown":
        click.echo(markdown())
    else:
        from rich.console import Console

        Console().print(table())


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
    """


# ---- the zoo ----------------------------------------------------------------------------------

@cli.command("models")
@format_option()
def models_cmd(fmt):
    """List the model zoo: name, class, parameters, MACs at 32x32, default dataset, seed.

    \b
    Examples:
      cnnscope models
      cnnscope models --format json
    """
    from cnnscope import summary

    rows = summary.zoo_rows()
    emit(fmt, table=lambda: summary.zoo_table(rows), markdown=lambda: summary.zoo_markdown(rows),
         json_obj=rows)


@cli.command("summary")
@spec_argument
@ctor_option
@input_option
@format_option()
def summary_cmd(spec, ctor, input_shape, fmt):
    """Per-layer table of SPEC: output shape, params and MACs of every call.

    A module called several times (weight tying) gets one row per call; the totals count its
    parameters once (unique) and its MACs once per call.

    \b
    Examples:
      cnnscope summary basic
      cnnscope summary ectied --ctor iterations=8
      cnnscope summary my_model.py:Net --input 1 28 28 --format json
    """
    from cnnscope import spec as spec_mod
    from cnnscope import summary

    model = spec_mod.build_model(spec, spec_mod.parse_ctor(ctor))
    result = summary.summarize(model, input_shape)
    emit(fmt, table=lambda: summary.summary_table(result, spec),
         markdown=lambda: summary.summary_markdown(result, spec), json_obj=result.to_json())


def main():
    cli(prog_name="cnnscope")


if __name__ == "__main__":
    main()
