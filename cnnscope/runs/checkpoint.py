"""Checkpoints and run folders: atomic saves, safe loads, and RUN resolution.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts, tuples), so it loads with
`torch.load(..., weights_only=True)`. Keys: `model_spec` (the SPEC string it was built from),
`ctor` (constructor keywords), `model` (state_dict); training adds `optimizer`, `scheduler`,
`epoch`, `best_metric`, `rng`, `config`.
"""
import copy
import math
import warnings
from pathlib import Path

from cnnscope.errors import CnnscopeWarning, RunError
from cnnscope.files import atomic_write_bytes


def save_checkpoint(obj: dict, path) -> None:
    import torch

    atomic_write_bytes(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path) -> dict:
    """Load a checkpoint a user handed in; every failure is a clear RunError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RunError(
            f"Checkpoint {path} does not exist. Pass a run folder (reports/<run>) or a .pth file "
            "written by `cnnscope train`."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of arbitrary objects, not a torch file, empty ...
        first_line = (str(e).strip().splitlines() or [""])[0][:200]  # an empty file's EOFError has none
        detail = f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__
        if path.stat().st_size == 0:
            detail = "the file is empty"
        raise RunError(
            f"Checkpoint {path} could not be read ({detail}). "
            "It is corrupt, truncated, or not a cnnscope checkpoint; use another checkpoint of the run "
            "(checkpoints/last.pth or best.pth) or train again."
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_spec" not in ckpt:
        raise RunError(
            f"{path} is a torch file but not a cnnscope checkpoint (it has no 'model' and 'model_spec' "
            "entries). Pass a checkpoint written by `cnnscope train`."
        )
    wrong = [key for key, fits in _FIELDS.items() if key in ckpt and not fits(ckpt[key])]
    if wrong:
        raise RunError(
            f"{path} is not a checkpoint `cnnscope train` wrote: its {', '.join(wrong)} "
            f"{'is' if len(wrong) == 1 else 'are'} not of the kind cnnscope writes ({'; '.join(_KINDS[k] for k in wrong)}"
            "). Use another checkpoint of the run (checkpoints/last.pth or best.pth), or train again.")
    return ckpt


def _numbers(value, count=None) -> bool:
    return (isinstance(value, (list, tuple)) and (count is None or len(value) == count)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _state_dict(value) -> bool:
    import torch

    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


# what a checkpoint's entries must be, where it has them (check_file_spec checks model_spec and ctor)
_FIELDS = {"model": _state_dict, "mean": _numbers, "std": _numbers, "dataset": lambda v: isinstance(v, str),
           "classes": lambda v: isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v),
           "input_shape": lambda v: _numbers(v, 3) and all(isinstance(n, int) and n > 0 for n in v)}
_KINDS = {"model": "model: a state_dict of named tensors", "mean": "mean: a list of numbers per channel",
          "std": "std: a list of numbers per channel", "dataset": "dataset: a name", "classes": "classes: a list of names",
          "input_shape": "input_shape: C, H, W"}


def warn_if_suspicious(ckpt: dict, path) -> None:
    """A warning for a checkpoint that loads but cannot predict anything sensible: weights that are
    not finite, or a std of 0 (its images normalise to inf or nan)."""
    import torch

    broken = [name for name, t in ckpt["model"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if broken:
        warnings.warn(f"{path} holds weights that are NaN or infinite ({', '.join(broken[:3])}"
                      f"{', ...' if len(broken) > 3 else ''}): its predictions mean nothing. Use an earlier checkpoint "
                      "of the run, or train again (lower lr, set grad_clip).", CnnscopeWarning, stacklevel=2)
    if any(s == 0 or not math.isfinite(s) for s in ckpt.get("std") or ()):
        warnings.warn(f"{path} normalises its images with std {list(ckpt['std'])}: a std of 0 (or not finite) makes "
                      "every image inf or nan, so the model sees no picture. Use a checkpoint of a run whose data "
                      "varies.", CnnscopeWarning, stacklevel=2)


def resolve_run(run) -> tuple[Path, Path]:
    """RUN (a reports/<run> folder or a checkpoint file) -> (run folder, checkpoint path).

    A folder gives its checkpoints/best.pth, else checkpoints/last.pth.
    """
    run = Path(run)
    if run.is_dir():
        for name in ("best.pth", "last.pth"):
            ckpt = run / "checkpoints" / name
            if ckpt.is_file():
                return run, ckpt
        raise RunError(
            f"Run folder {run} has no checkpoints/best.pth or checkpoints/last.pth. "
            "Pass a folder written by `cnnscope train`, or a checkpoint file."
        )
    if run.is_file():
        folder = run.parent.parent if run.parent.name == "checkpoints" else run.parent
        return folder, run
    raise RunError(
        f"RUN {run} is neither a run folder nor a checkpoint file. Pass reports/<run> or a .pth file."
    )


def load_weights(model, ckpt: dict, source, target: str) -> None:
    """Load a checkpoint's weights into `model` (built from SPEC `target`), or explain the mismatch."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise RunError(
            f"The weights of {source} do not fit {target!r}: {str(e).splitlines()[0][:300]}. They were "
            f"trained for {ckpt['model_spec']!r} with constructor keywords {ckpt.get('ctor') or {}}; "
            "use that model and configuration."
        ) from None


def load_run_model(run, *, trust_spec=False, spec=None, ctor=None, built=None):
    """Rebuild the model of a run or checkpoint with its trained weights (eval mode).

    The model is the one the checkpoint names, built only if it is a zoo model or `trust_spec`
    (spec.check_file_spec); or, when the user names a `spec` (with `ctor`), that SPEC, and then the
    checkpoint's own SPEC is never built; or `built`, the run's model as the process that trained it
    built it (a copy takes the weights: its source is not imported a second time). Returns (model,
    checkpoint dict, run folder).
    """
    from cnnscope.core.hooks import load_settings
    from cnnscope.runs.model_source import copy_spec, spec_to_build
    from cnnscope.runs.spec import build_model, check_file_spec

    folder, path = resolve_run(run)
    ckpt = load_checkpoint(path)
    warn_if_suspicious(ckpt, path)
    if spec is not None:  # the user's own SPEC with the run's weights
        model = build_model(spec, ctor)
        load_weights(model, ckpt, path, spec)
    else:
        if built is not None:
            model = copy.deepcopy(built)
        else:
            source = (ckpt.get("config") or {}).get("options", {}).get("source")
            # the trust rule names what would run: the run's copy of its model source, where it has one
            check_file_spec(copy_spec(folder, ckpt["model_spec"], source), ckpt.get("ctor") or {},
                            f"Checkpoint {path}", trust_spec)
            model = build_model(spec_to_build(folder, ckpt["model_spec"], source), ckpt.get("ctor") or {})
        load_weights(model, ckpt, path, ckpt["model_spec"])
        # egrr's depth and gate temperature live outside the state_dict; without them the gates of a
        # run trained down to tau=0.1 would be read at tau=1.
        load_settings(model, ckpt.get("model_settings") or {})
    model.eval()
    return model, ckpt, folder
