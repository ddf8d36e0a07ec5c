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
