"""workbench attach: the TUI's main screen on a script's own training loop (workbench.watch, serve=...)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("textual")

import torch  # noqa: E402

import workbench  # noqa: E402
from tests.test_tui import SIZE, plain  # noqa: E402
from tests.watch_models import DictLM, dict_batches  # noqa: E402
from workbench.cli import main as cli_main  # noqa: E402
from workbench.tui.app import create_app  # noqa: E402
from workbench.tui.screens.main import MainScreen  # noqa: E402
from workbench.tui.widgets.findings import FindingsPanel  # noqa: E402
from workbench.tui.widgets.model_table import ModelTable  # noqa: E402


class Loop:
    """A user's plain loop (dict batches, the loss inside the model) under workbench.watch in a thread."""

    def __init__(self, tmp: Path, steps: int, *, hold_after: int | None = None, **options: object) -> None:
        torch.manual_seed(0)
        self.model = DictLM(poison=True)  # LogOfShifted: NaN out of the module named "poison"
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.run_dir = tmp / "run"
        self.wb = workbench.watch(self.model, self.opt, every=1, serve=f"unix:{tmp / 's.sock'}",
                                  run_dir=self.run_dir, **options)
        self.steps = steps
        self.hold_after = hold_after
        self.release = threading.Event()  # the loop waits here after `hold_after` steps (stays live)
        self.done: list[int] = []
        self.thread = threading.Thread(target=self._train, daemon=True, name="user-loop")

    def _train(self) -> None:
        with self.wb:
            for i, batch in enumerate(dict_batches(self.steps)):
                self.model(**batch)["loss"].backward()
                self.opt.step()
                self.opt.zero_grad()
                self.done.append(i)
                if self.hold_after is not None and i + 1 == self.hold_after:
                    self.release.wait(30)

    def start(self) -> Loop:
        self.thread.start()
        return self

    def finish(self) -> None:
        self.release.set()
        self.thread.join(20)
        assert not self.thread.is_alive()


