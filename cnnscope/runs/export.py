"""`cnnscope export RUN`: the run's trained model as a file (core.export), checked against its
checkpoint on the run's first test images, written to RUN/export/ unless told otherwise (a
checkpoint outside any run: to reports/<checkpoint>-checkpoint/export/)."""
import dataclasses
from pathlib import Path

from cnnscope.core.export import FORMATS, ExportResult, export_model
from cnnscope import files
from cnnscope.files import atomic_write_bytes
from cnnscope.render.progress import SILENT
from cnnscope.runs import run_folder
from cnnscope.runs.loaders import PROBE_IMAGES, contiguous_reason, first_images


def export_run(run, to="export", out=None, *, data_dir=None, n_images=16, tolerance=1e-4,
               trust_spec=False, reporter=SILENT) -> ExportResult:
    """Export RUN's model (best.pth, or the checkpoint given) as `to` to `out` (default
    RUN/export/<run name><suffix>), checked against the checkpoint on its first test images, which
    are contiguous; `reporter` says when the model (so the program) needs them so
    (loaders.contiguous_reason)."""
    from cnnscope.runs.checkpoint import load_run_model, resolve_run
    from cnnscope.runs.datasets import run_dataset

    out_dir = Path(out).parent if out else run_folder.output_folder(*resolve_run(run))
    if not out:  # a run folder: refused before any work when it holds links
        run_folder.refuse_links(out_dir)
    model, ckpt, folder = load_run_model(run, trust_spec=trust_spec)
    ds = run_dataset(ckpt, data_dir)
    x = first_images(ds.test, ds, n_images)
    contiguous_reason(model, x[:PROBE_IMAGES], ckpt["model_spec"], reporter.step)
    data, result = export_model(model, x, to, tolerance=tolerance, name=str(folder))
    path = Path(out) if out else out_dir / "export" / f"{Path(folder).name}{FORMATS[to]}"
    with files.writing_into(out_dir):
        atomic_write_bytes(path, lambda f: f.write(data))
    return dataclasses.replace(result, path=str(path))
