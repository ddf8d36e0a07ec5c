"""`workbench check`: one table, exit codes, JUnit XML; the bundled scenarios pass."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import ROOT, SCENARIOS
from workbench.cli import main


def flat(text: str) -> str:
    """Rich wraps at 80 columns under pytest: compare with whitespace collapsed."""
    return " ".join(text.split())
from workbench.scenario import discover


@pytest.fixture
def mixed_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(SCENARIOS / "mlp_digits.py", d / "mlp_digits.py")
    shutil.copy(ROOT / "scenarios/broken/detached_branch.py", d / "detached_branch.py")
    return d


@pytest.mark.slow
def test_error_findings_exit_1_with_junit(mixed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junit, report = tmp_path / "junit.xml", tmp_path / "check.json"
    assert main(["check", str(mixed_dir), "--steps", "3", "--junit", str(junit), "--json", str(report)]) == 1
    out = flat(capsys.readouterr().out)
    assert "mlp_digits" in out and "detached_branch" in out and "1 ok, 1 with error findings, 0 failed" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["mlp_digits"].find("failure") is None
    failure = cases["detached_branch"].find("failure")
    assert failure is not None and "no_gradient" in failure.text and "context.0.weight" in failure.text
    data = json.loads(report.read_text())
    assert {r["label"]: r["status"] for r in data["results"]} == {"mlp_digits": "ok", "detached_branch": "findings"}


@pytest.mark.slow
def test_a_failure_wins_exit_2(mixed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(ROOT / "scenarios/broken/raises_at_step3.py", mixed_dir / "raises_at_step3.py")
    (mixed_dir / "syntax.py").write_text("def build(device):\n    return (\n")
    junit = tmp_path / "junit.xml"
    assert main(["check", str(mixed_dir), "--steps", "5", "--junit", str(junit)]) == 2
    out = flat(capsys.readouterr().out)
    assert "FAILED" in out and "2 failed" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("errors") == "2" and suite.get("failures") == "1"
    errors = {c.get("name"): c.find("error") for c in suite.iter("testcase")}
    assert "step 3, forward phase" in errors["raises_at_step3"].get("message")
    assert "syntax error" in errors["syntax"].get("message")


def test_single_files_and_functions(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", f"{SCENARIOS}/binary_bce.py:build_logits", str(SCENARIOS / "regression_mse.py"),
                 "--steps", "3"]) == 0
    assert "binary_bce:build_logits" in flat(capsys.readouterr().out)


def test_check_does_not_recurse_into_broken() -> None:
    labels = {s.label for s in discover(SCENARIOS)}
    assert not any("broken" in label or "raises" in label for label in labels)
    assert (SCENARIOS / "broken" / "nan_at_step7.py").exists()


@pytest.mark.slow
def test_bundled_scenarios_pass(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junit = tmp_path / "junit.xml"
    assert main(["check", str(SCENARIOS), "--junit", str(junit)]) == 0, flat(capsys.readouterr().out)
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert int(suite.get("tests")) == len(discover(SCENARIOS))


def test_warnings_only_is_warn_with_the_first_warning(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """dead_relu has warning findings only: `warn` and its first warning, exit 0 (1 with --strict)."""
    monkeypatch.setenv("COLUMNS", "200")
    junit = tmp_path / "junit.xml"
    dead = str(ROOT / "scenarios/broken/dead_relu.py")
    assert main(["check", dead, "--steps", "3", "--junit", str(junit)]) == 0
    out = flat(capsys.readouterr().out)
    assert "warn" in out and "dead_units on hidden.act at step 0" in out and "1 with warnings only" in out
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "0"
    assert main(["check", dead, "--steps", "3", "--strict", "--junit", str(junit)]) == 1
    failure = ET.parse(junit).getroot().find("testsuite").find("testcase").find("failure")
    assert failure is not None and "dead_units" in failure.text


def test_files_discovery_passes_over_are_named(mixed_dir: Path, capsys: pytest.CaptureFixture) -> None:
    # A helper beside the scenarios is not a scenario, but check says it looked at it and why
    # it ran nothing from it: a scenario whose build was renamed cannot vanish from CI unseen.
    (mixed_dir / "utils.py").write_text("def make_layers(n):\n    return n\n")
    main(["check", str(mixed_dir / "mlp_digits.py"), "--steps", "1"])  # a file: nothing skipped
    assert "skipped" not in capsys.readouterr().out
    (mixed_dir / "detached_branch.py").unlink()
    assert main(["check", str(mixed_dir), "--steps", "1"]) == 0
    out = flat(capsys.readouterr().out)
    assert "skipped" in out and "utils.py: no top-level `build`" in out
