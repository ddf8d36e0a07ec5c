"""Ctrl-C / SIGTERM during run, bench and profile: partial results kept, exit 130, nothing left behind.

Each test starts the real command in a subprocess on a slow scenario, waits
until it has done some work, sends the signal, then checks the exit code,
that the partial output exists and parses, that no temp files are left and
that no child process outlives the command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

SLOW = ROOT / "tests" / "reliability_cases" / "slow_steps.py"
pytestmark = pytest.mark.slow


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120", SLOW_STEPS_MARKER=str(_marker(cwd)))
    return subprocess.Popen([sys.executable, "-m", "workbench", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _marker(cwd: Path) -> Path:
    return cwd.parent / f"{cwd.name}.forwards"  # beside tmp_path: _no_temp_files looks inside it


def _forwards_done(cwd: Path) -> int:
    """How many forwards the slow scenario has run in the command started in ``cwd``."""
    try:
        return _marker(cwd).read_text().count("forward")
    except FileNotFoundError:
        return 0


def _wait_for(predicate, timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"command ended early ({proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("timed out waiting for the command to start working")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, str, str]:
    return _stopped(proc, lambda p: p.send_signal(sig))


def _stopped(proc: subprocess.Popen[str], send: Callable[[subprocess.Popen[str]], None]) -> tuple[int, str, str]:
    """``send`` the signal, wait for the command to end, and check it left no process behind."""
    children = _descendants(proc.pid)
    send(proc)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the command did not stop within 60 s of the signal")
    # No orphans: every process the command had started is gone.
    deadline = time.monotonic() + 15
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphans left: {alive}"
    return proc.returncode, out, err


def _no_temp_files(directory: Path) -> None:
    leftovers = [p for p in directory.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_interrupted_writes_partial_json(sig, tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    tb = tmp_path / "tb"
    proc = _start(["run", str(SLOW), "--steps", "100000", "--json", str(report),
                   "--tensorboard", str(tb)], tmp_path)
    # Three forwards begun: at least two whole steps done (a loaded machine can take seconds per step).
    _wait_for(lambda: _forwards_done(tmp_path) >= 3, 120, proc)
    code, out, err = _stop(proc, sig)
    assert code == 130, err
    data = json.loads(report.read_text())
    assert len(data["steps"]) >= 1
    assert data["summary"]["stopped_by"] == "interrupted"
    assert "partial report" in err
    _no_temp_files(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_is_interrupted_even_if_the_scenario_ignores_the_signals(sig, tmp_path: Path) -> None:
    """A build() that sets SIG_IGN for both made `run` stoppable by SIGKILL only, with no report:
    the workbench's handlers are put back before each phase."""
    scenario = tmp_path / "deaf.py"
    scenario.write_text(SLOW.read_text().replace(
        "def build(device):\n",
        "def build(device):\n    import signal\n"
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"))
    report = tmp_path / "run.json"
    proc = _start(["run", str(scenario), "--steps", "100000", "--json", str(report)], tmp_path)
    _wait_for(lambda: _forwards_done(tmp_path) >= 3, 120, proc)
    code, out, err = _stop(proc, sig)
    assert code == 130, err
    assert "changed the SIGINT handler and the SIGTERM handler" in err
    data = json.loads(report.read_text())
    assert data["summary"]["stopped_by"] == "interrupted" and len(data["steps"]) >= 1


STUCK = """import pathlib, time
import torch
from torch import nn
from workbench import Scenario
class Stuck(nn.Linear):
    calls = 0
    def forward(self, x):
        self.calls += 1
        while self.calls == 3:
            pathlib.Path(__file__).with_name("stuck").touch()
            time.sleep(0.05)
        return super().forward(x)
def build(device):
    m = Stuck(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
"""


def test_run_interrupted_in_a_hung_step_says_where_it_was(tmp_path: Path) -> None:
    scenario = tmp_path / "stuck.py"
    scenario.write_text(STUCK)
    line = STUCK.splitlines().index("            time.sleep(0.05)") + 1
    report = tmp_path / "run.json"
    proc = _start(["run", str(scenario), "--steps", "5", "--json", str(report)], tmp_path)
    _wait_for(lambda: (tmp_path / "stuck").exists(), 120, proc)
    code, out, err = _stop(proc, signal.SIGTERM)
    assert code == 130, err
    where = f"interrupted at {scenario}:{line} in forward"
    assert where in err, err
    data = json.loads(report.read_text())
    assert len(data["steps"]) == 2 and data["error"]["message"] == where and data["error"]["step"] == 2


def test_check_interrupted_keeps_the_running_scenarios_steps_in_its_reports(tmp_path: Path) -> None:
    """The scenario running when Ctrl-C came is a row too ('stopped'), with the steps it had done:
    the reports used to hold the finished scenarios only."""
    import xml.etree.ElementTree as ET

    quick = ROOT / "tests" / "reliability_cases" / "_tiny.py"
    first = tmp_path / "first.py"
    first.write_text(quick.read_text() + "\n\ndef build(device):\n    return tiny(device)\n")
    slower = tmp_path / "slower.py"  # 20 steps of 0.5 s: still running when the signal comes
    slower.write_text(SLOW.read_text().replace("time.sleep(0.05)", "time.sleep(0.5)"))
    report, junit = tmp_path / "check.json", tmp_path / "check.xml"
    proc = _start(["check", str(first), str(slower), "--steps", "20", "--timeout", "600",
                   "--json", str(report), "--junit", str(junit)], tmp_path)
    _wait_for(lambda: _forwards_done(tmp_path) >= 3, 240, proc)
    code, out, err = _stop(proc, signal.SIGINT)
    assert code == 130, err
    data = json.loads(report.read_text())
    assert data["stopped_by"] == "interrupted"
    assert [r["label"] for r in data["results"]] == ["first", "slower"]
    assert data["results"][0]["status"] != "interrupted" and data["results"][1]["status"] == "interrupted"
    slow = data["results"][1]
    assert slow["steps"] >= 1 and slow["first_problem"].startswith("interrupted in step")
    suite = ET.parse(junit).getroot()
    assert suite.get("skipped") == "1" and suite.find(".//testcase[2]/skipped") is not None
    assert "stopped" in out


def test_bench_interrupted_keeps_finished_rows_and_stops_ranks(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    proc = _start(["bench", str(SLOW), "--variants", "fp32,ddp-2", "--steps", "400", "--json", str(report)],
                  tmp_path)
    # Wait until the DDP ranks are up (the fp32 row is finished by then).
    _wait_for(lambda: len(_descendants(proc.pid)) >= 2, 180, proc)
    time.sleep(2.0)
    code, out, err = _stop(proc, signal.SIGTERM)
    assert code == 130, err
    data = json.loads(report.read_text())
    names = [row["name"] for row in data["results"]]
    assert "fp32" in names
    _no_temp_files(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_profile_interrupted_keeps_what_was_written(sig, tmp_path: Path) -> None:
    logdir = tmp_path / "prof"
    analysis = tmp_path / "analysis.json"
    proc = _start(["profile", str(SLOW), "--logdir", str(logdir), "--run", "r", "--steps", "100000",
                   "--wait", "0", "--warmup", "1", "--active", "100000", "--force", "--json", str(analysis)],
                  tmp_path)
    # Warm-up and two recorded steps whole (the fourth forward has begun).
    _wait_for(lambda: (logdir / "r").exists() and _forwards_done(tmp_path) >= 4, 120, proc)
    code, out, err = _stop(proc, sig)
    assert code == 130, err
    # Where the user's code was, when the signal came while it ran (it said only "interrupted").
    assert "interrupted" in err and ("interrupted at" not in err or f"interrupted at {SLOW}:" in err)
    # --json holds the analysis of the steps kept (it was not written at all).
    assert json.loads(analysis.read_text())["schema"] == "workbench.profile/1"
    # The profiler flushed the steps recorded so far: a trace that parses, with whole steps in it.
    (trace,) = (logdir / "r").glob("*.pt.trace.json")
    assert f"partial trace kept: {trace}" in " ".join(out.split()).replace(" ", "").replace(
        "partialtracekept:", "partial trace kept: ")
    from workbench.profiling.analysis import analyze_file

    assert json.loads(trace.read_text())["traceEvents"]
    assert len(analyze_file(trace).steps) >= 1
    _no_temp_files(tmp_path)
