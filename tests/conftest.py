from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
BROKEN = Path(__file__).resolve().parent / "broken_scenarios"
GOLDEN = Path(__file__).resolve().parent / "golden"

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--overwrite-golden", action="store_true", default=False,
                     help="rewrite tests/golden/*.txt from the current output instead of comparing")


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """``golden(name, text)``: compare ``text`` with tests/golden/NAME.txt; with
    --overwrite-golden, write it there instead (then review the diff before committing)."""
    overwrite = bool(request.config.getoption("--overwrite-golden"))

    def _check(name: str, text: str) -> None:
        path = GOLDEN / f"{name}.txt"
        text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
        if overwrite or not path.exists():
            if not overwrite:
                pytest.fail(f"{path} does not exist: run pytest with --overwrite-golden once, "
                            "check the file and commit it")
            path.write_text(text, encoding="utf-8")
            return
        expected = path.read_text(encoding="utf-8")
        if text != expected:
            import difflib

            diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                                f"{path} (expected)", "output"))
            pytest.fail(f"the output differs from {path}; if the change is intended, rerun with "
                        f"--overwrite-golden and commit the file:\n{diff}")

    return _check
