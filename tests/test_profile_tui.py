"""The profile screen through Textual's Pilot: a real profile in a worker, then the analysis."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

pytest.importorskip("textual")

from rich.console import Console  # noqa: E402
from textual.app import App  # noqa: E402
from textual.widgets import DataTable, Static  # noqa: E402

from workbench.profiling.options import ProfileOptions  # noqa: E402
from workbench.scenario import load_source  # noqa: E402
from workbench.tui.screens.profile import ProfileScreen  # noqa: E402
from workbench.tui.widgets.common import ErrorPanel  # noqa: E402

HERE = Path(__file__).resolve().parent
MLP = str(HERE.parent / "scenarios" / "mlp_digits.py")
RAISES_FORWARD = HERE / "tui_scenarios" / "raises_in_forward.py"
FAST = ProfileOptions(wait=0, warmup=1, active=2, memory=True)
SIZE = (120, 50)


class Host(App[None]):
    """A bare app that opens the profile screen over its default screen."""

    def __init__(self, screen: ProfileScreen) -> None:
        super().__init__()
        self.profile_screen = screen

    def on_mount(self) -> None:
        self.push_screen(self.profile_screen)


def plain(renderable: object) -> str:
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


async def finish(pilot, screen: ProfileScreen, rounds: int = 400) -> None:  # noqa: ANN001
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if not screen.running:
            return
    raise AssertionError("the profile worker did not finish")


async def test_profile_screen_shows_breakdown_ops_advice_and_trace_path(tmp_path: Path) -> None:
    screen = ProfileScreen(load_source(MLP), "cpu", logdir=tmp_path, options=FAST)
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await finish(pilot, screen)
        assert not screen.query_one(ErrorPanel).shown
        assert screen.result is not None and screen.result.files
        (trace,) = screen.result.files
        assert trace.exists() and trace.parent.parent == tmp_path

        breakdown = plain(screen.query_one("#breakdown", Static).content)
        assert "mean step" in breakdown and "CPU Exec" in breakdown and "step time" in breakdown
        assert "█" in breakdown  # the stacked bar
        ops = screen.query_one("#ops", DataTable)
        assert ops.row_count > 0
        assert any(str(ops.get_row_at(i)[0]).startswith("aten::") for i in range(ops.row_count))
        recs = plain(screen.query_one("#recs", Static).content)
        assert "recommendations" in recs or "No rule fired" in recs
        files = plain(screen.query_one("#files", Static).content)
        assert str(trace) in files.replace("\n", "") and "tensorboard --logdir" in files

        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not screen


async def test_a_failing_scenario_shows_the_error_and_the_app_lives(tmp_path: Path) -> None:
    screen = ProfileScreen(load_source(str(RAISES_FORWARD)), "cpu", logdir=tmp_path, options=FAST)
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await finish(pilot, screen)
        error = screen.query_one(ErrorPanel)
        assert error.shown
        assert screen.result is None
        await pilot.press("escape")  # first Escape hides the error
        await pilot.pause()
        assert not error.shown and app.screen is screen
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not screen


async def test_main_screen_key_opens_the_profile_screen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The main screen's P pushes ProfileScreen(source, device) for the loaded scenario."""
    from workbench.tui import app as app_module

    monkeypatch.chdir(tmp_path)  # the screen's default logdir is ./runs/profile
    app = app_module.create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(400):
            await app.workers.wait_for_complete()
            await pilot.pause()
            if app.main.session is not None and app.main.busy is None:
                break
        await pilot.press("P")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ProfileScreen)
        assert screen.source.label == "mlp_digits"
        await finish(pilot, screen)
        assert screen.result is not None and screen.result.files
        assert (tmp_path / "runs" / "profile") in screen.result.files[0].parents
