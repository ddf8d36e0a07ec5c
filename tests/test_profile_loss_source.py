"""`workbench profile` says where the loss came from: a model that computes its own loss
(scenarios/transformer_lm.py, ``loss_fn=None``) has the loss inside its forward range, and
the report says so instead of showing the ~0 ms ``loss`` range as the loss's cost."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import SCENARIOS
from workbench.cli import main
from workbench.profiling.analysis import analyze_file, analyze_trace
from workbench.profiling.capture import profile_scenario
from workbench.profiling.options import ProfileOptions
from workbench.profiling.sidecar import METADATA_FILE
from workbench.profiling.trace import LOSS_SOURCE_KEY, read_loss_source
from workbench.report.profile import worker_view
from workbench.scenario import load_source

SMALL = ["--wait", "0", "--warmup", "1", "--active", "2"]


def _profile(scenario: str, logdir: Path) -> tuple[Path, str, dict]:
    out = io.StringIO()
    report = logdir / "analysis.json"
    with contextlib.redirect_stdout(out):
        rc = main(["profile", str(SCENARIOS / scenario), "--device", "cpu", "--logdir", str(logdir),
                   "--run", "r", *SMALL, "--json", str(report)])
    assert rc == 0, out.getvalue()
    return logdir / "r", out.getvalue(), json.loads(report.read_text())


@pytest.fixture(scope="module")
def inside(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    return _profile("transformer_lm.py", tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    return _profile("mlp_digits.py", tmp_path_factory.mktemp("mlp"))


def _trace(run_dir: Path) -> Path:
    (path,) = run_dir.glob("*.pt.trace.json")
    return path


def _render(renderable: object) -> str:
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_sidecar_and_the_trace_record_the_models_own_loss(inside: tuple[Path, str, dict]) -> None:
    run_dir = inside[0]
    meta = json.loads((run_dir / METADATA_FILE).read_text())
    assert meta["loss_source"] == 'outputs["loss"]'  # transformer_lm returns {"loss", "logits"}
    assert meta["loss_inside_model"] is True
    raw = json.loads(_trace(run_dir).read_text())[LOSS_SOURCE_KEY]
    assert raw == "outputs['loss']" and read_loss_source(raw) == 'outputs["loss"]'  # the JSON stays valid


def test_the_analysis_puts_the_loss_inside_forward(inside: tuple[Path, str, dict]) -> None:
    a = analyze_file(_trace(inside[0]))
    assert a.loss_source == 'outputs["loss"]' and a.loss_inside_model
    phases = {m.name: m for m in a.modules if m.kind == "phase"}
    assert "loss the model computes inside its forward" in phases["forward"].note
    assert phases["loss"].note.startswith("inside forward")
    assert phases["backward"].note == "" and phases["optimizer_step"].note == ""
    # The loss range is still measured (and in the JSON as before); it is only the read.
    assert phases["loss"].host_us < phases["forward"].host_us


def test_the_json_keeps_its_fields_and_adds_the_loss_source(inside: tuple[Path, str, dict]) -> None:
    data = inside[2]
    assert data["loss_source"] == 'outputs["loss"]' and data["loss_inside_model"] is True
    (worker,) = data["workers"]
    assert worker["loss_source"] == 'outputs["loss"]' and worker["loss_inside_model"] is True
    loss_row = next(m for m in worker["modules"] if m["kind"] == "phase" and m["name"] == "loss")
    # Every field a reader had before is still there, with a number in it.
    assert {"name", "kind", "calls", "host_us", "self_host_us", "device_us"} <= set(loss_row)
    assert isinstance(loss_row["host_us"], float) and loss_row["note"].startswith("inside forward")
    assert len(worker["steps"]) == 2 and dict(worker["steps"][0]["phases"]).keys() >= {"forward", "loss"}


def test_the_printed_report_says_forward_holds_the_loss(inside: tuple[Path, str, dict]) -> None:
    output = inside[1]
    assert "forward (+ loss inside the model)" in output
    loss_rows = [line for line in output.splitlines() if line.strip("│ ").startswith("loss ")]
    assert loss_rows and all("inside forward" in line for line in loss_rows), loss_rows
    assert 'loss: computed inside the model (outputs["loss"])' in output


def test_a_loss_fn_scenario_reports_as_before(v1: tuple[Path, str, dict]) -> None:
    run_dir, output, data = v1
    meta = json.loads((run_dir / METADATA_FILE).read_text())
    assert meta["loss_source"] == "loss_fn" and meta["loss_inside_model"] is False
    assert data["loss_source"] == "loss_fn" and data["loss_inside_model"] is False
    a = analyze_file(_trace(run_dir))
    assert a.loss_source == "loss_fn" and not a.loss_inside_model
    assert all(m.note == "" for m in a.modules)
    assert "inside the model" not in output and "inside forward" not in output
    # Rendered exactly as an analysis that knows nothing of the loss source (the report before).
    unknown = dataclasses.replace(a, loss_source=None, loss_inside_model=False)
    assert _render(worker_view(a)) == _render(worker_view(unknown))


def test_a_trace_without_the_key_reads_as_not_said(inside: tuple[Path, str, dict]) -> None:
    """Traces written before the key existed (or by another tool) analyse as before."""
    data = json.loads(_trace(inside[0]).read_text())
    del data[LOSS_SOURCE_KEY]
    a = analyze_trace(data)
    assert a.loss_source is None and not a.loss_inside_model
    assert all(m.note == "" for m in a.modules)
    assert "inside forward" not in _render(worker_view(a))



@pytest.mark.filterwarnings("ignore:Profiler won.t be using warmup")  # torch says so for warmup=0
@pytest.mark.parametrize(("wait", "warmup"), [(0, 0), (1, 0), (2, 1)])
def test_every_schedule_writes_the_loss_source_into_the_trace(wait: int, warmup: int, tmp_path: Path) -> None:
    """The loss source is known after step 0's loss, whether step 0 is a wait, warm-up or
    recorded step (Kineto drops metadata added while it is not recording)."""
    scenario = load_source(str(SCENARIOS / "transformer_lm.py")).build("cpu")
    (trace,) = profile_scenario(scenario, tmp_path, ProfileOptions(wait=wait, warmup=warmup, active=1))
    assert analyze_file(trace).loss_source == 'outputs["loss"]'
