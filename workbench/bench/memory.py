"""Peak memory of one variant: CUDA max allocated, or the CPU RSS high-water delta.

On CPU a separate process per variant would give the cleanest peak RSS but
costs an import of torch (1-3 s) per row, which breaks the 60 s budget of
the default matrix. Instead, on Linux, the kernel's RSS high-water mark
(VmHWM) is reset through ``/proc/self/clear_refs`` before the variant and
read after it; the row reports the rise above the RSS at the start. Memory
the allocator keeps cached from earlier rows is not counted again, so the
figure is a lower bound of an isolated run; the method is named in the row.
``workbench bench --isolate-memory`` measures the isolated run itself
(bench/isolated.py), at the cost of a process per row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

CUDA_METHOD = "CUDA max allocated"
CPU_METHOD = "RSS high-water rise, in-process (VmHWM reset)"


@dataclass
class PeakMemory:
    bytes: int | None = None
    method: str = ""


def proc_status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def track_peak(device: torch.device) -> Iterator[PeakMemory]:
    peak = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync point: earlier work must not count here
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        try:
            yield peak
        finally:
            torch.cuda.synchronize(device)  # sync point: wait for the variant's kernels
            peak.bytes = max(torch.cuda.max_memory_allocated(device) - base, 0)
            peak.method = CUDA_METHOD
        return
    rss_base = proc_status_bytes("VmRSS")
    usable = rss_base is not None and _reset_hwm()
    try:
        yield peak
    finally:
        hwm = proc_status_bytes("VmHWM") if usable else None
        if hwm is not None and rss_base is not None:
            peak.bytes = max(hwm - rss_base, 0)
            peak.method = CPU_METHOD
        else:
            peak.method = "unavailable (no /proc/self/clear_refs on this OS)"
