"""update-readme: refresh the marked result blocks of a README."""
import sys

import click

from cnnscope.cli.common import cli, trust_spec_option


@cli.command("update-readme")
@click.argument("readme", default="README.md", metavar="[README]")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 and print a unified diff if the README is stale.")
@click.option("--diff", "show_diff", is_flag=True, help="Print the unified diff of the update; write nothing.")
@click.option("--run", "runs", multiple=True, metavar="X=PATH",
              help="Run folder of the seed names MODEL_SUMMARY_X, RF_X, CM_X, CLS_REPORT_X; repeatable.")
@click.option("--reports", type=click.Path(file_okay=False), default=None,
              help="Folder of the runs that the seed names, the sample grids and combined/ are looked up in "
                   "[default: reports/ beside the README].")
@click.option("--rf", "rf_models", multiple=True, metavar='FILE.py:CLASS[:"TITLE"]',
              help="Compute the RF_<CLASS> block from this model (NetDilated may fill RF_DILATED); repeatable.")
@click.option("--rf-input", nargs=3, type=int, default=(3, 32, 32), show_default=True, metavar="C H W",
              help="Probe input of the --rf models.")
@click.option("--rf-ctor", multiple=True, metavar="K=V", help="Constructor keyword of the --rf models; repeatable.")
@trust_spec_option("a marker's spec=")
def update_readme_cmd(readme, check, show_diff, runs, reports, rf_models, rf_input, rf_ctor, trust_spec):
    """Refresh the generated blocks of README from the runs, the zoo and model SPECs.

    A block is `<!-- KIND key=value ... -->` ... `<!-- /KIND -->`, each marker a line of its
    own; its body is replaced, everything else is kept byte for byte. Kinds: ZOO_TABLE,
    MODEL_SUMMARY, RF, RUN_METRICS, CLS_REPORT, CURVES, CM, TEST_SAMPLES_GRID,
    AUGMENTED_SAMPLES_GRID, MISCLASSIFIED_GRID, GATE_MAPS, GATE_SHARES, SHARING, ATTRIBUTIONS,
    ERF, COMBINED_SUMMARY_TABLE, COMBINED_ACC_PLOT, COMBINED_LOSS_PLOT, IMAGE, and the seed names
    MODEL_SUMMARY_<X>, RF_<X>, CM_<X>, CLS_REPORT_<X> (see the README section "README blocks").
    A marker's spec= is built only if it is a zoo model, or with --trust-spec (a file or module
    SPEC is imported and executed: a README from an untrusted pull request would run its code);
    --rf models are yours and always built.

    Every figure cnnscope draws records the code that drew it: under --check a figure shown whose
    drawing code has changed since is stale too (and one that records nothing is warned about).

    Exit codes: 0 done (or up to date), 1 stale under --check, 2 a bad README or missing run.

    \b
    Examples:
      cnnscope update-readme
      cnnscope update-readme --check            # in CI
      cnnscope update-readme docs/RESULTS.md --diff
      cnnscope update-readme --run BASE=reports/basic --run DILATED=reports/dilated
      cnnscope update-readme --rf model.py:Net:"RF: Net (32x32 input)" \\
          --rf model.py:NetDilated --rf-input 3 32 32 --rf-ctor num_classes=10
    """
    from cnnscope.runs import readme as readme_mod

    outcome = readme_mod.update_readme(
        readme, "check" if check else "diff" if show_diff else "write", runs=runs, rf_models=rf_models,
        rf_ctor=rf_ctor, reports=reports, rf_input=rf_input, trust_spec=trust_spec,
    )
    if outcome.diff:
        click.echo(outcome.diff.encode("utf-8", "surrogateescape"), nl=False)
    for message in (*outcome.stale_figures, *outcome.unstamped_figures):
        click.echo(f"warning: {message}", err=True)
    if outcome.failed:
        text = f"run `cnnscope update-readme {readme}` and commit it" if outcome.diff else ""
        figures = "redraw the stale figures (above) and commit them" if outcome.stale_figures else ""
        click.echo(f"{readme} is stale: {' and '.join(filter(None, (text, figures)))}.", err=True)
        sys.exit(1)
    # Under --check and --diff stdout is the diff alone.
    click.echo(f"{readme}: {outcome.blocks} block(s), {outcome.state}.", err=check or show_diff)
