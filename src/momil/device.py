"""Devices: which one a run uses, its autocast, and CPU memory behaviour."""

from __future__ import annotations

import torch

from momil.config import check_device_name
from momil.errors import MomilError


def resolve_device(name: str) -> torch.device:
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MomilError("device cuda was asked for but torch sees no GPU -- use --device cpu or auto")
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Lets glibc's malloc keep freed blocks of up to 32 MiB for reuse (mmap threshold 32 MiB, trim threshold
    256 MiB) instead of handing them back to the kernel after each step. A training step allocates and frees
    tensors of a few MiB; with the default dynamic thresholds each step page-faults thousands of times, a
    fifth of a CPU step's time. Process-wide, idempotent; a no-op (False) where the C library is not glibc."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 256 * 2**20))
    except (OSError, AttributeError):
        return False


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
