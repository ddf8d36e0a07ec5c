"""Headless output piped to a file or a program stays readable: rich's 80-column fallback
cropped numbers, finding kinds and the `try` commands of the profile advice."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from workbench.report.text import HEADLESS_WIDTH, plain_console


def test_not_a_terminal_prints_wide_unless_columns_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert plain_console(file=io.StringIO()).width == HEADLESS_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert plain_console(file=io.StringIO()).width == 100


def test_check_table_keeps_kinds_and_times_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.report.run import CheckResult, check_table

    monkeypatch.delenv("COLUMNS", raising=False)
    results = [CheckResult(label=f"scenario_with_a_long_name_{i}:build_variant", path="x.py", status="warn",
                           steps=20, seconds=9.1456, final_loss=0.00123, errors=0, warnings=3,
                           first_problem="grad_clipping on encoder.layers.0 at step 4 (norm 812.4 > max 1.0)")
               for i in range(3)]
    console = plain_console(file=io.StringIO())
    console.print(check_table(results))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "9145.6 ms" in out and "…" not in out
    assert "grad_clipping on encoder.layers.0 at step 4" in out


def test_profile_try_commands_are_never_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_profiling import gpu_trace
    from workbench.profiling.advice import recommend
    from workbench.profiling.analysis import analyze_trace
    from workbench.report.profile import recommendations_view

    monkeypatch.delenv("COLUMNS", raising=False)
    analysis = analyze_trace(gpu_trace(), path="trace.pt.trace.json", run="run", worker="host_rank0")
    recs = recommend(analysis)
    target = "scenarios/a_rather_long_directory_name/mlp_digits.py"
    console = plain_console(file=io.StringIO())
    console.print(recommendations_view(recs, target, on_gpu=True))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    commands = [c for c in (r.command(target) for r in recs) if c]
    assert commands
    for cmd in commands:
        assert cmd in out, f"{cmd!r} is not on one line of:\n{out}"


def test_list_static_piped_shows_each_entry_point_whole() -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "workbench", "list", "--static", "scenarios/"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    # Each build's own description (as `workbench list` shows after building), not the module docstring.
    assert "LeakyReLU MLP, Sigmoid + BCELoss on two spirals, SGD" in out
    assert "LeakyReLU MLP, BCEWithLogitsLoss on two spirals, SGD + StepLR" in out
    assert "the CNN with BatchNorm2d, in-place ReLU and Dropout, Adam" in out
    assert "transformers BertForSequenceClassification from a tiny BertConfig (no download), dict batches" in out
