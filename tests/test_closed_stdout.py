"""A reader of stdout that leaves early (`workbench run x | head -2`) is nobody's failure.

When the pipe's reader is gone, writing raises BrokenPipeError, which rich's Console turns
into SystemExit(1). That SystemExit is not the scenario's sys.exit(): the command stops
quietly with 141 (128 + SIGPIPE, what a shell reports for other tools), with no blame and no
traceback, and a --json report keeps the steps done. A real sys.exit() in user code, even
one answering a BrokenPipeError of its own, is still reported as the scenario's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbench.cli import main
from workbench.errors import EXIT_OUTPUT_CLOSED
from tests.conftest import ROOT, SCENARIOS

BLAME = "called sys.exit"


def _run_with_early_reader_exit(argv: list[str], lines: int) -> tuple[int, str]:
    """Run the CLI with stdout a pipe whose reader takes ``lines`` lines then closes it
    (0: closed before the command can print anything: it is still importing torch)."""
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(lines):
        assert proc.stdout.readline(), "the command printed less than expected"
    proc.stdout.close()
    try:
        err = proc.stderr.read().decode()
        return proc.wait(timeout=60), err
    finally:
        proc.kill()
        proc.stderr.close()


@pytest.mark.slow  # a fresh interpreter importing torch, then 5 steps: ~5 s here
def test_run_piped_into_a_reader_that_leaves(tmp_path) -> None:
    """The first line (the run's announcement) is printed before the steps; the reader leaves
    after it, so the layer table after the steps meets the closed pipe."""
    report = tmp_path / "report.json"
    code, err = _run_with_early_reader_exit(
        ["run", str(SCENARIOS / "mlp_digits.py"), "--steps", "5", "--json", str(report)], lines=1)
    assert code == EXIT_OUTPUT_CLOSED, err
    assert BLAME not in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert "error" not in err, err
    data = json.loads(report.read_text())  # written whole (atomically), not a half file
    assert data["summary"]["stopped_by"] in ("steps", "interrupted")
    if data["summary"]["stopped_by"] == "interrupted":  # the pipe closed before the steps were done
        assert data["error"]["type"] == "BrokenPipeError"
    else:
        assert len(data["steps"]) == 5 and data["error"] is None
    assert not [p for p in tmp_path.iterdir() if p != report]  # no temp file left behind


@pytest.mark.slow  # one fresh interpreter importing torch per command
@pytest.mark.parametrize("argv, reports", [
    pytest.param(["list", "--static"], [], id="list"),
    pytest.param(["summary", "{scenario}", "--json", "{tmp}/summary.json"], ["summary.json"], id="summary"),
    pytest.param(["check", "{scenario}", "--steps", "2", "--junit", "{tmp}/check.xml", "--json", "{tmp}/check.json"],
                 ["check.xml", "check.json"], id="check"),
])
def test_every_command_stops_quietly_on_a_closed_stdout(argv, reports, tmp_path) -> None:
    """The reader is gone before the first line: every command ends the same way, reports written."""
    argv = [a.format(scenario=SCENARIOS / "mlp_digits.py", tmp=tmp_path) for a in argv]
    code, err = _run_with_early_reader_exit(argv, lines=0)
    assert code == EXIT_OUTPUT_CLOSED, err
    assert BLAME not in err and "Traceback" not in err and "Exception ignored" not in err, err
    for name in reports:
        assert (tmp_path / name).stat().st_size > 0, f"{name} was not written"
    assert {p.name for p in tmp_path.iterdir()} == set(reports)  # no temp file left behind


def test_a_sys_exit_answering_a_broken_pipe_in_user_code_is_still_the_users(tmp_path, capsys) -> None:
    """The frames decide: a SystemExit raised in the user's own file is the user's, whatever it handles."""
    scenario = tmp_path / "exits_on_pipe.py"
    scenario.write_text("import sys\n\n\ndef build(device):\n    try:\n        raise BrokenPipeError(32, 'pipe')\n"
                        "    except BrokenPipeError:\n        sys.exit(1)\n", encoding="utf-8")
    assert main(["run", str(scenario), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "SystemExit: 1" in err and "exits_on_pipe.py (line 8)" in err, err


@pytest.mark.parametrize("raised", [BrokenPipeError(32, "Broken pipe"), SystemExit(1)], ids=["pipe", "exit"])
def test_a_closed_stdout_is_not_told_from_an_open_one_by_the_exception_alone(raised) -> None:
    """With stdout still read, a BrokenPipeError (a user's socket) or a bare SystemExit is not a closed stdout."""
    from workbench.errors import stdout_closed

    try:
        raise raised
    except BaseException as exc:  # noqa: BLE001 - the point of the test
        assert not stdout_closed(exc)


@pytest.mark.slow  # a fresh interpreter importing torch
def test_user_code_printing_into_the_closed_pipe_stops_the_run_quietly(tmp_path) -> None:
    """The scenario's own print() meets the closed pipe (its BrokenPipeError wrapped as a failed
    build): still a closed stdout, not a broken scenario, and the report says the run stopped."""
    scenario = tmp_path / "chatty.py"
    scenario.write_text((SCENARIOS / "mlp_digits.py").read_text(encoding="utf-8")
                        + "\n\n_build = build\n\n\ndef build(device):\n    for i in range(20_000):\n"
                          "        print('building', i)\n    return _build(device)\n", encoding="utf-8")
    report = tmp_path / "report.json"
    code, err = _run_with_early_reader_exit(["run", str(scenario), "--steps", "2", "--json", str(report)], lines=0)
    assert code == EXIT_OUTPUT_CLOSED, err
    assert "Traceback" not in err and "error" not in err and "Exception ignored" not in err, err
    data = json.loads(report.read_text())
    assert data["summary"]["stopped_by"] == "interrupted" and data["error"]["type"] == "BrokenPipeError"
