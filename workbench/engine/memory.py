"""Memory samples: process RSS (psutil) and, on CUDA, the caching allocator's counters."""

from __future__ import annotations

import os

import torch

from workbench.engine.records import MemorySample

try:
    import psutil

    _PROCESS: psutil.Process | None = psutil.Process(os.getpid())
except Exception:  # pragma: no cover - psutil is a dependency, but stay usable without it
    _PROCESS = None


def rss_bytes() -> int | None:
    # memory_info() costs ~12 us; memory_full_info() ~4 ms: keep to the cheap one.
    if _PROCESS is None:
        return None
    return int(_PROCESS.memory_info().rss)


def sample(device: torch.device, activation_bytes: int | None = None) -> MemorySample:
    """Current memory; the CUDA counters are host-side reads (no device sync)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return MemorySample(
            rss_bytes=rss_bytes(),
            cuda_allocated=int(torch.cuda.memory_allocated(device)),
            cuda_reserved=int(torch.cuda.memory_reserved(device)),
            cuda_peak=int(torch.cuda.max_memory_allocated(device)),
            activation_bytes=activation_bytes,
        )
    return MemorySample(rss_bytes=rss_bytes(), activation_bytes=activation_bytes)


def reset_peak(device: torch.device) -> None:
    """Start a fresh peak for the next step (CUDA only; it raises without CUDA)."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)
