"""A model as a file that runs without its source, checked against the model it came from.

Formats: TorchScript (torch.jit.trace: runs in C++ and in Python without the model's code),
torch.export (an ExportedProgram, .pt2; the batch dimension kept dynamic where the model allows),
and ONNX (needs the `onnx` package: pip install "cnnscope[onnx]", and onnxruntime to check it). A
program is accepted only after it was saved, loaded back from those bytes, and gave the model's
outputs on the given inputs (largest absolute difference within `tolerance`).
"""
import io
import warnings
from dataclasses import dataclass

import torch

from cnnscope.errors import CnnscopeError

FORMATS = {"torchscript": ".torchscript.pt", "export": ".pt2", "onnx": ".onnx"}


@dataclass
class ExportResult:
    run: str
    format: str
    path: str  # where the program was written ("" until it is)
    images: int  # inputs the outputs were compared on
    max_abs_diff: float  # largest |exported - model| output difference on them
    tolerance: float
    dynamic_batch: bool

    def to_json(self) -> dict:
        return dict(vars(self))


def export_model(model, x: torch.Tensor, to="export", *, tolerance=1e-4, name="model") -> tuple[bytes, ExportResult]:
    """The bytes of `model` (eval mode) exported as `to` (a FORMATS name), loaded back and compared with the model on
    the inputs `x`; refused (CnnscopeError) when they differ by more than `tolerance`."""
    if to not in FORMATS:
        raise CnnscopeError(f"Unknown export format {to!r}; choose one of {', '.join(FORMATS)}.", arguments=("to",))
    with torch.no_grad():
        expected = model(x)
    data, dynamic, run_exported = _EXPORTERS[to](model, x)
    with torch.no_grad():
        got = run_exported(data, x)
    diff = (got - expected).abs().max().item()
    if not diff <= tolerance:
        raise CnnscopeError(
            f"The {to} export of {name} gives outputs up to {diff:.3g} away from the model's on {len(x)} inputs "
            f"(tolerance {tolerance:g}), so it was not written. Try another format.", arguments=("to",),
        )
    return data, ExportResult(name, to, "", len(x), diff, tolerance, dynamic)


def _torchscript(model, x):
    with warnings.catch_warnings():  # PyTorch deprecates TorchScript; asked for it, the user knows
        warnings.simplefilter("ignore", FutureWarning)
        try:
            traced = torch.jit.trace(model, x[:2], check_trace=False)
        except Exception as e:  # noqa: BLE001 - any failure of the tracer is the model's, said in one line
            raise _unsupported("torchscript", e) from None
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue(), True, _run_torchscript


def _run_torchscript(data, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data))(x)


def _torch_export(model, x):
    program, dynamic = None, True
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception:  # noqa: BLE001 - a model that fixes its batch size exports without the dynamic dim
        dynamic = False
    try:
        program = program or torch.export.export(model, (x,))
    except Exception as e:  # noqa: BLE001
        raise _unsupported("export", e) from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue(), dynamic, lambda data, x: torch.export.load(io.BytesIO(data)).module()(x)


def _onnx(model, x):
    import importlib.util

    if importlib.util.find_spec("onnx") is None:  # torch.onnx needs it: say so before torch fails deeper
        raise CnnscopeError('ONNX export needs the onnx package: pip install "cnnscope[onnx]" (or pip install onnx), '
                            "or export to torchscript or export.", arguments=("to",))
    buffer = io.BytesIO()
    try:
        torch.onnx.export(model, (x,), buffer, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    except Exception as e:  # noqa: BLE001
        raise _unsupported("onnx", e) from None
    return buffer.getvalue(), True, _run_onnx


def _run_onnx(data, x):
    try:
        import onnxruntime
    except ImportError:
        raise CnnscopeError("Checking an ONNX export needs onnxruntime: pip install onnxruntime.") from None
    session = onnxruntime.InferenceSession(data)
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def _unsupported(fmt, e: Exception) -> CnnscopeError:
    return CnnscopeError(f"The model cannot be exported as {fmt}: {type(e).__name__}: {str(e).splitlines()[0][:300]}. "
                         "Try another format.", arguments=("to",))


_EXPORTERS = {"torchscript": _torchscript, "export": _torch_export, "onnx": _onnx}
