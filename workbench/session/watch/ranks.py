"""A watched loop under torch.distributed: which rank this process is, and each rank's own output paths."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def current_rank() -> tuple[int, int]:
    """(rank, world size) of this process under torch.distributed, (0, 1) otherwise."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_path(path: str | os.PathLike[str], rank: int, world: int) -> Path:
    """``exp.json`` -> ``exp.rank1.json`` when several ranks write (each its own report)."""
    p = Path(path)
    return p if world <= 1 else p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


def rank_dir(path: str | os.PathLike[str], rank: int, world: int) -> Path:
    """``logs`` -> ``logs/rank1`` when several ranks write (each its own TensorBoard log)."""
    return Path(path) / f"rank{rank}" if world > 1 else Path(path)
