"""Memory samples: process RSS (psutil) and, on CUDA, the caching allocator's counters."""

from __future__ import annotations

import os
from typing import Any

import torch

from workbench.engine.records import MemorySample

try:
    import psutil

    _PROCESS: psutil.Process | None = psutil.Process(os.getpid())
except Exception:  # pragma: no cover - psutil is a dependency, but stay usable without it
    _PROCESS = None

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HAS_STATM = os.path.exists("/proc/self/statm")  # Linux
_statm: tuple[int, int] | None = None  # (pid, fd) of this process's open /proc/self/statm


def _statm_rss() -> int | None:
    """RSS from ``/proc/self/statm`` through a descriptor kept open: one pread (~3 us) where
    psutil opens, reads and closes the file each time (~30 us, ~150 us on a loaded machine).
    Reopened after a fork (a child's open /proc/self names its parent)."""
    global _statm
    pid = os.getpid()
    try:
        if _statm is None or _statm[0] != pid:
            _statm = (pid, os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
        return int(os.pread(_statm[1], 128, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        _statm = None
        return None


def rss_bytes() -> int | None:
    if _HAS_STATM:
        rss = _statm_rss()
        if rss is not None:
            return rss
    # memory_info() costs ~12 us; memory_full_info() ~4 ms: keep to the cheap one.
    if _PROCESS is None:
        return None
    return int(_PROCESS.memory_info().rss)


def sample(device: torch.device, activation_bytes: int | None = None, *, rss: int | None | bool = True) -> MemorySample:
    """Current memory; the CUDA counters are host-side reads (no device sync).

    ``rss``: True reads the process RSS now; an int (or None) is used as it is (a step that
    takes no stats passes the last measured value instead of reading /proc again).
    """
    rss_now = rss_bytes() if rss is True else (None if rss is False else rss)
    if device.type == "cuda" and torch.cuda.is_available():
        return MemorySample(
            rss_bytes=rss_now,
            cuda_allocated=int(torch.cuda.memory_allocated(device)),
            cuda_reserved=int(torch.cuda.memory_reserved(device)),
            cuda_peak=int(torch.cuda.max_memory_allocated(device)),
            activation_bytes=activation_bytes,
        )
    return MemorySample(rss_bytes=rss_now, activation_bytes=activation_bytes)


def rss_for(measured: bool, last: Any) -> int | None | bool:
    """The ``rss`` argument of :func:`sample` for a step: read it (True) on a measured step or
    the first one, else the last record's value (``last``: a StepRecord or None)."""
    if measured or last is None:
        return True
    return last.memory.rss_bytes


def reset_peak(device: torch.device) -> None:
    """Start a fresh peak for the next step (CUDA only; it raises without CUDA)."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)
