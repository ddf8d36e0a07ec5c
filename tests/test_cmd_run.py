"""`workbench run`: exit codes, the JSON report (also on error and interrupt), TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BROKEN, ROOT, SCENARIOS
from workbench.cli import main


def flat(text: str) -> str:
    """Rich wraps at 80 columns under pytest: compare with whitespace collapsed."""
    return " ".join(text.split())

PATHO = BROKEN / "pathologies.py"


def strict_json(path: Path) -> dict:
    def reject(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_healthy_run_prints_layers_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.json"
    assert main(["run", str(SCENARIOS / "mlp_digits.py"), "--steps", "3", "--device", "cpu", "--json", str(out)]) == 0
    text = flat(capsys.readouterr().out)
    assert "layers at step 2" in text and "fc1 (Linear)" in text and "0 errors" in text
    report = strict_json(out)
    assert set(report) >= {"scenario", "device", "steps", "findings", "summary", "error"}
    assert report["scenario"] == "mlp_digits" and report["device"] == "cpu" and report["error"] is None
    assert [s["step"] for s in report["steps"]] == [0, 1, 2]
    step = report["steps"][-1]
    assert {m["name"] for m in step["modules"]} == {"", "fc1", "act", "fc2"}
    assert set(step["phase_seconds"]) == {"forward", "loss", "backward", "optimizer_step"}
    assert step["params"][0]["update_ratio"] > 0 and step["memory"]["rss_bytes"] > 0
    assert report["summary"]["steps_done"] == 3 and report["summary"]["stopped_by"] == "steps"


def test_a_warning_the_loader_found_is_in_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A per-epoch StepLR stepped per batch is found when the scenario loads, before any phase runs.
    from tests import contract_models as cm

    path = cm.write(tmp_path, cm.TIMM_SCHEDULER, "timm.py")
    out = tmp_path / "r.json"
    assert main(["run", f"{path}:build_steplr", "--steps", "2", "--json", str(out)]) == 0
    text = flat(capsys.readouterr().out)
    assert "scenario_config" in text and "1 warning" in text
    report = strict_json(out)
    assert [f["kind"] for f in report["findings"]] == ["scenario_config"]
    assert report["findings"][0]["step"] == 0 and "StepLR(step_size=1)" in report["findings"][0]["message"]
    assert report["summary"]["findings_by_kind"] == {"scenario_config": 1}


def test_error_findings_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    assert main(["run", f"{PATHO}:build_detached", "--steps", "2", "--json", str(out)]) == 1
    assert "no_gradient" in flat(capsys.readouterr().out)
    report = strict_json(out)
    assert {f["parameter"] for f in report["findings"]} == {"unused.weight", "unused.bias"}
    assert report["summary"]["findings_by_severity"] == {"error": 4}


def test_nan_values_are_strict_json(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["run", f"{PATHO}:build_nan_forward", "--steps", "2", "--json", str(out)]) == 1
    report = strict_json(out)
    assert report["steps"][0]["loss"] == "NaN"
    assert report["findings"][0]["kind"] == "nan_inf" and report["findings"][0]["module"] == "1"


def test_a_raising_scenario_exits_2_and_keeps_the_steps_done(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    assert main(["run", str(ROOT / "scenarios/broken/raises_at_step3.py"), "--steps", "6", "--json", str(out)]) == 2
    err = flat(capsys.readouterr().err)
    assert "step 3, forward phase" in err and "raises_at_step3.py:28" in err and "Traceback" in err
    report = strict_json(out)
    assert len(report["steps"]) == 3
    assert report["error"]["type"] == "RuntimeError" and report["error"]["phase"] == "forward"
    assert report["error"]["step"] == 3 and "view(32" in report["error"]["traceback"]
    assert report["summary"]["stopped_by"] == "error"


def test_a_scenario_that_fails_to_load_exits_2_with_json(write_scenario, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    path = write_scenario("def build(device):\n    raise ValueError('no data here')\n", "bad.py")
    out = tmp_path / "r.json"
    assert main(["run", str(path), "--json", str(out)]) == 2
    assert "no data here" in flat(capsys.readouterr().err)
    report = strict_json(out)
    assert report["steps"] == [] and report["error"]["type"] == "ScenarioError"


def test_break_on_stops_before_the_optimizer_step(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    spec = str(ROOT / "scenarios/broken/nan_at_step7.py")
    assert main(["run", spec, "--steps", "20", "--break-on", "nan_inf", "--json", str(out)]) == 1
    printed = flat(capsys.readouterr().out)
    assert "stopped at breakpoint nan_inf at step 7" in printed
    assert "layers at step 7 (paused before its optimizer step)" in printed
    report = strict_json(out)
    hit = report["summary"]["break_hit"]
    assert hit["step"] == 7 and hit["finding"]["module"] == "norm"
    assert len(report["steps"]) == 7 and report["summary"]["stopped_by"] == "breakpoint"
    # Several conditions in one --break-on, comma-separated (the flag may also repeat, and
    # it may come before SCENARIO): the first to hold stops.
    assert main(["run", "--break-on", "nan_inf,step==3", spec, "--steps", "20", "--json", str(out)]) == 1
    assert "stopped at breakpoint step==3 at step 3" in flat(capsys.readouterr().out)


def test_bad_arguments_are_one_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = str(SCENARIOS / "mlp_digits.py")
    assert main(["run", spec, "--break-on", "nan"]) == 2
    assert main(["run", spec, "--break-on", "dead_units,nan"]) == 2  # each of several is checked
    assert "unknown finding kind 'nan'" in flat(capsys.readouterr().err)
    assert main(["run", spec, "--steps", "0"]) == 2
    assert "--steps must be >= 1" in flat(capsys.readouterr().err)
    assert main(["run", spec, "--json", str(tmp_path)]) == 2  # a directory, refused before running
    assert "is a directory" in flat(capsys.readouterr().err)


def test_interrupt_writes_a_partial_report_and_exits_130(write_scenario, tmp_path: Path) -> None:
    path = write_scenario(
        "import torch\nfrom torch import nn\nfrom workbench import Scenario\n"
        "class Stop(nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.fc = nn.Linear(4, 1); self.n = 0\n"
        "    def forward(self, x):\n"
        "        self.n += 1\n"
        "        if self.n == 3:\n            raise KeyboardInterrupt\n"
        "        return self.fc(x)\n"
        "def build(device):\n"
        "    m = Stop()\n"
        "    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]\n"
        "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
        "                    loss_fn=nn.MSELoss(), data=data)\n",
        "stop.py",
    )
    out = tmp_path / "r.json"
    assert main(["run", str(path), "--steps", "10", "--json", str(out)]) == 130
    report = strict_json(out)
    assert len(report["steps"]) == 2 and report["error"]["type"] == "KeyboardInterrupt"
    assert report["summary"]["stopped_by"] == "interrupted"


_STOP_EARLY = {
    # Ctrl-C while the scenario is being built (no engine yet).
    "build": "def build(device):\n    raise KeyboardInterrupt\n",
    # Ctrl-C inside the first batch fetch, before step 0 finished anything.
    "first_batch": (
        "import torch\nfrom torch import nn\nfrom workbench import Scenario\n"
        "class Data:\n    def __iter__(self):\n        raise KeyboardInterrupt\n        yield\n"
        "def build(device):\n"
        "    m = nn.Linear(4, 1)\n"
        "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
        "                    loss_fn=nn.MSELoss(), data=Data())\n"
    ),
}


@pytest.mark.parametrize("when", list(_STOP_EARLY))
def test_an_early_interrupt_still_writes_the_report(when: str, write_scenario, tmp_path: Path, capsys) -> None:
    path = write_scenario(_STOP_EARLY[when], "early.py")
    out = tmp_path / "r.json"
    assert main(["run", str(path), "--steps", "10", "--json", str(out)]) == 130
    assert "partial report (0 steps)" in capsys.readouterr().err
    report = strict_json(out)
    assert report["steps"] == [] and report["summary"]["stopped_by"] == "interrupted"
    assert report["summary"]["steps_done"] == 0 and report["error"]["type"] == "KeyboardInterrupt"
    assert report["scenario"] == "early"
    assert set(tmp_path.iterdir()) == {path, out}  # no temp files left behind


def test_tensorboard_scalars_and_histograms_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    assert main(["run", str(SCENARIOS / "regression_mse.py"), "--steps", "4", "--tensorboard", str(logdir),
                 "--histogram-every", "2"]) == 0
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss", "lr/group0", "grad_norm/total", "grad_norm/0.weight"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [0, 1, 2, 3]
    assert acc.Scalars("lr/group0")[0].value == pytest.approx(1e-2)
    assert {"weights/0.weight", "grads/0.weight"} <= set(tags["histograms"])
    assert [e.step for e in acc.Histograms("grads/0.weight")] == [0, 2]


def test_replay_reruns_the_steps_before_a_breakpoint_with_full_stats(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """Stats every 16th step are cheap but blind at step 7: the loss is NaN and nothing says where.
    --replay rewinds 3 step starts and runs them again measured; the root module is found."""
    out = tmp_path / "r.json"
    spec = str(ROOT / "scenarios/broken/nan_at_step7.py")
    assert main(["run", spec, "--every", "16", "--steps", "30", "--break-on", "nan_inf", "--replay", "3",
                 "--json", str(out)]) == 1
    printed = flat(capsys.readouterr().out)
    assert "replayed steps 5..7 with full stats; the breakpoint fired again at step 7" in printed
    assert "layers at step 7 (paused before its optimizer step)" in printed
    report = strict_json(out)
    first = [(s["step"], s["measured"]) for s in report["steps"] if not s["replayed"]]
    again = [(s["step"], s["measured"]) for s in report["steps"] if s["replayed"]]
    assert first == [(0, True)] + [(i, False) for i in range(1, 7)]
    assert again == [(5, True), (6, True)]  # step 7 pauses before its optimizer step: no record yet
    summary = report["summary"]
    assert summary["steps_done"] == 7 and summary["replayed_steps"] == 2
    assert summary["break_hit"]["finding"]["module"] == "norm"
    kinds = {(f["step"], f["kind"], f["module"]) for f in report["findings"]}
    assert (7, "nan_inf", "norm") in kinds  # found only by the measured replay
    blind = [f for f in report["findings"] if f["kind"] == "nan_inf" and f["module"] == ""]
    assert blind and "were not measured" in blind[0]["message"]  # the first pass says it could not tell


def test_replay_needs_a_breakpoint(capsys: pytest.CaptureFixture) -> None:
    spec = str(SCENARIOS / "mlp_digits.py")
    assert main(["run", spec, "--replay", "3"]) == 2
    assert "give a --break-on condition too" in capsys.readouterr().err
    assert main(["run", spec, "--replay", "0", "--break-on", "nan_inf"]) == 2
    assert "--replay must be >= 1" in capsys.readouterr().err


NAN_TARGET = """
import torch
from torch import nn
from workbench.scenario import Scenario

def build(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(device)
    x, y = torch.randn(8, 16, 4), torch.randn(8, 16, 1)
    y[5, 3] = float("nan")  # a bad label in batch 5: finite outputs, NaN loss
    return Scenario(model=model, data=[(x[i], y[i]) for i in range(8)], loss_fn=nn.MSELoss(),
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.01))
"""


def test_a_replayed_finding_replaces_the_blind_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "nan_target.py"
    spec.write_text(NAN_TARGET)
    out = tmp_path / "r.json"
    assert main(["run", str(spec), "--every", "16", "--steps", "8", "--break-on", "nan_inf", "--replay", "2",
                 "--json", str(out)]) == 1
    capsys.readouterr()
    listed = strict_json(out)["findings"]
    # The NaN target is the root; the NaN loss is listed under it (its consequence).
    (root,) = [f for f in listed if f["kind"] == "non_finite_data"]
    assert root["step"] == 5 and root["replayed"] is True and "sample 3" in root["message"]
    (nan,) = [c for f in listed for c in (f, *f["consequences"]) if c["kind"] == "nan_inf"]
    assert nan["step"] == 5 and nan["cause"] == "non_finite_data"
    assert "from finite model outputs" in nan["message"]  # the measured replay could tell; the first pass could not
