"""CPU/GPU runtime helpers: process settings, cores, ports, batch shares, devices."""
import ctypes
import os
import sys


def tune_cpu_runtime():
    """Process settings for fast CPU training, made before torch is imported (benchmarks/README.md).

    - OpenMP threads that spin while they wait take the cores that their team mates, DataLoader
      workers and other processes need (on 2 busy cores, 2-5x slower steps): waiting threads sleep
      instead, unless the user chose an OMP_WAIT_POLICY.
    - glibc hands freed activation buffers back to the OS and page-faults them in again on the next
      step (thousands of faults per step): keep up to 32 MiB blocks on the heap and never trim it,
      as jemalloc or tcmalloc would.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:  # not glibc
            return
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
        libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest
        libc.mallopt(m_trim_threshold, 2**31 - 1)


def pair(v):
    """A per-axis (H, W) value from an int or a sequence, as torch's conv and pool arguments take it."""
    if isinstance(v, (list, tuple)):
        return (v[0], v[0]) if len(v) == 1 else (v[-2], v[-1])
    return (v, v)


def autocast(device, enabled: bool):
    """fp16 autocast on CUDA when enabled; a no-op context elsewhere."""
    import torch  # not at the top: this module is imported before torch (see tune_cpu_runtime)

    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")
