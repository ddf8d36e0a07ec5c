"""Quieting the profiler's native log lines; imports nothing heavy, so it can run before torch loads."""

from __future__ import annotations

import os


def quiet_native_logs() -> None:
    """Ask Kineto and c10 to keep their log lines (profiler_start, CPUAllocator
    warnings) to themselves. c10 reads TORCH_CPP_LOG_LEVEL when torch is
    imported, Kineto reads KINETO_LOG_LEVEL when the profiler starts: call this
    before anything imports torch. A user's own setting wins."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
