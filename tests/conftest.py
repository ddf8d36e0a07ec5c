from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
BROKEN = Path(__file__).resolve().parent / "broken_scenarios"

# Keep the test suite's own torch work predictable on a 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture
def scenarios_dir() -> Path:
    return SCENARIOS


@pytest.fixture
def write_scenario(tmp_path: Path):
    """Write a scenario file from source text; returns its path."""

    def _write(text: str, name: str = "scn.py") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write