async def until(pilot, cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause()
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not seen within {timeout} s; status: {pilot.app.main.status!r}")


def shown_findings(main: MainScreen) -> set[tuple[str, str | None]]:
    """(kind, module) of the rows the findings panel lists."""
    panel = main.query_one(FindingsPanel)
    return {(f.kind, f.module) for f in (panel.finding_at(i) for i in range(panel.option_count)) if f is not None}


@pytest.mark.slow
async def test_attached_screen_shows_the_layers_and_the_nan_finding_of_a_running_script(tmp_path: Path) -> None:
    loop = Loop(tmp_path, 4, hold_after=2).start()
    try:
        app = create_app(attach=str(loop.run_dir), show_volatile=False)
        async with app.run_test(size=SIZE) as pilot:
            main = app.main
            # A watch publishes a step's record once the next one begins: step 0's is out by now.
            await until(pilot, lambda: main.view is not None and len(loop.done) == 2 and len(main.view.history) >= 1)
            assert loop.thread.is_alive()  # a live session, not the log of a finished one
            table = main.query_one(ModelTable)
            assert {"embed", "body", "body.0", "poison", "head"} <= {n.name for n in main.view.modules}
            assert "poison" in table.get_cell("poison", "module").plain
            assert table.get_cell("head", "shape").plain.strip() not in ("", "·")  # measured by the watch
            assert ("nan_inf", "poison") in shown_findings(main)
            assert "watch" in main.status and "p pauses" in main.status
            # A user's loop cannot step one phase or rewind: the keys say so instead of sending.
            await pilot.press("f")
            await pilot.press("u")
            await pilot.pause()
            notes = [n.message for n in app._notifications]
            assert any("cannot step one phase" in n for n in notes) and any("cannot rewind" in n for n in notes)
            assert main.busy is None
            loop.release.set()
            await until(pilot, lambda: main.session is not None and main.session.ended is not None)
            assert "the run ended: finished" in main.status
        loop.finish()
    finally:
        loop.release.set()


@pytest.mark.slow
async def test_a_wait_breakpoint_set_in_the_tui_holds_the_script_until_the_tui_continues(tmp_path: Path) -> None:
    loop = Loop(tmp_path, 3, on_break="wait")  # serving from here on; the loop starts below
    try:
        app = create_app(attach=str(loop.run_dir), show_volatile=False)
        async with app.run_test(size=SIZE) as pilot:
            main = app.main
            await until(pilot, lambda: main.view is not None)  # the Hello: the model tree
            assert main.view.breakpoints == ()
            main.session.set_breakpoints(["nan_inf"])  # what B then ctrl+s sends: SetBreakpoints
            await until(pilot, lambda: main.busy is None)
            assert [b.describe() for b in main.view.breakpoints] == ["nan_inf"]
            # The watch reads commands at step boundaries: step 0 ends, then step 1 runs into
            # the breakpoint and holds before its optimizer step.
            loop.start()
            await until(pilot, lambda: main.view.pending_break is not None)
            hit = main.view.pending_break
            # Step 0's update already spread the NaN into the weights, so step 1 names the first module.
            assert hit.step == 1 and hit.breakpoint == "nan_inf" and hit.finding.kind == "nan_inf"
            assert "waits at nan_inf" in main.status and "r continues" in main.status
            assert "paused before optimizer step" in plain(main.query_one("#title"))
            loop.thread.join(0.5)
            assert loop.thread.is_alive() and loop.done == [0]  # held: the step did not end
            main.session.set_breakpoints([])  # no more stops, then r continues
            await until(pilot, lambda: main.busy is None)
            await pilot.press("r")
            await until(pilot, lambda: main.session.ended is not None)
            assert loop.done == [0, 1, 2]
        loop.finish()
    finally:
        loop.release.set()


async def test_a_finished_run_dir_opens_read_only(tmp_path: Path) -> None:
    loop = Loop(tmp_path, 3).start()
    loop.finish()
    app = create_app(attach=str(loop.run_dir), show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = app.main
        await until(pilot, lambda: main.view is not None and main.session.ended is not None)
        assert [r.step for r in main.view.history] == [0, 1, 2]
        assert ("nan_inf", "poison") in shown_findings(main)
        assert "read-only" in main.status
        title = plain(main.query_one("#title"))
        assert "ended" in title and "next forward" not in title  # it said "next forward" of a run long gone
        await pilot.press("r")
        await pilot.pause()
        assert any("read-only" in n.message for n in app._notifications)
        await pilot.press("R")
        await pilot.pause()
        assert any("connecting to" in n.message for n in app._notifications)  # R said nothing


async def test_a_finished_run_that_logged_no_loss_names_no_loss_source(tmp_path: Path) -> None:
    # A plain model (no loss in its outputs) and a loop that never calls wb.log(loss=...).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with workbench.watch(model, opt, every=1, serve=f"unix:{tmp_path / 's.sock'}", run_dir=tmp_path / "run"):
        for _ in range(2):
            model(torch.randn(16, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    app = create_app(attach=str(tmp_path / "run"), show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = app.main
        await until(pilot, lambda: main.view is not None and main.session.ended is not None)
        phase = " ".join(plain(main.query_one("#phase")).split())
        assert "step 2" in phase and "loss from" not in phase and "()" not in phase, phase


def test_attach_list_shows_live_sessions_and_a_bad_target_exits_2(tmp_path: Path, capsys) -> None:
    loop = Loop(tmp_path, 2, hold_after=1).start()
    try:
        deadline = time.monotonic() + 10
        while not loop.done and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cli_main(["attach", "--list", "--root", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        line = next(x for x in out.splitlines() if str(loop.run_dir) in x)
        assert "watch" in line and f"pid {os.getpid()}" in line
        assert f"unix:{tmp_path / 's.sock'}" in line
    finally:
        loop.finish()
    assert cli_main(["attach", "--list", "--root", str(tmp_path)]) == 0
    assert "no live sessions" in capsys.readouterr().out
    missing = tmp_path / "nowhere"
    assert cli_main(["attach", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such run directory" in err
    assert cli_main(["attach", "127.0.0.1:9"]) == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
