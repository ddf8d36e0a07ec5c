"""Bad input gets one clear message and the right exit code; nothing is lost.

Table-driven over the broken scenario files in tests/reliability_cases/.
Each case runs `workbench run CASE --steps 5 --json FILE` in-process and
checks the exit code, the key words of the message, that no traceback noise
reaches the user without --verbose, and that the JSON report (always written
once the output path was accepted) parses and holds the steps done before the
failure plus the error.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from workbench.cli import main
from tests.conftest import ROOT

CASES = ROOT / "tests" / "reliability_cases"

# (case file, exit code, words in stderr, steps in the report, error phase or None)
RUN_CASES = [
    ("syntax_error.py", 2, ["syntax_error.py:4", "syntax error", "expected ':'"], 0, None),
    ("no_build.py", 2, ["no function 'build'", "def build(device)", "make"], 0, None),
    ("build_raises.py", 2, ["build_raises.py (line 6)", "IndexError"], 0, None),
    ("wrong_type.py", 2, ["returned Linear", "expected a workbench.Scenario"], 0, None),
    ("missing_field.py", 2, ["missing 1 required", "loss_fn"], 0, None),
    ("wrong_structure.py", 2, ["yielded a dict", "expected (inputs, targets)"], 0, "forward"),
    ("shape_mismatch.py", 2, ["loss phase", "must match", "outputs (8, 3)", "targets (8, 5)"], 0, "loss"),
    ("wrong_device.py", 2, ["is on meta", "model.to(device)"], 0, None),
    ("batchnorm_batch1.py", 2, ["Expected more than 1 value per channel", "batch size 1", "BatchNorm"], 0, "forward"),
    ("empty_data.py", 2, ["yielded no batches"], 0, "forward"),
    ("raises_at_step3.py", 2, ["step 3", "flaky layer failed", "raises_at_step3.py:18"], 3, "forward"),
]


@pytest.mark.parametrize("case, code, words, steps, phase", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_broken_scenario_under_run(case, code, words, steps, phase, tmp_path, capsys) -> None:
    report = tmp_path / "report.json"
    rc = main(["run", str(CASES / case), "--steps", "5", "--json", str(report)])
    captured = capsys.readouterr()
    assert rc == code, captured.err
    for word in words:
        assert word in captured.err, f"{word!r} not in:\n{captured.err}"
    # Library frames are noise to the user; only --verbose shows them.
    assert "site-packages" not in captured.err
    assert "workbench/engine" not in captured.err
    data = json.loads(report.read_text())
    assert data["error"] is not None and data["error"]["message"]
    assert len(data["steps"]) == steps
    if phase is not None:
        assert data["error"]["phase"] == phase
    assert list(tmp_path.iterdir()) == [report]  # no temp files left behind


def test_missing_scenario_path(tmp_path, capsys) -> None:
    assert main(["run", str(tmp_path / "missing.py")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_directory_without_scenarios(tmp_path, capsys) -> None:
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no scenario files found" in err and "Traceback" not in err


def test_verbose_shows_the_full_traceback(capsys) -> None:
    assert main(["run", str(CASES / "shape_mismatch.py"), "--steps", "2", "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


# -- bad command-line values: rejected before any work -------------------------------

BAD_ARGS = [
    (["run", "scenarios/mlp_digits.py", "--steps", "0"], "--steps must be >= 1"),
    (["run", "scenarios/mlp_digits.py", "--steps", "-3"], "--steps must be >= 1"),
    (["run", "scenarios/mlp_digits.py", "--every", "0"], "--every must be >= 1"),
    (["run", "scenarios/mlp_digits.py", "--break-on", "no_such_kind"], "--break-on"),
    (["check", "scenarios/mlp_digits.py", "--steps", "0"], "must be >= 1"),
    (["bench", "scenarios/mlp_digits.py", "--variants", "fp32,warp-speed"], "warp-speed"),
    (["bench", "scenarios/mlp_digits.py", "--steps", "0"], "steps"),
    (["profile", "scenarios/mlp_digits.py", "--active", "0"], "active"),
    (["profile", "--analyze", "/nonexistent/trace/dir"], "/nonexistent/trace/dir"),
]


@pytest.mark.parametrize("argv, words", BAD_ARGS, ids=[" ".join(a[0:1] + a[2:]) for a, _ in BAD_ARGS])
def test_bad_arguments(argv, words, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def _unwritable(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return blocker / "sub" / "out.json"  # a path below a regular file can never be created


UNWRITABLE = [
    ["run", "scenarios/slow_steps.py", "--steps", "50", "--json", "{out}"],
    ["run", "scenarios/slow_steps.py", "--steps", "50", "--tensorboard", "{out}"],
    ["check", "scenarios/slow_steps.py", "--junit", "{out}"],
    ["bench", "scenarios/slow_steps.py", "--json", "{out}"],
    ["profile", "scenarios/slow_steps.py", "--logdir", "{out}"],
]


@pytest.mark.parametrize("argv", UNWRITABLE, ids=lambda a: f"{a[0]} {a[-2]}")
def test_unwritable_output_is_refused_before_the_work(argv, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT / "tests" / "reliability_cases")
    out = _unwritable(tmp_path)
    argv = [a.replace("{out}", str(out)).replace("scenarios/", "") for a in argv]
    import time

    started = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "a-file" in err and "Traceback" not in err
    # slow_steps sleeps 50 ms per step: a refusal after running would take seconds.
    assert time.monotonic() - started < 30


COMPARE_FILES = [
    ("not-json.json", "this is { not json", "not valid JSON"),
    ("other.json", json.dumps({"hello": "world"}), "not a workbench bench result"),
]


@pytest.mark.parametrize("name, text, words", COMPARE_FILES, ids=[c[0] for c in COMPARE_FILES])
def test_compare_refuses_foreign_or_corrupt_files(name, text, words, tmp_path, capsys) -> None:
    bad = tmp_path / name
    bad.write_text(text)
    assert main(["bench", "--compare", str(bad), str(bad)]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err


def test_every_torch_load_is_weights_only() -> None:
    """A checkpoint is data, not code: torch.load must never unpickle arbitrary objects."""
    import ast

    unsafe = []
    for folder in ("workbench", "scenarios", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "load" and ast.unparse(node.func.value) == "torch"):
                    continue
                flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unsafe, f"torch.load without weights_only=True at {unsafe}"


# -- user code that ends, hangs or changes the process ---------------------------------

# (case file, words in stderr, steps in the report, error phase or None)
USER_EXIT_CASES = [
    ("exit_in_build.py", ["exit_in_build.py (line 7)", "SystemExit: 3"], 0, None),
    ("exit_at_import.py", ["exit_at_import.py:3", "importing the scenario", "SystemExit: 5"], 0, None),
    ("exit_in_forward.py", ["step 2, forward phase", "SystemExit", "exit_in_forward.py:10", "sys.exit()"], 2,
     "forward"),
    ("base_exception_in_forward.py", ["step 1, forward phase", "Abort", "base_exception_in_forward.py:12"], 1,
     "forward"),
    # os._exit in the workbench's own process raises at the call (isolation.guard_process_exit):
    # without that, `run` vanished with the scenario's status, 0 included, and wrote no report.
    ("os_exit_in_forward.py", ["step 1, forward phase", "os._exit(7)", "os_exit_in_forward.py:10"], 1, "forward"),
    ("os_exit_in_build.py", ["os_exit_in_build.py (line 7)", "os._exit(0)"], 0, None),
    ("unprintable_error.py", ["step 1, forward phase", "Unprintable", "__str__ raised RuntimeError",
                              "unprintable_error.py:13"], 1, "forward"),
]


@pytest.mark.parametrize("case, words, steps, phase", USER_EXIT_CASES, ids=[c[0] for c in USER_EXIT_CASES])
def test_user_code_that_exits_is_a_scenario_failure(case, words, steps, phase, tmp_path, capsys) -> None:
    """sys.exit() (any BaseException but Ctrl-C) in build or forward: exit 2, file and line, report kept."""
    report = tmp_path / "report.json"
    rc = main(["run", str(CASES / case), "--steps", "5", "--json", str(report)])
    err = capsys.readouterr().err
    assert rc == 2, err
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"
    data = json.loads(report.read_text())
    assert len(data["steps"]) == steps and data["error"]["message"]
    if phase:
        assert data["error"]["phase"] == phase


EXIT_COMMANDS = [
    ["summary", "{case}"],
    ["bench", "{case}", "--steps", "2", "--variants", "fp32"],
    ["profile", "{case}", "--logdir", "{tmp}/prof"],
    ["diff", "{case}"],
]


# os._exit in the workbench's own process raises at the call (isolation.guard_process_exit):
# without that, os._exit(0) in build ended every command at once with a 'success' status.
BUILD_EXITS = [("exit_in_build.py", "SystemExit: 3"), ("os_exit_in_build.py", "os._exit(0)")]


@pytest.mark.parametrize("case, words", BUILD_EXITS, ids=[c for c, _ in BUILD_EXITS])
@pytest.mark.parametrize("argv", EXIT_COMMANDS, ids=lambda a: a[0])
def test_every_command_reports_a_build_that_exits(argv, case, words, tmp_path, capsys) -> None:
    argv = [a.format(case=CASES / case, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{case} (line 7)" in err and words in err and "Traceback" not in err


def test_a_user_thread_that_calls_os_exit_ends_alone(tmp_path, capsys) -> None:
    """A thread of the scenario's that calls os._exit ends with a warning naming it; the run goes on."""
    report = tmp_path / "report.json"
    assert main(["run", str(CASES / "os_exit_in_thread.py"), "--steps", "3", "--json", str(report)]) == 0
    err = capsys.readouterr().err
    assert "thread 'quitter' called os._exit(5)" in err
    assert len(json.loads(report.read_text())["steps"]) == 3


