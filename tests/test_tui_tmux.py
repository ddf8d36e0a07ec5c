"""The real `workbench` command in a real terminal (tmux), read back with capture-pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NAN = HERE / "tui_scenarios" / "nan_at_step3.py"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self) -> None:
        self.socket = f"wb-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        return result.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p")

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen}")

    def keys(self, *keys: str) -> None:
        self("send-keys", *keys)


@pytest.mark.slow
def test_workbench_command_reaches_a_nan_breakpoint_in_tmux(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("workbench")
    rc_file = tmp_path / "rc"
    # COLUMNS/LINES inherited from the test runner would override the pane's real size.
    command = f"env -u COLUMNS -u LINES {exe} tui {NAN} --device cpu; echo $? > {rc_file}; sleep 30"
    tmux = Tmux()
    try:
        tmux("new-session", "-d", "-x", "120", "-y", "40", command)
        tmux.wait_for("next forward")
        tmux.keys("f")
        screen = tmux.wait_for("next loss")
        assert "✔ forward" in screen
        tmux.keys("B")
        tmux.wait_for("Breakpoints")
        tmux.keys("nan_inf", "Enter")
        tmux.wait_for("added: nan_inf")
        tmux.keys("C-s")
        # The main screen's footer shows again only once the form has closed ("next loss" is
        # visible behind the modal, so waiting on it would race the next key into the form).
        tmux.wait_for("run→break")
        tmux.keys("r")
        screen = tmux.wait_for("breakpoint nan_inf")
        assert "step 3" in screen
        assert "fc1" in screen
        assert "paused before optimizer step" in screen
        tmux.keys("q")
        deadline = time.monotonic() + 20
        while not rc_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rc_file.read_text().strip() == "0"
    finally:
        tmux("kill-server")


STUCK = HERE / "tui_scenarios" / "forward_never_returns.py"


def _workbench_pid(tmux: Tmux) -> int:
    """The workbench process under the pane's shell."""
    import psutil

    pane = int(tmux("list-panes", "-F", "#{pane_pid}").split()[0])
    for _ in range(50):
        for child in psutil.Process(pane).children(recursive=True):
            if "workbench" in " ".join(child.cmdline()):
                return child.pid
        time.sleep(0.1)
    raise AssertionError("no workbench process under the tmux pane")


@pytest.mark.slow
def test_q_ends_the_app_when_the_forward_never_returns(tmp_path: Path) -> None:
    """User code stuck in its forward used to keep the process alive after q (the screen blank)."""
    import psutil

    exe = Path(sys.executable).with_name("workbench")
    rc_file = tmp_path / "rc"
    # (stderr stays the terminal: Textual draws on it)
    command = f"env -u COLUMNS -u LINES {exe} tui {STUCK} --device cpu; echo $? > {rc_file}; sleep 30"
    tmux = Tmux()
    try:
        tmux("new-session", "-d", "-x", "120", "-y", "40", command)
        tmux.wait_for("next forward")
        pid = _workbench_pid(tmux)
        tmux.keys("f")
        tmux.wait_for("running forward")
        tmux.keys("p")  # nothing to pause: a single phase is running, and it never ends
        time.sleep(0.3)
        started = time.monotonic()
        tmux.keys("q")
        while not rc_file.exists() and time.monotonic() - started < 10:
            time.sleep(0.05)
        took = time.monotonic() - started
        assert rc_file.exists(), f"the workbench was still running 10 s after q:\n{tmux.screen()}"
        assert rc_file.read_text().strip() == "0"
        # Designed to end 0.5 s after the app closes; a generous bound on a shared machine.
        assert took < 3.0, f"q took {took:.1f} s to end the process"
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert "still running when you quit" in tmux.wait_for("still running when you quit")
    finally:
        tmux("kill-server")


SLOW = HERE / "tui_scenarios" / "slow_forward.py"


@pytest.mark.slow
def test_run_progress_line_shows_a_rounded_loss(tmp_path: Path) -> None:
    import re

    exe = Path(sys.executable).with_name("workbench")
    command = f"env -u COLUMNS -u LINES {exe} run {SLOW} --device cpu --steps 30; sleep 30"
    tmux = Tmux()
    try:
        tmux("new-session", "-d", "-x", "120", "-y", "20", command)
        screen = tmux.wait_for("step 2/30")
        line = next(ln for ln in screen.splitlines() if "step 2/30" in ln)
        assert re.search(r"loss -?\d+\.\d{1,4}\b", line), line  # it printed loss 0.6931471824645996
        assert not re.search(r"\d\.\d{6,}", line), line
    finally:
        tmux("kill-server")
