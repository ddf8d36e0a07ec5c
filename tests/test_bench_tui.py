"""The bench screen: pick variants, run in a worker, the table and bars fill in, Escape returns."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from textual.app import App
from textual.widgets import DataTable, SelectionList, Static

from tests.test_bench import TINY
from workbench.bench.timing import Plan
from workbench.scenario import load_source
from workbench.tui.screens.bench import BenchScreen


class _Host(App[None]):
    def __init__(self, screen: BenchScreen) -> None:
        super().__init__()
        self.bench = screen

    def on_mount(self) -> None:
        self.push_screen(self.bench)


async def test_bench_screen_runs_checked_variants(tmp_path: Path) -> None:
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    screen = BenchScreen(load_source(str(path)), "cpu", plan=Plan(warmup=1, steps=2))
    app = _Host(screen)
    async with app.run_test(size=(160, 50)) as pilot:
        picker = screen.query_one(SelectionList)
        picker.deselect_all()
        for name in ("fp32", "accum-4", "dataparallel"):
            picker.select(name)
        await pilot.press("r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert screen.run_result is not None
        table = screen.query_one(DataTable)
        assert table.row_count == 3
        assert [table.get_row_at(i)[0] for i in range(3)] == ["fp32", "accum-4", "dataparallel"]
        assert table.get_row_at(2)[1] == "skipped" and "≥2 CUDA" in table.get_row_at(2)[-1]
        console = Console(width=120, record=True)
        console.print(screen.query_one("#bars", Static).content)
        bars = console.export_text()
        assert "accum-4" in bars and "×" in bars
        # The highlighted row is shown in full below the table (wide notes run off the screen).
        table.move_cursor(row=2)
        await pilot.pause()
        detail = str(screen.query_one("#detail", Static).content)
        assert detail.startswith("dataparallel: skipped:") and "≥2 CUDA" in detail
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not screen
