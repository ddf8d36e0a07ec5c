"""The TUI through Textual's Pilot: what the widgets show is what the engine measured."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.widgets import OptionList  # noqa: E402

from workbench.report.numbers import fmt_float  # noqa: E402
from workbench.scenario import load_source  # noqa: E402
from workbench.tui.app import create_app  # noqa: E402
from workbench.tui.screens.main import MainScreen  # noqa: E402
from workbench.tui.screens.picker import PickerScreen, picker_entries  # noqa: E402
from workbench.tui.widgets.common import ErrorPanel  # noqa: E402
from workbench.tui.widgets.model_table import ModelTable  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MLP = str(ROOT / "scenarios" / "mlp_digits.py")
NAN = str(HERE / "tui_scenarios" / "nan_at_step3.py")
RAISES_FORWARD = str(HERE / "tui_scenarios" / "raises_in_forward.py")
RAISES_BUILD = str(HERE / "tui_scenarios" / "raises_on_build.py")
SIZE = (120, 40)


async def settle(pilot, rounds: int = 200) -> MainScreen:
    """Wait until the engine workers finished and their messages were handled."""
    main = pilot.app.main
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if main.busy is None and not any(w.is_running for w in pilot.app.workers):
            break
    return main


def cell(table: ModelTable, module: str, column: str) -> str:
    return table.get_cell(module, column).plain


def test_picker_entries_list_bundled_given_and_broken(tmp_path: Path) -> None:
    entries = picker_entries([NAN, str(tmp_path / "missing.py")])
    labels = [(e.group, e.label) for e in entries]
    assert ("given", "nan_at_step3") == labels[0]
    assert entries[1].error is not None and "no such file" in entries[1].error
    bundled = [label for group, label in labels if group == "bundled"]
    assert "mlp_digits" in bundled and "cnn_image:build_batchnorm" in bundled
    mlp = next(e for e in entries if e.label == "mlp_digits")
    assert "784-128-10 MLP" in mlp.summary


async def test_no_scenario_opens_picker_and_escape_leaves_an_empty_workbench() -> None:
    app = create_app([], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, PickerScreen)
        options = app.screen.query_one(OptionList)
        assert options.highlighted is not None
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert app.main.session is None
        await pilot.press("n")  # nothing loaded: a notice, not a crash
        await pilot.pause()
        assert app.is_running
