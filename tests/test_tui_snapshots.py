"""Snapshots (pytest-textual-snapshot) of the picker and the main screen.

Deterministic: fixed terminal size, a fixed scenario list (copied into a
temporary scenarios/ folder), volatile numbers (timings, RSS) hidden.
Update with `pytest tests/test_tui_snapshots.py --snapshot-update` after
checking the new SVGs by eye.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("pytest_textual_snapshot")

from workbench.tui.app import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = (120, 40)


@pytest.fixture
def fixed_scenarios(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "scenarios"
    folder.mkdir()
    for name in ("cnn_image.py", "mlp_digits.py", "regression_mse.py"):
        shutil.copy(ROOT / "scenarios" / name, folder / name)
    monkeypatch.chdir(tmp_path)  # default_scenario_dir() prefers ./scenarios
    return folder


def test_picker_snapshot(snap_compare, fixed_scenarios: Path) -> None:
    assert snap_compare(create_app([], device="cpu", show_volatile=False), terminal_size=SIZE)


def test_main_screen_snapshot(snap_compare, fixed_scenarios: Path) -> None:
    """mlp_digits loaded, before its first step: layout, tree, inspector of the model."""

    async def loaded(pilot) -> None:
        for _ in range(200):
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            main = pilot.app.main
            if main.view is not None and main.busy is None and main._inspected is not None:
                break

    app = create_app([str(fixed_scenarios / "mlp_digits.py")], device="cpu", show_volatile=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=loaded)
