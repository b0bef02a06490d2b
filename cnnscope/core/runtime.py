"""CPU/GPU runtime helpers: process settings, cores, batch shares, devices, autocast,
torch.compile, the global RNGs. Nothing here imports torch at module level (the CLI calls
tune_cpu_runtime before torch is imported)."""
import ctypes
import os
import random
import sys
from contextlib import contextmanager

from cnnscope.errors import CnnscopeError


def tune_cpu_runtime():
    """Process settings for fast CPU training, made before torch is imported (benchmarks/README.md).

    - OpenMP threads that spin while they wait take the cores that their team mates, DataLoader
      workers and other processes need (on 2 busy cores, 2-5x slower steps): waiting threads sleep
      instead, unless the user chose an OMP_WAIT_POLICY.
    - glibc hands freed activation buffers back to the OS and page-faults them in again on the next
      step (thousands of faults per step): keep freed blocks on the heap and never trim it, as
      jemalloc or tcmalloc would. glibc mmaps no block at all: with its largest mmap threshold
      (32 MiB), ectied's 256 x 32 x 32 maps of 64 images (64 MiB) were mmapped afresh each time,
      350,000 faults per step (12,000 without mmap; 14% faster).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:  # not glibc
            return
        m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameters
        libc.mallopt(m_mmap_max, 0)  # every block comes from the heap, none is mmapped
        libc.mallopt(m_trim_threshold, 2**31 - 1)  # and the heap never shrinks


def pair(v):
    """A per-axis (H, W) value from an int or a sequence, as torch's conv and pool arguments take it."""
    if isinstance(v, (list, tuple)):
        return (v[0], v[0]) if len(v) == 1 else (v[-2], v[-1])
    return (v, v)


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split_batch(batch_size: int, procs: int) -> int:
    """Each process's share of the (global) batch; a clear error where it does not split evenly."""
    if batch_size % procs:
        raise CnnscopeError(f"The batch of {batch_size} does not split evenly over {procs} processes; choose a "
                            f"process count (procs, or torchrun's --nproc_per_node) that divides it, or change "
                            f"batch_size.", arguments=("procs", "batch_size"))
    return batch_size // procs


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto"):
    """auto -> cuda, else mps, else cpu; 'cuda:N' is the N-th GPU. A device that is unknown or not
    on this machine is a clear error (argument `device`)."""
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    name = str(name).strip().lower()
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    kind, _, index = name.partition(":")
    if kind not in available or (index and (kind != "cuda" or not index.isdigit())):
        raise CnnscopeError(f"Unknown device {name!r}; use {DEVICES}.", arguments=("device",))
    if not available[kind]:
        raise CnnscopeError(f"Device {name!r} was asked for but this machine has no {kind} device; use auto or cpu.",
                            arguments=("device",))
    if index and int(index) >= torch.cuda.device_count():
        raise CnnscopeError(f"Device {name!r} was asked for but this machine has {torch.cuda.device_count()} CUDA "
                            f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}.", arguments=("device",))
    return torch.device(name)


def autocast(device, enabled: bool):
    """fp16 autocast on CUDA when enabled; a no-op context elsewhere."""
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


def compile_model(model):
    """torch.compile(model) (opt-in). Compilation happens at the first call; wrap the calls in
    `compile_errors()` so that a machine without a working compiler gets a clear message."""
    import torch

    try:
        return torch.compile(model)
    except RuntimeError as e:  # e.g. an unsupported Python version
        raise CnnscopeError(f"torch.compile is not available here ({e}). Run without compile.",
                            arguments=("compile",)) from None


def compiles_whole_model(device, compiled: bool) -> bool:
    """Whether compiled training (`compiled`: train's and bench's --compile) compiles the whole model
    on `device`: on CUDA. On the CPU the model runs eagerly and only the training step's fused
    passes are compiled (cnnscope.core.fused): compiled whole, basic trained no faster there, a
    BN + ReLU block ran 4-5x slower and egrr had not compiled after 8 minutes (benchmarks/README.md)."""
    return compiled and device.type != "cpu"


@contextmanager
def compile_errors(enabled: bool = True):
    """Turn a torch.compile failure (raised at the first call of a compiled model) into a
    CnnscopeError that says to run without compile."""
    try:
        yield
    except Exception as e:
        from torch._dynamo.exc import TorchDynamoException

        if enabled and isinstance(e, TorchDynamoException):
            cause = getattr(e, "inner_exception", None) or e  # what the compiler backend raised
            first_line = (str(cause).strip().splitlines() or [""])[0]
            raise CnnscopeError(
                f"torch.compile failed on this machine ({type(cause).__name__}: {first_line}). It needs a "
                "working C++ compiler on the CPU (or Triton on CUDA); run again without compile.",
                arguments=("compile",),
            ) from None
        raise


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """Every global RNG as tensors and lists, so that checkpoints load with weights_only=True."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def restore_rng(state: dict) -> None:
    """Set every global RNG from capture_rng()'s state."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
