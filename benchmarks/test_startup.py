"""Start-up: how soon the TUI shows something, how fast `--help` answers.

Targets: the picker's first frame <= 1.0 s, a scenario's main screen (its
skeleton, with "loading torch / building the scenario") <= 1.5 s, every
``--help`` <= 0.3 s, each from a fresh interpreter. Run with::

    .venv/bin/python -m pytest benchmarks/test_startup.py -s

Each figure is the median of a few fresh processes, timed from just before
the process starts to the moment it reports (the frame drawn, the help
printed), so interpreter start-up is included, as a user sees it. The TUI
runs headless (Textual's own test driver: the same compositor and widgets,
no terminal), which leaves out only the terminal's own drawing. On a busy
machine every figure grows; the load average is printed beside them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "scenarios" / "mlp_digits.py"
ROUNDS = 5
TARGETS = {"picker": 1.0, "main skeleton": 1.5, "--help": 0.3}

# The child: open the app headless and print one line the moment the wanted screen is drawn.
FIRST_FRAME = """
import sys
from workbench.tui.app import create_app
from workbench.tui.screens.picker import PickerScreen

want = sys.argv[1]
app = create_app(sys.argv[2:], device="cpu")
if want == "main skeleton":
    # The main screen calls begin() once its first frame is rendered (call_after_refresh):
    # that moment is the skeleton on screen, before the loading worker starts competing.
    begin = app.begin

    def begin_after_frame():
        print("FRAME", "torch" in sys.modules, flush=True)
        begin()
        app.exit()

    app.begin = begin_after_frame

async def drawn(pilot):
    if want == "main skeleton":
        return  # begin_after_frame reports and exits
    for _ in range(3000):
        await pilot.pause(0.01)
        screen = pilot.app.screen
        if want == "picker" and isinstance(screen, PickerScreen):
            break
        if want == "main ready" and pilot.app.main.view is not None:
            break
    print("FRAME", "torch" in sys.modules, flush=True)
    pilot.app.exit()

app.run(headless=True, size=(120, 40), auto_pilot=drawn)
"""


def _until_line(argv: list[str], marker: str) -> tuple[float, str]:
    """Seconds from process start to the first stdout line starting with ``marker``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = ""
    for line in proc.stdout:
        if line.startswith(marker):
            break
    took = time.perf_counter() - start
    proc.stdout.close()
    proc.wait(timeout=120)
    return took, line.strip()


def _report(name: str, seconds: list[float], report: list[str]) -> float:
    median = statistics.median(seconds)
    load = os.getloadavg()[0]
    target = TARGETS.get(name)
    verdict = "" if target is None else (" ok" if median <= target else f" OVER the {target:g} s target")
    report.append(f"{name:<14} median {median:.3f} s (min {min(seconds):.3f}, {len(seconds)} runs){verdict}; "
                  f"load average {load:.2f} on {os.cpu_count()} cores")
    return median


@pytest.fixture(scope="module")
def startup_report():
    lines: list[str] = []
    yield lines
    print("\nstart-up (fresh processes; the machine's load inflates every figure):")
    for line in lines:
        print("  " + line)


@pytest.mark.parametrize("screen", ["picker", "main skeleton", "main ready"])
def test_tui_first_frame(screen: str, startup_report: list[str]) -> None:
    specs = [] if screen == "picker" else [str(MLP)]
    runs = [_until_line([sys.executable, "-c", FIRST_FRAME, screen, *specs], "FRAME") for _ in range(ROUNDS)]
    seconds = [took for took, _ in runs]
    if screen != "main ready":
        # Drawn before torch was imported: that is what makes it fast.
        assert all(line == "FRAME False" for _, line in runs), runs
    _report(screen, seconds, startup_report)


@pytest.mark.parametrize("command", ["", "tui", "list", "run", "check", "summary", "bench", "profile", "diff"])
def test_help(command: str, startup_report: list[str]) -> None:
    exe = Path(sys.executable).with_name("workbench")
    argv = [str(exe), *([command] if command else []), "--help"]
    seconds = [_until_line(argv, "usage:")[0] for _ in range(ROUNDS)]
    _report("--help" if not command else f"{command} --help", seconds, startup_report)