def test_a_megabyte_error_message_is_cut_in_the_terminal_and_the_report(tmp_path, capsys) -> None:
    from workbench.errors import MESSAGE_LIMIT

    report = tmp_path / "report.json"
    assert main(["run", str(CASES / "huge_error_message.py"), "--steps", "3", "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert "(998,000 more characters)" in err and "huge_error_message.py:8" in err
    assert len(err) < 4 * MESSAGE_LIMIT + 4000  # the message twice at most (traceback, error line), cut
    message = json.loads(report.read_text())["error"]["message"]
    assert len(message) < MESSAGE_LIMIT + 100 and message.endswith("(998,000 more characters)")


@pytest.mark.parametrize("case, words", [
    ("unprintable_error.py", ["Unprintable", "__str__ raised RuntimeError", "unprintable_error.py:13"]),
    ("huge_error_message.py", ["ValueError", "(998,000 more characters)", "huge_error_message.py:8"]),
])
def test_diff_names_the_line_of_any_error_in_the_forward(case, words, capsys) -> None:
    """diff wrapped only RuntimeError: a ValueError came out bare (no file, no line, no side), and an
    exception whose __str__ raised crashed its report with a traceback."""
    assert main(["diff", str(CASES / case)]) == 2
    err = capsys.readouterr().err
    assert "side of fp32 vs amp raised" in err and "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"


@pytest.mark.parametrize("case, words", [("exit_in_forward.py", "SystemExit"),
                                         ("os_exit_in_forward.py", "os._exit(7)")])
def test_a_row_that_exits_fails_alone_in_bench(case, words, tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", str(CASES / case), "--steps", "2", "--variants", "fp32",
                 "--json", str(out)]) == 2
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["status"] == "failed" and words in rows[0]["reason"]


# (case file, status, words in its "first problem" or detail)
CHECK_CASES = [
    ("exit_in_build.py", "failed", "SystemExit: 3"),
    ("exit_in_forward.py", "failed", "SystemExit at step 2"),
    ("os_exit_in_forward.py", "failed", "called os._exit(7)"),
    ("segfault_in_forward.py", "failed", "SIGSEGV"),
    ("hangs_in_forward.py", "failed", "timed out after 20 s"),
    ("leaks_global_state.py", "ok", ""),
    ("expects_clean_state.py", "ok", ""),  # after leaks_global_state: nothing leaked into it
    ("leaves_thread.py", "ok", ""),
    ("mlp_ok.py", "ok", ""),
]


@pytest.mark.slow
def test_check_isolates_each_scenario(tmp_path, capsys) -> None:
    """Each scenario in its own process: one that exits, crashes, hangs or changes global
    state is FAILED (or harmless) and every other one still runs, in order, into one report."""
    import shutil

    d = tmp_path / "cases"
    d.mkdir()
    for i, (case, _, _) in enumerate(CHECK_CASES):
        src = CASES / case if case != "mlp_ok.py" else ROOT / "scenarios" / "mlp_digits.py"
        shutil.copy(src, d / f"{i:02d}_{case}")
    junit, report = tmp_path / "junit.xml", tmp_path / "check.json"
    rc = main(["check", str(d), "--steps", "3", "--timeout", "20", "--junit", str(junit), "--json", str(report)])
    out = " ".join(capsys.readouterr().out.split())
    assert rc == 2
    results = json.loads(report.read_text())["results"]
    assert len(results) == len(CHECK_CASES)
    for r, (case, status, words) in zip(results, CHECK_CASES):
        assert r["status"] == status, (case, r)
        assert words in r["first_problem"] + r["detail"], (case, r)
    threads = results[[c[0] for c in CHECK_CASES].index("leaves_thread.py")]
    assert "user-poller" in threads["notes"][0] and "user-poller" in out
    assert ET.parse(junit).getroot().find("testsuite").get("tests") == str(len(CHECK_CASES))


def test_two_projects_with_a_sibling_utils_module(tmp_path, capsys) -> None:
    """Each project's `import utils` gets its own utils.py (one process would cache the first)."""
    for name in ("proj_a", "proj_b"):
        d = tmp_path / name
        d.mkdir()
        (d / "utils.py").write_text(f"VALUE = {name!r}\n")
        (d / "train.py").write_text(
            "import os, sys\nsys.path.insert(0, os.path.dirname(__file__))\nimport utils\n"
            "from tests.reliability_cases._tiny import tiny\n"
            "def build(device):\n"
            f"    assert utils.VALUE == {name!r}, f'got the utils.py of {{utils.VALUE}}'\n"
            "    return tiny(device)\n")
    report = tmp_path / "check.json"
    assert main(["check", str(tmp_path / "proj_a" / "train.py"), str(tmp_path / "proj_b" / "train.py"),
                 "--steps", "1", "--json", str(report)]) == 0, capsys.readouterr().out
    assert [r["status"] for r in json.loads(report.read_text())["results"]] == ["ok", "ok"]


THREAD_COMMANDS = [
    ["run", "{case}", "--steps", "2"],
    ["check", "{case}", "--steps", "2"],
    ["list", "{dir}"],
]


@pytest.mark.slow
@pytest.mark.parametrize("argv", THREAD_COMMANDS, ids=lambda a: a[0])
def test_a_thread_left_running_does_not_hang_the_command(argv, tmp_path) -> None:
    import shutil
    import subprocess
    import sys

    d = tmp_path / "cases"
    d.mkdir()
    shutil.copy(CASES / "leaves_thread.py", d / "leaves_thread.py")
    argv = [a.format(case=d / "leaves_thread.py", dir=d) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "workbench", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if argv[0] != "list":  # list builds in a child of its own, which takes the thread with it
        assert "user-poller" in proc.stdout + proc.stderr


# -- output paths: never an input, never a device replaced, a symlink followed ---------------


def _scenario_copy(tmp_path: Path) -> Path:
    import shutil

    path = tmp_path / "scn.py"
    shutil.copy(CASES / "slow_steps.py", path)
    return path


def _trace_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run1"
    d.mkdir()
    (d / "w0.1.pt.trace.json").write_text(json.dumps({"traceEvents": []}))
    return d


def _findings_report(tmp_path: Path) -> Path:
    path = tmp_path / "findings.json"
    path.write_text(json.dumps({"schema": "workbench.run/1", "findings": []}))
    return path


# (argv with {scn} / {trace} / {findings} / {tmp}, the input the output points at, words)
OUTPUT_IS_INPUT = [
    (["run", "{scn}", "--json", "{scn}"], "scn", "is the scenario file"),
    (["run", "{scn}:build", "--json", "{scn}"], "scn", "is the scenario file"),
    (["check", "{scn}", "--json", "{scn}"], "scn", "is the scenario file"),
    (["check", "{tmp}", "--junit", "{scn}"], "scn", "scenario file"),
    (["bench", "{scn}", "--json", "{scn}"], "scn", "is the scenario file"),
    (["summary", "{scn}", "--json", "{scn}"], "scn", "is the scenario file"),
    (["diff", "{scn}", "--json", "{scn}"], "scn", "is the scenario file"),
    (["profile", "{scn}", "--json", "{scn}", "--logdir", "{tmp}/prof"], "scn", "is the scenario file"),
    (["profile", "{scn}", "--findings", "{findings}", "--json", "{findings}", "--logdir", "{tmp}/prof"],
     "findings", "is the --findings report"),
    (["profile", "--analyze", "{trace}", "--json", "{trace}/w0.1.pt.trace.json"], "trace",
     "is a trace being analysed"),
    (["run", "{tmp}/link.py", "--json", "{scn}"], "scn", "is the scenario file"),  # through a symlink
    (["run", "{scn}", "--json", "{tmp}/other.py"], "other", "is a Python source file"),
]


@pytest.mark.parametrize("argv, target, words", OUTPUT_IS_INPUT, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_an_output_that_is_an_input_is_refused(argv, target, words, tmp_path, capsys) -> None:
    scn = _scenario_copy(tmp_path)
    (tmp_path / "link.py").symlink_to(scn)
    (tmp_path / "other.py").write_text("VALUE = 1\n")
    trace = _trace_dir(tmp_path)
    findings = _findings_report(tmp_path)
    paths = {"scn": scn, "findings": findings, "trace": trace / "w0.1.pt.trace.json",
             "other": tmp_path / "other.py"}
    before = paths[target].read_bytes()
    argv = [a.format(scn=scn, trace=trace, findings=findings, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
    assert paths[target].read_bytes() == before
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_dev_null_is_written_in_place(tmp_path, capsys) -> None:
    import stat

    assert main(["run", str(CASES / "slow_steps.py"), "--steps", "1", "--json", "/dev/null"]) == 0
    assert stat.S_ISCHR(Path("/dev/null").stat().st_mode)


def test_a_fifo_with_a_reader_gets_the_report(tmp_path, capsys) -> None:
    """What `--json >(jq .)` is: a pipe someone reads. Written in place, never replaced."""
    import os
    import stat
    import threading
    import time

    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    # The read end is open before the run starts (as a shell's `jq <fifo &` has it by then); a
    # thread left to open it itself may not have got there yet on a loaded machine.
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    finished = threading.Event()
    got: list[bytes] = []

    def read() -> None:
        while True:
            ended = finished.is_set()  # before the read: b"" after the run ended is the end of the report
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:  # the writer is there, nothing written yet
                chunk = None
            if chunk:
                got.append(chunk)
            elif chunk == b"" and ended:
                return
            else:
                time.sleep(0.01)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert main(["run", str(CASES / "slow_steps.py"), "--steps", "2", "--json", str(fifo)]) == 0
    finally:
        finished.set()
        reader.join(timeout=30)
        os.close(fd)
    assert json.loads(b"".join(got))["summary"]["steps_done"] == 2
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert list(tmp_path.iterdir()) == [fifo]


def test_a_fifo_nobody_reads_is_refused_at_once(tmp_path, capsys) -> None:
    import os

    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    assert main(["run", str(CASES / "slow_steps.py"), "--steps", "50", "--json", str(fifo)]) == 2
    err = capsys.readouterr().err
    assert "FIFO that no process is reading" in err and str(fifo) in err


def test_a_socket_is_refused(tmp_path, capsys) -> None:
    import socket

    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        assert main(["run", str(CASES / "slow_steps.py"), "--steps", "1", "--json", str(path)]) == 2
    assert "is a socket, not a regular file" in capsys.readouterr().err


def test_a_symlink_is_followed_not_replaced(tmp_path, capsys) -> None:
    real = tmp_path / "reports" / "real.json"
    real.parent.mkdir()
    real.write_text('{\n  "schema": "workbench.run/1",\n  "steps": []\n}\n')  # the last run's report
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    dangling = tmp_path / "next.json"
    dangling.symlink_to(tmp_path / "reports" / "new.json")
    assert main(["run", str(CASES / "slow_steps.py"), "--steps", "1", "--json", str(link)]) == 0
    assert main(["check", str(CASES / "slow_steps.py"), "--steps", "1", "--json", str(dangling)]) == 0
    assert link.is_symlink() and json.loads(real.read_text())["summary"]["steps_done"] == 1
    assert dangling.is_symlink() and json.loads((tmp_path / "reports" / "new.json").read_text())["results"]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_junit_and_json_on_one_file_are_refused(tmp_path, capsys) -> None:
    out = tmp_path / "out.xml"
    assert main(["check", str(CASES / "slow_steps.py"), "--junit", str(out), "--json", str(out)]) == 2
    assert "both name" in capsys.readouterr().err and not out.exists()


# -- a full disk: one message naming the path, no temp file left, exit 2 -------------------


class _FullDisk:
    """A file object whose writes fail with ENOSPC once ``room`` characters are in."""

    def __init__(self, real, room: int) -> None:  # noqa: ANN001
        self.real, self.room = real, room

    def write(self, text: str) -> int:
        import errno
        import os

        self.room -= len(text)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real.write(text)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.real, name)


FULL_DISK = [
    (["run", "{case}", "--steps", "3", "--json", "{out}"], 200),  # fails mid-run, while streaming steps
    (["run", "{case}", "--steps", "1", "--json", "{out}"], 10_000_000),  # fails at commit (fsync)
    (["check", "{case}", "--steps", "1", "--junit", "{out}"], 50),
    (["bench", "{case}", "--steps", "2", "--variants", "fp32", "--json", "{out}"], 50),
    (["summary", "{case}", "--json", "{out}"], 50),
    (["profile", "{case}", "--logdir", "{tmp}/prof", "--json", "{out}"], 50),
]


@pytest.mark.parametrize("argv, room", FULL_DISK, ids=lambda v: f"{v[0]} {v[-2]}" if isinstance(v, list) else str(v))
def test_a_full_disk_is_reported_and_leaves_no_temp_file(argv, room, tmp_path, capsys, monkeypatch) -> None:
    import errno
    import os

    from workbench import files

    real_fdopen = os.fdopen

    def fdopen(fd, *a, **k):  # noqa: ANN001, ANN002, ANN003
        return _FullDisk(real_fdopen(fd, *a, **k), room)

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fdopen", fdopen)
    monkeypatch.setattr(files.os, "fsync", fsync)
    out = tmp_path / "out" / "report.json"
    argv = [a.format(case=CASES / "slow_steps.py", out=out, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    # profile writes its run metadata first: that is the file the message names there.
    assert "no space left on device writing" in err and "Traceback" not in err, err
    assert argv[0] == "profile" or f"writing {out}" in err
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


TMPFS_COMMANDS = [
    "run tests/reliability_cases/slow_steps.py --steps 20 --json {mnt}/out/report.json",
    "check scenarios/broken/dead_relu.py --steps 100 --json {mnt}/out/check.json",
    "profile tests/reliability_cases/slow_steps.py --logdir {mnt}/prof",
]


@pytest.mark.slow
@pytest.mark.parametrize("command", TMPFS_COMMANDS, ids=lambda c: c.split()[0])
def test_a_real_full_disk_on_a_tiny_tmpfs(command, tmp_path) -> None:
    """The same on a 24 KB tmpfs (a private mount namespace; skipped where unshare is refused)."""
    import shlex
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=24k tmpfs {mnt} || exit 99; "
              f"{shlex.quote(sys.executable)} -m workbench {command.format(mnt=mnt)}; rc=$?; "
              f"find {mnt} -type f; exit $rc")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode == 99 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr
    assert "no space left on device writing" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.count(str(mnt)) == 0, f"files left behind:\n{proc.stdout}"


# -- user text that looks like rich markup is printed as written ----------------------------

MARKUP = CASES / "markup_in_text.py"
MARKUP_COMMANDS = [
    (["list", "{dir}"], ["[red]raw[/red]"]),
    (["run", "{case}", "--steps", "2"], ["cifar [/mnt/data/cifar]"]),
    (["summary", "{case}"], ["cifar [/mnt/data/cifar]"]),
    (["bench", "{case}", "--steps", "2", "--variants", "fp32"], ["cifar [/mnt/data/cifar]"]),
    (["check", "{case}", "--steps", "1", "--json", "{tmp}/[red]x[/red].json"], ["[red]x[/red].json"]),
    (["profile", "{case}", "--logdir", "{tmp}/[/p]", "--findings", "{findings}"],
     ["[/p]", "[bold]not bold[/bold] in [/mnt]"]),
]


@pytest.mark.parametrize("argv, words", MARKUP_COMMANDS, ids=lambda v: v[0] if isinstance(v, list) and v[0][0] != "[" else None)
def test_user_text_that_looks_like_markup_is_printed_literally(argv, words, tmp_path, capsys, monkeypatch) -> None:
    import shutil

    monkeypatch.setenv("COLUMNS", "250")  # one line per row: the words stay whole
    d = tmp_path / "scenarios"
    d.mkdir()
    shutil.copy(MARKUP, d / MARKUP.name)
    findings = tmp_path / "findings.json"
    findings.write_text(json.dumps({"schema": "workbench.run/1", "findings": [
        {"kind": "dead_units", "severity": "warning", "module": "[fc]", "step": 0,
         "message": "[bold]not bold[/bold] in [/mnt]"}]}))
    argv = [a.format(dir=d, case=d / MARKUP.name, tmp=tmp_path, findings=findings) for a in argv]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    for word in words:
        assert word in out.out + out.err, f"{word!r} not in:\n{out.out}"


# -- bench --compare: broken files are refused, noise never fails the gate -----------------


def _bench_file(path: Path, samples: dict[str, list]) -> Path:
    from workbench.bench.results import BenchRun, BenchSettings, Hardware, Timing, VariantResult, save_run

    rows = tuple(VariantResult(name, "ok", timing=Timing(tuple(s), samples_per_step=8)) for name, s in samples.items())
    run = BenchRun("tiny", "cpu", Hardware("cpu", 2, 2, (), "2.13"), BenchSettings(1, 8, 1, 4, 8, 2), rows)
    save_run(path, run)
    return path


STEADY = [0.010 + 0.0001 * i for i in range(8)]

# (how NEW's fp32 row is broken, words in the error)
BAD_NEW_ROWS = [
    (lambda r: r["timing"].update(samples=[]), "row 'fp32' is ok but has no timing samples"),
    (lambda r: r["timing"]["samples"].__setitem__(2, "NaN"), "samples[2] = 'NaN' is not finite"),
    (lambda r: r["timing"]["samples"].__setitem__(0, -0.01), "samples[0] = -0.01 is not positive"),
    (lambda r: r["timing"]["samples"].__setitem__(1, 0), "samples[1] = 0 is not positive"),
    (lambda r: r["timing"]["samples"].__setitem__(1, "fast"), "samples[1] = 'fast' is not a number"),
    (lambda r: r.update(timing=None), "row 'fp32' is ok but has no timing samples"),
    (lambda r: r["timing"].update(samples={"a": 1}), "samples is dict"),
]


@pytest.mark.parametrize("breaks, words", BAD_NEW_ROWS, ids=[w for _, w in BAD_NEW_ROWS])
def test_compare_refuses_a_broken_new_file(breaks, words, tmp_path, capsys) -> None:
    old = _bench_file(tmp_path / "old.json", {"fp32": STEADY})
    new = _bench_file(tmp_path / "new.json", {"fp32": STEADY})
    data = json.loads(new.read_text())
    breaks(data["results"][0])
    new.write_text(json.dumps(data))
    for a, b in ((old, new), (new, old)):
        assert main(["bench", "--compare", str(a), str(b)]) == 2
        err = capsys.readouterr().err
        assert words in err and "new.json" in err and "Traceback" not in err, err


def test_compare_refuses_deeply_nested_json(tmp_path, capsys) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    good = _bench_file(tmp_path / "good.json", {"fp32": STEADY})
    assert main(["bench", "--compare", str(good), str(deep)]) == 2
    err = capsys.readouterr().err
    assert "deep.json: JSON nested deeper than the parser allows" in err and "Recursion" not in err


def test_an_input_file_past_the_size_limit_is_refused_unread(tmp_path) -> None:
    from workbench.inputs import InputFileError, read_json

    big = tmp_path / "big.json"
    big.write_text(json.dumps({"pad": "x" * 5000}))
    with pytest.raises(InputFileError, match="big.json: is larger than 0 MB"):
        read_json(big, "bench result", limit_bytes=4096)


def test_a_noisy_change_is_reported_and_never_fails_the_gate(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    noisy = [0.0090, 0.0095, 0.0098, 0.0103, 0.028, 0.029, 0.030, 0.031]  # median +80 %, samples overlap
    old = _bench_file(tmp_path / "old.json", {"fp32": STEADY, "amp": STEADY})
    new = _bench_file(tmp_path / "new.json", {"fp32": [s * 1.3 for s in STEADY], "amp": noisy})
    assert main(["bench", "--compare", str(old), str(new)]) == 1  # fp32: a real 30 % slowdown
    out = capsys.readouterr().out
    assert "slower" in out and "noisy, not comparable" in out and "samples overlap" in out
    only_noise = _bench_file(tmp_path / "noise.json", {"fp32": STEADY, "amp": noisy})
    assert main(["bench", "--compare", str(old), str(only_noise)]) == 0
    few = _bench_file(tmp_path / "few.json", {"fp32": STEADY[:3], "amp": STEADY[:3]})
    slow_few = _bench_file(tmp_path / "slow_few.json", {"fp32": [s * 2 for s in STEADY[:3]], "amp": STEADY[:3]})
    assert main(["bench", "--compare", str(few), str(slow_few)]) == 0
    assert "too few samples (3 vs 3)" in capsys.readouterr().out


MANN_WHITNEY = [
    ([1, 2, 3], [4, 5, 6], 2 / 20),  # separated, 3 vs 3: the smallest two-sided p there is
    ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], 2 / 252),
    ([1, 2, 3], [1, 2, 3], 1.0),
    ([1, 3, 5, 7], [2, 4, 6, 8], 0.6857142857142857),  # U = 6 of 16: P(U <= 6) = 24/70
]


@pytest.mark.parametrize("x, y, p", MANN_WHITNEY)
def test_mann_whitney_exact_p_values(x, y, p) -> None:
    from workbench.bench.compare import mann_whitney_p

    assert mann_whitney_p(x, y) == pytest.approx(p)
    assert mann_whitney_p(y, x) == pytest.approx(p)  # two-sided: symmetric


# -- profile --analyze: broken, foreign and oversized traces get one clear message -----------


def _torch_event(**over):  # noqa: ANN003, ANN202
    return {"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": 1, "tid": 1, "ts": 10, "dur": 5, **over}


# (file name, bytes written, words in the error)
BAD_TRACES = [
    ("w.1.pt.trace.json", json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "dur": 3}]}),
     "traceEvents[0] ('aten::mm') has no 'ts'"),
    ("w.1.pt.trace.json", json.dumps({"traceEvents": [_torch_event(), _torch_event(ts="12")]}),
     "traceEvents[1] ('aten::add') has 'ts' = '12', not a finite number"),
    ("w.1.pt.trace.json", '{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "a", "ts": NaN, "dur": 1}]}',
     "has 'ts' = nan, not a finite number"),
    ("w.1.pt.trace.json", json.dumps({"traceEvents": [_torch_event(dur=-4)]}), "'dur' = -4, not a finite number >= 0"),
    ("w.1.pt.trace.json", json.dumps({"traceEvents": [_torch_event(), 7]}), "traceEvents[1] is a int"),
    ("w.1.pt.trace.json.gz", b"\x1f\x8b\x08\x00garbage, not deflate data", "not a valid gzip file"),
    ("w.1.pt.trace.json.gz", b"plain text in a .gz name", "not a valid gzip file"),
    ("w.1.pt.trace.json.gz", "truncated", "not a valid gzip file"),  # written below: a gzip cut in half
    ("w.1.pt.trace.json", json.dumps({"traceEvents": [
        {"ph": "X", "cat": "blink", "name": "ParseHTML", "ts": 1, "dur": 2, "pid": 1, "tid": 1}]}),
     "not a PyTorch profiler trace"),
    ("w.1.pt.trace.json", "[" * 100_000, "nested deeper than the parser allows"),
    ("w.1.pt.trace.json", '{"traceEvents": [', "not valid JSON"),
]


