"""export: a run's model as a TorchScript, torch.export or ONNX file."""
import click

from cnnscope.cli.common import FloatRange, cli, emit, format_option, trust_spec_option, verbosity_options


@cli.command("export")
@click.argument("run", metavar="RUN")
@click.option("--to", "to", type=click.Choice(("export", "torchscript", "onnx")), default="export",
              show_default=True, help="export (torch.export, .pt2), torchscript (torch.jit.trace; deprecated by "
                                      "PyTorch), onnx (needs the onnx and onnxruntime packages).")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="File to write [default: RUN/export/<run>.<format>; a checkpoint outside "
                                                                   "any run: reports/<checkpoint>-checkpoint/export/].")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Dataset folder [default: the run's].")
@click.option("--tolerance", type=FloatRange(min=0), default=1e-4, show_default=True,
              help="Largest output difference from the checkpoint accepted on the test images.")
@trust_spec_option()
@format_option()
@verbosity_options
def export_cmd(run, to, out, data_dir, tolerance, trust_spec, fmt, reporter):
    """Export RUN's model (its best.pth, or a checkpoint file) to a file that runs without its code.

    The program is loaded back from the bytes written and must give the checkpoint's outputs on
    the run's first 16 test images (within --tolerance) before it is written; the output says how
    close it came and whether it takes any batch size.

    \b
    Load it with: torch.jit.load(PATH) | torch.export.load(PATH).module() | onnxruntime.

    \b
    JSON: {run, format, path, images, max_abs_diff, tolerance, dynamic_batch}

    \b
    Examples:
      cnnscope export reports/basic
      cnnscope export reports/basic --to torchscript --out basic.pt
    """
    from cnnscope.runs.export import export_run

    reporter.detail(f"exporting {run} ({to}), then checking the program on the run's test images")
    emit(fmt, export_run(run, to, out, data_dir=data_dir, tolerance=tolerance, trust_spec=trust_spec,
                         reporter=reporter))
