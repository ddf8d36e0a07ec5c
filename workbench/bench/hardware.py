"""What the numbers were measured on: CPU model, threads, GPUs, torch version."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from workbench.bench.results import Hardware


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def detect(threads: int | None = None) -> Hardware:
    gpus: tuple[str, ...] = ()
    if torch.cuda.is_available():
        gpus = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        capability = ""
    return Hardware(
        cpu=cpu_model(),
        cores=os.cpu_count() or 1,
        threads=threads if threads is not None else torch.get_num_threads(),
        gpus=gpus,
        torch_version=torch.__version__,
        cpu_capability=capability,
        cuda_version=torch.version.cuda if gpus else None,
    )


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
