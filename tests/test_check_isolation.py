"""`workbench check`'s child processes: each scenario runs as it would in a plain process.

The child comes from a fork server, but what a scenario sees of multiprocessing is what
`workbench run` gives it (DataLoader workers are forked, so a Dataset class defined in the
scenario file works). A KeyboardInterrupt the scenario's own code raises is that scenario's
failure; only a real Ctrl-C or SIGTERM of the command stops the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_interrupts import _stopped, _wait_for
from workbench.cli import main

HEADER = "import torch\nfrom torch import nn\nfrom workbench import Scenario\n"

TINY = HEADER + (
    "def build(device):\n"
    "    torch.manual_seed(0)\n"
    "    m = nn.Linear(4, 2)\n"
    "    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]\n"
    "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
    "                    loss_fn=nn.CrossEntropyLoss(), data=data)\n"
)

# The Dataset class lives in the scenario file, whose module exists only in the child:
# workers started through a fork server could not unpickle it; forked workers have it.
WORKERS = HEADER + (
    "from torch.utils.data import DataLoader, Dataset\n"
    "class Pairs(Dataset):\n"
    "    def __len__(self):\n        return 32\n"
    "    def __getitem__(self, i):\n        return torch.full((4,), float(i)), i % 2\n"
    "def build(device):\n"
    "    m = nn.Linear(4, 2)\n"
    "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
    "                    loss_fn=nn.CrossEntropyLoss(),\n"
    "                    data=DataLoader(Pairs(), batch_size=8, num_workers=2))\n"
)

RAISES_INTERRUPT = HEADER + (
    "class Stop(nn.Linear):\n"
    "    calls = 0\n"
    "    def forward(self, x):\n"
    "        self.calls += 1\n"
    "        if self.calls == 2:\n"
    "            raise KeyboardInterrupt\n"
    "        return super().forward(x)\n"
    "def build(device):\n"
    "    m = Stop(4, 2)\n"
    "    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]\n"
    "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
    "                    loss_fn=nn.CrossEntropyLoss(), data=data)\n"
)
RAISE_LINE = RAISES_INTERRUPT.splitlines().index("            raise KeyboardInterrupt") + 1

# Says (a file beside it) that its first forward has begun, then waits there to be interrupted.
SLOW = HEADER + (
    "import pathlib, time\n"
    "class Slow(nn.Linear):\n"
    "    def forward(self, x):\n"
    "        pathlib.Path(__file__).with_name('stepping').touch()\n"
    "        time.sleep(300)\n"
    "        return super().forward(x)\n"
    "def build(device):\n"
    "    m = Slow(4, 2)\n"
    "    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]\n"
    "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
    "                    loss_fn=nn.CrossEntropyLoss(), data=data)\n"
)


def scenario_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    d = tmp_path / "scenarios"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def check_json(argv: list[str], report: Path) -> tuple[int, list[dict]]:
    code = main(["check", *argv, "--json", str(report)])
    return code, json.loads(report.read_text())["results"]


def test_dataloader_workers_with_a_dataset_class_in_the_scenario_file(tmp_path: Path) -> None:
    # The scenario after it checks that the fork server still serves children afterwards.
    d = scenario_dir(tmp_path, {"a_workers.py": WORKERS, "b_tiny.py": TINY})
    code, results = check_json([str(d), "--steps", "3"], tmp_path / "check.json")
    assert [(r["label"], r["status"]) for r in results] == [("a_workers", "ok"), ("b_tiny", "ok")], results
    assert code == 0
    assert results[0]["steps"] == 3


def test_a_keyboard_interrupt_raised_by_user_code_fails_that_scenario_only(tmp_path: Path) -> None:
    d = scenario_dir(tmp_path, {"a_tiny.py": TINY, "b_raises.py": RAISES_INTERRUPT, "c_tiny.py": TINY})
    code, results = check_json([str(d), "--steps", "3"], tmp_path / "check.json")
    assert code == 2
    assert [(r["label"], r["status"]) for r in results] == [
        ("a_tiny", "ok"), ("b_raises", "failed"), ("c_tiny", "ok")], results
    failed = results[1]
    where = f"{d / 'b_raises.py'}:{RAISE_LINE}"
    assert "KeyboardInterrupt" in failed["first_problem"] and where in failed["first_problem"], failed
    assert "raise KeyboardInterrupt" in failed["failure"]  # the whole traceback, for the JSON and JUnit reports
    assert json.loads((tmp_path / "check.json").read_text())["stopped_by"] == "done"


def _ctrl_c(proc: subprocess.Popen[str]) -> None:
    # A terminal's Ctrl-C signals its whole foreground process group: the command, its fork
    # server and the scenario's child all get SIGINT at once.
    os.killpg(proc.pid, signal.SIGINT)


def _sigterm(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)  # `kill PID`: the command alone


def _interrupt(proc: subprocess.Popen[str], send: Callable[[subprocess.Popen[str]], None]) -> tuple[int, str]:
    code, out, err = _stopped(proc, send)
    return code, out + err


def _interrupted_check(tmp_path: Path, files: dict[str, str],
                       send: Callable[[subprocess.Popen[str]], None]) -> tuple[int, str, dict, ET.Element]:
    """Run `workbench check` on ``files`` in a subprocess, signal it once some scenario says
    it is under way; its exit code, output, JSON report and JUnit suite."""
    d = scenario_dir(tmp_path, files)
    report, junit = tmp_path / "check.json", tmp_path / "junit.xml"
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120")
    # A session of its own: the process group Ctrl-C goes to is the command's, not pytest's.
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "check", str(d), "--steps", "3",
                             "--json", str(report), "--junit", str(junit)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for(lambda: (d / "stepping").exists(), 120, proc)
        code, output = _interrupt(proc, send)
    finally:
        # A failed wait kills the command alone; its scenario's child would run on without it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    return code, " ".join(output.split()), json.loads(report.read_text()), suite


@pytest.mark.slow
@pytest.mark.parametrize("send", [_ctrl_c, _sigterm], ids=["ctrl-c", "sigterm"])
def test_a_real_interrupt_stops_the_run_and_keeps_the_finished_scenarios(send, tmp_path: Path) -> None:
    files = {"a_tiny.py": TINY, "b_slow.py": SLOW, "c_tiny.py": TINY}
    code, output, data, suite = _interrupted_check(tmp_path, files, send)
    assert code == 130, output
    assert "interrupted after 1 of 3 scenarios" in output
    assert data["stopped_by"] == "interrupted"
    # The scenario that was running is a row too, stopped, with what it had done.
    assert [(r["label"], r["status"]) for r in data["results"]] == [("a_tiny", "ok"), ("b_slow", "interrupted")]
    assert suite.get("tests") == "2" and suite.get("skipped") == "1"


@pytest.mark.slow
def test_a_real_interrupt_while_building_keeps_that_scenario_as_stopped(tmp_path: Path) -> None:
    # Its build calls the waiting forward: the signal comes before any scenario has finished.
    slow_build = SLOW.replace("def build(device):\n", "def build(device):\n    Slow(4, 2)(torch.randn(1, 4))\n")
    code, output, data, suite = _interrupted_check(tmp_path, {"slow_build.py": slow_build}, _ctrl_c)
    assert code == 130, output
    assert data["stopped_by"] == "interrupted"
    assert [(r["label"], r["status"], r["steps"]) for r in data["results"]] == [("slow_build", "interrupted", 0)]
    assert data["results"][0]["first_problem"] == "interrupted while building the scenario"
    assert suite.get("tests") == "1" and suite.get("skipped") == "1"


# Steps twice (a per-epoch StepLR stepped per batch: a warning from the load), then hangs in its
# third forward: the row keeps both steps, their loss and the warning, and names the line.
HANGS = HEADER + (
    "import time\n"
    "class Hang(nn.Linear):\n"
    "    calls = 0\n"
    "    def forward(self, x):\n"
    "        self.calls += 1\n"
    "        while self.calls == 3:\n"
    "            time.sleep(0.05)\n"
    "        return super().forward(x)\n"
    "def build(device):\n"
    "    torch.manual_seed(0)\n"
    "    m = Hang(4, 2)\n"
    "    opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
    "    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]\n"
    "    return Scenario(model=m, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), data=data,\n"
    "                    scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=2))\n"
)
HANG_LINE = HANGS.splitlines().index("            time.sleep(0.05)") + 1

SEGFAULTS = HEADER + (
    "import ctypes\n"
    "class Crash(nn.Linear):\n"
    "    calls = 0\n"
    "    def forward(self, x):\n"
    "        self.calls += 1\n"
    "        if self.calls == 2:\n"
    "            ctypes.string_at(0)\n"
    "        return super().forward(x)\n"
    "def build(device):\n"
    "    m = Crash(4, 2)\n"
    "    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]\n"
    "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
    "                    loss_fn=nn.CrossEntropyLoss(), data=data)\n"
)
CRASH_LINE = SEGFAULTS.splitlines().index("            ctypes.string_at(0)") + 1


def test_a_scenario_past_its_timeout_keeps_its_steps_and_findings_and_names_its_line(tmp_path: Path) -> None:
    d = scenario_dir(tmp_path, {"hangs.py": HANGS, "tiny.py": TINY})
    code, results = check_json([str(d), "--steps", "5", "--timeout", "15"], tmp_path / "check.json")
    assert code == 2
    hung, after = results
    assert (hung["status"], hung["steps"]) == ("failed", 2), hung
    assert hung["final_loss"] is not None and hung["warnings"] >= 1, hung
    assert any(f["kind"] == "scenario_config" for f in hung["findings"]), hung["findings"]
    assert "timed out after 15 s" in hung["first_problem"], hung
    assert f"in step 2, at {d / 'hangs.py'}:{HANG_LINE} in forward" in hung["first_problem"], hung
    # The stack from the scenario's line down, without the workbench's frames under it.
    assert "Its main thread then" in hung["failure"] and "time.sleep" not in hung["failure"]
    assert f'"{d / "hangs.py"}", line {HANG_LINE} in forward' in hung["failure"]
    assert "workbench/engine" not in hung["failure"]
    assert after["status"] == "ok"


def test_a_segfault_keeps_the_finished_steps_and_names_the_line(tmp_path: Path) -> None:
    d = scenario_dir(tmp_path, {"crash.py": SEGFAULTS})
    code, results = check_json([str(d), "--steps", "4"], tmp_path / "check.json")
    assert code == 2
    (crashed,) = results
    assert (crashed["status"], crashed["steps"]) == ("failed", 1), crashed
    assert "SIGSEGV" in crashed["first_problem"]
    assert f"in step 1, at {d / 'crash.py'}:{CRASH_LINE} in forward" in crashed["first_problem"], crashed


def _state(pid: int) -> str | None:
    """The process's state letter from /proc ('Z' for a zombie), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_scenario_child_ends_when_its_check_is_killed(tmp_path: Path) -> None:
    # Writes its pid, then waits in its first forward; the check is then SIGKILLed.
    waits = SLOW.replace("pathlib.Path(__file__).with_name('stepping').touch()",
                         "pathlib.Path(__file__).with_name('stepping').write_text(str(__import__('os').getpid()))")
    d = scenario_dir(tmp_path, {"waits.py": waits})
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "check", str(d), "--steps", "3"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    child = None
    try:
        _wait_for(lambda: (d / "stepping").exists() and (d / "stepping").read_text() != "", 120, proc)
        child = int((d / "stepping").read_text())
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _state(child) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _state(child)
    finally:  # whatever happened, nothing of this test runs on
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if child is not None and _state(child) not in (None, "Z"):
            os.kill(child, signal.SIGKILL)
    assert left in (None, "Z"), f"the scenario's child {child} still runs ({left}) after its check was killed"


EXITS = SEGFAULTS.replace("import ctypes\n", "import os\n").replace("ctypes.string_at(0)", "os._exit(7)")
EXIT_LINE = EXITS.splitlines().index("            os._exit(7)") + 1


def test_an_os_exit_names_the_line_that_called_it(tmp_path: Path) -> None:
    d = scenario_dir(tmp_path, {"exits.py": EXITS})
    code, results = check_json([str(d), "--steps", "4"], tmp_path / "check.json")
    assert code == 2
    (exited,) = results
    assert (exited["status"], exited["steps"]) == ("failed", 1), exited
    assert exited["first_problem"] == (f"its process called os._exit(7) (in step 1, at {d / 'exits.py'}:{EXIT_LINE} "
                                       "in forward)"), exited
