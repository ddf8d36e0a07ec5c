"""The TUI's engine runs in a child process: the user's code can hang or quit it, never the app."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytest.importorskip("textual")
psutil = pytest.importorskip("psutil")

from tests.test_tui import SIZE, plain, settle  # noqa: E402
from workbench.tui.app import create_app  # noqa: E402
from workbench.tui.widgets.common import ErrorPanel  # noqa: E402

HERE = Path(__file__).resolve().parent
STUCK = str(HERE / "tui_scenarios" / "forward_never_returns.py")
SYS_EXIT = str(HERE / "tui_scenarios" / "sys_exit_in_forward.py")
OS_EXIT = str(HERE / "tui_scenarios" / "os_exit_in_forward.py")
THREAD = str(HERE / "tui_scenarios" / "leaves_a_thread.py")


def _host_pid(app) -> int:  # noqa: ANN001
    session = app.main.session
    assert session is not None and session.host is not None and session.host.pid is not None
    return session.host.pid


def _gone(pid: int) -> bool:
    """The process and everything in its process group (the host leads one) have ended."""
    for proc in psutil.process_iter(["pid"]):
        try:
            if (proc.pid == pid or os.getpgid(proc.pid) == pid) and proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue
    return True


async def _wait_for(pilot, predicate, seconds: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


@pytest.mark.slow
async def test_q_during_a_forward_that_never_returns_ends_app_and_child() -> None:
    app = create_app([STUCK], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        pid = _host_pid(app)
        await pilot.press("f")
        # The forward printed before it hung: the child is inside the user's code now.
        await _wait_for(pilot, lambda: any("entering the wait" in line for line in app.logbook))
        assert main.busy == "advance" and app.is_running
        started = time.monotonic()
        await pilot.press("q")
        await _wait_for(pilot, lambda: not app.is_running, seconds=5)
        took = time.monotonic() - started
    assert took < 1.0, f"q took {took:.2f} s"
    assert _gone(pid)
    assert app.stopped_running_code  # the CLI says the scenario's code was ended


@pytest.mark.slow
async def test_sys_exit_in_forward_shows_the_error_panel_and_the_app_lives() -> None:
    app = create_app([SYS_EXIT], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        pid = _host_pid(app)
        await pilot.press("n")  # step 0: forward call 1 is fine
        main = await settle(pilot)
        assert main.view.step == 1
        await pilot.press("f")  # call 2: sys.exit(3)
        main = await settle(pilot)
        panel = main.query_one(ErrorPanel)
        assert panel.shown
        title = plain(panel.query_one("#error-title"))
        assert "SystemExit" in title and "forward" in title
        assert "sys_exit_in_forward.py:20" in title  # file:line of the sys.exit call
        assert app.is_running and not _gone(pid)  # the engine is still there: the next step works
        await pilot.press("n")
        main = await settle(pilot)
        assert not panel.shown and main.view.step >= 2
        await pilot.press("q")
    assert _gone(pid)


@pytest.mark.slow
async def test_os_exit_in_forward_says_the_process_ended_and_r_restarts_it() -> None:
    app = create_app([OS_EXIT], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        await pilot.press("f")
        panel = main.query_one(ErrorPanel)
        await _wait_for(pilot, lambda: panel.shown)
        title = plain(panel.query_one("#error-title"))
        details = plain(panel.query_one("#error-details"))
        assert "exited with status 7" in title and "the next phase" in title
        assert "about to leave with os._exit(7)" in details  # its last stderr lines
        assert app.is_running and main.busy is None
        await pilot.press("R")  # a fresh process, the scenario built again
        await _wait_for(pilot, lambda: main.busy is None and main.view is not None)
        assert main.view.step == 0


@pytest.mark.slow
async def test_a_thread_left_running_does_not_keep_the_child_alive() -> None:
    app = create_app([THREAD], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        pid = _host_pid(app)
        await pilot.press("n")
        await settle(pilot)
        started = time.monotonic()
        await pilot.press("q")
        await _wait_for(pilot, lambda: not app.is_running, seconds=5)
        assert time.monotonic() - started < 1.0
    assert _gone(pid)
    assert not app.stopped_running_code  # it stopped when asked: nothing had to be killed


async def test_an_app_that_ends_without_q_ends_its_child() -> None:
    app = create_app([str(HERE.parent / "scenarios" / "mlp_digits.py")], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        pid = _host_pid(app)
    assert _gone(pid)
