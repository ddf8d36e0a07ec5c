"""Golden-output tests for the headless tables: fixed inputs in, the exact text out.

The inputs are files (a bench run's JSON, step records written by a real engine run)
or deterministic builds (a bundled scenario's summary, a synthetic GPU trace), so a
change in formatting shows as a diff here. An intended change: rerun with
``pytest tests/test_golden_tables.py --overwrite-golden``, read the diff, commit.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import GOLDEN, SCENARIOS
from tests.test_profiling import gpu_trace

WIDTH = 110


def _text(*renderables: object) -> str:
    console = Console(width=WIDTH, record=True, file=io.StringIO(), color_system=None)
    for r in renderables:
        console.print(r)
    return console.export_text()


@pytest.mark.parametrize("name", ["mlp_digits", "lstm_text", "transformer_lm"])
def test_summary_table(name: str, golden) -> None:  # noqa: ANN001
    from workbench.engine.summary import summarize
    from workbench.report.summary import summary_renderable
    from workbench.scenario import load_source

    scenario = load_source(str(SCENARIOS / f"{name}.py")).build("cpu")
    golden(f"summary_{name}", _text(summary_renderable(summarize(scenario), None)))


def test_bench_tables(golden) -> None:  # noqa: ANN001
    from workbench.bench.results import load_run
    from workbench.report.bench import render_run

    golden("bench_mlp_digits", _text(render_run(load_run(GOLDEN / "bench_mlp_digits.json"))))


def test_profile_worker_view_and_advice(golden) -> None:  # noqa: ANN001
    from workbench.profiling.advice import recommend
    from workbench.profiling.analysis import analyze_trace
    from workbench.report.profile import recommendations_view, worker_view

    analysis = analyze_trace(gpu_trace(), path="trace.pt.trace.json", run="run", worker="host_rank0")
    golden("profile_gpu_trace", _text(worker_view(analysis), recommendations_view(recommend(analysis), "scn",
                                                                                  on_gpu=True)))


@pytest.mark.parametrize("name", ["nan_at_step7", "dead_relu"])
def test_run_tables(name: str, golden) -> None:  # noqa: ANN001
    from workbench.engine.records import Finding, StepRecord
    from workbench.report.run import findings_table, layer_table, param_table
    from workbench.session.protocol import from_json

    data = json.loads(Path(GOLDEN / f"{name}_record.json").read_text(encoding="utf-8"))
    record = from_json(StepRecord, data["record"])
    findings = [from_json(Finding, f) for f in data["findings"]]
    golden(f"run_{name}", _text(layer_table(record), param_table(record), findings_table(findings)))