@pytest.mark.parametrize("name, content, words", BAD_TRACES, ids=[w for _, _, w in BAD_TRACES])
def test_a_bad_trace_gets_a_clear_error(name, content, words, tmp_path, capsys) -> None:
    import gzip

    run = tmp_path / "run"
    run.mkdir()
    path = run / name
    if content == "truncated":
        whole = gzip.compress(json.dumps({"traceEvents": [_torch_event()] * 2000}).encode())
        path.write_bytes(whole[: len(whole) // 2])
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["profile", "--analyze", str(run)]) == 2
    err = capsys.readouterr().err
    assert words in err and str(path) in err and "Traceback" not in err, err


def test_a_gzip_bomb_stops_at_the_limit(tmp_path, capsys) -> None:
    """3 MB of zeros in a few KB of gzip, analysed with a 1 MB limit: refused while inflating."""
    import gzip

    run = tmp_path / "run"
    run.mkdir()
    bomb = run / "w.1.pt.trace.json.gz"
    with gzip.open(bomb, "wb") as fh:
        fh.write(b'{"traceEvents": [], "pad": "' + b"0" * (3 * 2**20) + b'"}')
    assert bomb.stat().st_size < 64 * 1024
    assert main(["profile", "--analyze", str(run), "--max-trace-mb", "1"]) == 2
    err = capsys.readouterr().err
    assert "inflates to more than 1 MB" in err and str(bomb) in err


# -- local DDP ranks: nothing listens beyond loopback ------------------------------------------


def _listening_rank(rank, world, init_method, payload, tick, beat):  # noqa: ANN001, ANN201 - a spawn entry
    """Join the group, then name every TCP socket this rank listens on."""
    import psutil
    import torch.distributed as dist

    from workbench.distributed import join_group, leave_group

    join_group(rank, world, "cpu", init_method)
    dist.barrier()  # every rank's sockets (store, gloo pairs) exist by now
    listening = [c.laddr.ip for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    dist.barrier()
    leave_group()
    return listening


@pytest.mark.slow
def test_local_ranks_listen_on_loopback_only() -> None:
    """The c10d store is unauthenticated: bound to 127.0.0.1, never to every interface."""
    from workbench.distributed import spawn_ranks

    (first, second), _ = spawn_ranks(_listening_rank, None, 2, timeout_s=120)
    assert first, "rank 0 runs the store: it must listen somewhere"
    assert set(first + second) <= {"127.0.0.1", "::1"}, (first, second)


@pytest.mark.slow
def test_a_dataloader_worker_that_dies_is_a_data_loading_error(tmp_path, capsys) -> None:
    """Killed by a signal (as the OOM killer does): named a data-loading error, not a model phase."""
    report = tmp_path / "report.json"
    assert main(["run", str(CASES / "dataloader_worker_dies.py"), "--steps", "5", "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert ", data loading: RuntimeError: DataLoader worker" in err, err
    assert "num_workers=0" in err and " phase:" not in err and "model(" not in err
    error = json.loads(report.read_text())["error"]
    assert error["data_loading"] is True and error["stage"] == "data loading" and error["kind"] == "dataloader_worker"


STREAMS = """
import io, sys
import torch
from torch import nn
from workbench import Scenario

class Broken:
    def write(self, text):
        raise OSError("this stream is broken")
    def flush(self):
        raise OSError("this stream is broken")

class Net(nn.Linear):
    calls = 0
    def forward(self, x):
        Net.calls += 1
        if Net.calls == 2:
            {in_forward}
        return super().forward(x)

def build(device):
    {in_build}
    torch.manual_seed(0)
    model = Net(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
"""


@pytest.mark.slow  # a child process importing torch, with real standard streams
@pytest.mark.parametrize("in_build, in_forward, changed", [
    ("sys.stdout = sys.stderr = Broken()", "pass", "sys.stdout and sys.stderr"),
    ("sys.stdout = io.StringIO()", "pass", "sys.stdout"),
    ("pass", "sys.stdout.close()", "sys.stdout (it closed it)"),
], ids=["broken-in-build", "stringio-in-build", "closed-in-forward"])
def test_a_scenario_that_takes_the_standard_streams_does_not_take_the_run_with_them(
        in_build, in_forward, changed, tmp_path) -> None:
    """The streams were the user code's to break: a finished run ended as a failure (exit 120, or
    an OSError blamed on the run), or printed nothing at all. Now they are put back."""
    import subprocess
    import sys

    scenario = tmp_path / "streams.py"
    scenario.write_text(STREAMS.format(in_build=in_build, in_forward=in_forward))
    report = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "workbench", "run", str(scenario), "--steps", "3", "--json",
                           str(report)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 0, proc.stderr
    assert f"the scenario's code changed {changed}; the workbench put" in proc.stderr
    out = " ".join(proc.stdout.split())
    assert "3 steps, loss" in out and f"report written to {report}" in out
    data = json.loads(report.read_text())
    assert data["summary"]["stopped_by"] == "steps" and data["error"] is None


ALWAYS_RAISES = """
import torch
from torch import nn
from workbench import Scenario

class Net(nn.Linear):
    def forward(self, x):
        raise ValueError("boom in forward")

def build(device):
    model = Net(4, 2)
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=[(torch.randn(8, 4), torch.randint(0, 2, (8,)))])
"""

INTERRUPTS_BUILD = """
def build(device):
    raise KeyboardInterrupt
"""


def test_summary_and_list_name_the_line_that_raised(tmp_path, capsys) -> None:
    raises = tmp_path / "raises.py"
    raises.write_text(ALWAYS_RAISES)
    assert main(["summary", str(raises)]) == 2
    assert f"raised ValueError: boom in forward at {raises}:8" in capsys.readouterr().err
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "stops.py").write_text(INTERRUPTS_BUILD)
    main(["list", str(listed)])
    out = " ".join(capsys.readouterr().out.split())
    assert f"KeyboardInterrupt (at {listed / 'stops.py'}:3)" in out


def test_an_interrupt_raised_from_another_says_where_the_first_was() -> None:
    """profile re-raises its own ProfileInterrupted from the Ctrl-C that came in the user's forward:
    the message said 'interrupted', without the line the user's code was on."""
    from workbench.errors import interrupted_at

    def users_forward() -> None:
        raise KeyboardInterrupt

    try:
        try:
            users_forward()
        except KeyboardInterrupt as first:
            raise KeyboardInterrupt from first
    except KeyboardInterrupt as second:
        said = interrupted_at(second)
    assert said.startswith(f"interrupted at {__file__}:") and said.endswith("in users_forward")


@pytest.mark.slow  # a child process importing torch, with real standard streams
def test_profile_keeps_its_output_when_the_scenario_breaks_the_streams(tmp_path) -> None:
    """The status line's refresh wrote to the scenario's broken stream mid-profile: exit 2 and a
    single line of output."""
    import subprocess
    import sys

    scenario = tmp_path / "streams.py"
    scenario.write_text(STREAMS.format(in_build="sys.stdout = sys.stderr = Broken()", in_forward="pass"))
    proc = subprocess.run([sys.executable, "-m", "workbench", "profile", str(scenario), "--steps", "3",
                           "--logdir", str(tmp_path / "prof")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "step time breakdown" in out and "tensorboard --logdir" in out
