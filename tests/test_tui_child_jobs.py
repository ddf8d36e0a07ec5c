"""The bench and profile screens run the user's code in a child process: it can end or hang only that.

A forward that calls ``os._exit`` leaves the app running with the failure (and the user's line) on
screen; leaving the screen (Escape) or quitting (q) while the child hangs stops it; a second ``r``
while one runs starts nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("textual")
psutil = pytest.importorskip("psutil")

from textual.app import App  # noqa: E402
from textual.screen import Screen  # noqa: E402
from textual.widgets import Label, SelectionList  # noqa: E402

from workbench.bench.timing import Plan  # noqa: E402
from workbench.profiling.options import ProfileOptions  # noqa: E402
from workbench.scenario import load_source  # noqa: E402
from workbench.tui.screens.bench import BenchScreen  # noqa: E402
from workbench.tui.screens.profile import ProfileScreen  # noqa: E402
from workbench.tui.widgets.common import ErrorPanel  # noqa: E402

# forward #3 does what the scenario is about: the bench's fp32 row (warm-up 1, 2 timed) and the
# profile (1 warm-up, 2 recorded) both get there.
SCENARIO = '''
import os, time
import torch
from torch import nn
from workbench import Scenario

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)
        self.n = 0

    def forward(self, x):
        self.n += 1
        if self.n == 3:
            {action}
        return self.fc(x)

def build(device):
    torch.manual_seed(0)
    model = Net().to(device)
    data = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(8)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="child_job")
'''
OS_EXIT = "os._exit(7)"
HANGS = "while True: time.sleep(0.05)"
EXIT_LINE = 16  # the line of {action} in SCENARIO
PLAN = Plan(warmup=1, steps=2)
FAST = ProfileOptions(wait=0, warmup=1, active=2, memory=False)
SIZE = (140, 45)


@pytest.fixture(scope="module", autouse=True)
def fork_server() -> None:
    """Start the fork server the screens' children come from once (it imports torch: seconds),
    so each test pays a fork, as in the TUI, where the engine host started it already."""
    import os

    from workbench.isolation import run_isolated
    from workbench.session.engine_host import ENGINE_HOST_PRELOAD
    from workbench.tui.jobs import CHILD_PRELOAD

    assert run_isolated(os.getpid, preload=(*ENGINE_HOST_PRELOAD, *CHILD_PRELOAD)).returned


class Host(App[None]):
    def __init__(self, screen: Screen[None]) -> None:
        super().__init__()
        self.tool = screen

    def on_mount(self) -> None:
        self.push_screen(self.tool)


def scenario(tmp_path: Path, action: str) -> str:
    path = tmp_path / "child_job.py"
    path.write_text(SCENARIO.format(action=action))
    return str(path)


def bench_screen(path: str) -> BenchScreen:
    return BenchScreen(load_source(path), "cpu", plan=PLAN)


async def until(pilot, condition: Callable[[], bool], timeout_s: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await pilot.pause(0.05)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


async def start_bench(pilot, screen: BenchScreen) -> None:  # noqa: ANN001
    picker = screen.query_one(SelectionList)
    picker.deselect_all()
    picker.select("fp32")
    await pilot.press("r")


def in_the_loop(screen: BenchScreen | ProfileScreen) -> bool:
    """The child runs the scenario's steps (past building it)."""
    return screen.job is not None and screen.job.pid is not None and "step" in (screen._doing or "")


async def test_bench_child_that_calls_os_exit_fails_alone(tmp_path: Path) -> None:
    path = scenario(tmp_path, OS_EXIT)
    screen = bench_screen(path)
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await start_bench(pilot, screen)
        await until(pilot, lambda: not screen.running)
        error = screen.query_one(ErrorPanel)
        assert error.shown and app.is_running and app.screen is screen
        title = str(screen.query_one("#error-title", Label).content)
        assert "os._exit(7)" in title and f"{path}:{EXIT_LINE} in forward" in title
        assert screen.job is not None and screen.job.pid is not None and wait_gone(screen.job.pid)
        await pilot.press("escape")  # hides the error
        await pilot.press("r")  # and it runs again (and fails again)
        await until(pilot, lambda: not screen.running)
        assert screen.query_one(ErrorPanel).shown and app.screen is screen


async def test_leaving_the_bench_screen_stops_its_child(tmp_path: Path) -> None:
    screen = bench_screen(scenario(tmp_path, HANGS))
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await start_bench(pilot, screen)
        await until(pilot, lambda: in_the_loop(screen))
        job = screen.job
        assert job is not None and job.pid is not None
        await pilot.press("r")  # a second r while one runs starts nothing
        await pilot.pause()
        assert screen.job is job and len(app.workers) == 1
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not screen
        assert wait_gone(job.pid)
        await until(pilot, lambda: not app.workers, timeout_s=5.0)  # the worker thread is free again


async def test_q_on_the_bench_screen_quits_and_stops_its_child(tmp_path: Path) -> None:
    screen = bench_screen(scenario(tmp_path, HANGS))
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await start_bench(pilot, screen)
        await until(pilot, lambda: in_the_loop(screen))
        job = screen.job
        assert job is not None and job.pid is not None
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, timeout_s=5.0)
    assert wait_gone(job.pid)


async def test_profile_child_that_calls_os_exit_fails_alone(tmp_path: Path) -> None:
    path = scenario(tmp_path, OS_EXIT)
    screen = ProfileScreen(load_source(path), "cpu", logdir=tmp_path / "runs", options=FAST)
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: screen.job is not None and not screen.running)
        assert screen.query_one(ErrorPanel).shown and app.is_running and app.screen is screen
        title = str(screen.query_one("#error-title", Label).content)
        assert "os._exit(7)" in title and f"{path}:{EXIT_LINE} in forward" in title


async def test_leaving_the_profile_screen_stops_its_child(tmp_path: Path) -> None:
    screen = ProfileScreen(load_source(scenario(tmp_path, HANGS)), "cpu", logdir=tmp_path / "runs", options=FAST)
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: in_the_loop(screen))
        job = screen.job
        assert job is not None and job.pid is not None
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not screen
        assert wait_gone(job.pid)
        await until(pilot, lambda: not app.workers, timeout_s=5.0)
