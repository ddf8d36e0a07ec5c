"""Each health rule fires on the right module of a broken model, and not on healthy ones."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import BROKEN, SCENARIOS
from workbench.engine.records import SILENT_BUG_KINDS
from workbench.engine import FINDING_KINDS, Engine, EngineConfig, Finding, HealthThresholds, Phase
from workbench import Scenario
from workbench.scenario import discover, load

PATHO = BROKEN / "pathologies.py"


def findings_of(kind: str, steps: int = 8, **config) -> list[Finding]:
    with Engine(load(f"{PATHO}:build_{kind}"), EngineConfig(**config)) as eng:
        out = eng.run(steps)
        assert out.stopped_by == "steps", out.error
        return list(eng.findings)


def first(findings: list[Finding], kind: str) -> Finding:
    matches = [f for f in findings if f.kind == kind]
    assert matches, f"no {kind} finding in {[(f.kind, f.where) for f in findings]}"
    return matches[0]


def test_nan_in_forward_points_at_the_root_module_not_downstream() -> None:
    found = findings_of("nan_forward", steps=2)
    f = first(found, "nan_inf")
    assert (f.step, f.phase, f.module, f.severity) == (0, Phase.FORWARD, "1", "error")
    assert "finite inputs" in f.message
    # Only the root is reported for step 0, not the Linear after it or the whole model.
    assert [x.module for x in found if x.kind == "nan_inf" and x.step == 0] == ["1"]
    assert first(found, "loss_divergence").step == 0
    # Step 1: the first Linear's weights were poisoned by step 0's update.
    step1 = [x for x in found if x.kind == "nan_inf" and x.step == 1]
    assert step1[0].module == "0" and "own parameters" in step1[0].message


def test_nan_in_backward_only_names_the_module_whose_backward_made_it() -> None:
    found = findings_of("nan_backward", steps=1)
    f = first(found, "nan_inf")
    assert (f.phase, f.module) == (Phase.BACKWARD, "2")
    assert "BadBackward" in f.message


def test_nan_in_the_batch_is_blamed_on_the_data() -> None:
    f = first(findings_of("nan_input", steps=1), "nan_inf")
    assert f.module == "0" and "batch" in f.message


def test_dead_relu() -> None:
    f = first(findings_of("dead_relu", steps=1), "dead_units")
    assert (f.module, f.severity, f.value) == ("1", "warning", 1.0)


def test_detached_branch_has_no_gradient() -> None:
    found = findings_of("detached", steps=1)
    assert {(f.parameter, f.severity) for f in found if f.kind == "no_gradient"} == {
        ("unused.weight", "error"), ("unused.bias", "error")}
    assert not [f for f in found if f.parameter and f.parameter.startswith("used")]


def test_detached_branch_is_found_on_unmeasured_steps_too() -> None:
    found = findings_of("detached", steps=3, stats_every=100)
    assert {f.step for f in found if f.kind == "no_gradient"} == {0, 1, 2}


def test_exploding_gradient() -> None:
    found = findings_of("exploding", steps=1)
    total = [f for f in found if f.kind == "exploding_gradient" and f.parameter is None]
    assert total and total[0].value > 1e3 and total[0].severity == "error"


def test_exploding_gradient_spike_against_the_running_average() -> None:
    # Below the absolute limit, the outlier batch 6 is still caught as a jump.
    found = findings_of("spike", steps=8, thresholds=HealthThresholds(grad_norm_abs=1e30))
    spikes = [f for f in found if f.kind == "exploding_gradient"]
    assert spikes and min(f.step for f in spikes) == 6  # (step 7 follows: step 6 wrecked the weights)
    assert "running average" in spikes[0].message


def test_the_saturation_band_threshold_decides_what_counts_as_pinned() -> None:
    # Pre-activations of about +-3: sigmoid outputs within ~5% of a bound, never within 0.1%.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Sigmoid(), torch.nn.Linear(64, 1))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.where(torch.arange(64) % 2 == 0, 3.0, -3.0))
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def saturation(band: float) -> float | None:
        net = copy.deepcopy(model)
        scenario = Scenario(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                            loss_fn=torch.nn.MSELoss(), data=[(x, y)], seed=0)
        with Engine(scenario, EngineConfig(thresholds=HealthThresholds(saturation_band=band))) as eng:
            eng.advance()
            return next(m for m in eng.current.modules if m.name == "1").saturated_fraction

    assert saturation(1e-3) == 0.0
    assert saturation(0.06) == 1.0  # sigmoid(3) = 0.953: inside a 6% band of the top bound


def test_saturated_sigmoid() -> None:
    f = first(findings_of("saturated", steps=1), "saturated_activations")
    assert f.module == "1" and f.value > 0.9


def test_vanishing_gradient_in_a_deep_sigmoid_stack() -> None:
    # Reported once it lasts (3 measured steps) and the SGD updates stay tiny too.
    assert not [f for f in findings_of("vanishing", steps=2) if f.kind == "vanishing_gradient"]
    found = findings_of("vanishing", steps=3)
    modules = {f.module for f in found if f.kind == "vanishing_gradient"}
    assert "0" in modules and "24" not in modules  # the first layers starve, the head learns
    assert {f.step for f in found if f.kind == "vanishing_gradient"} == {2}


def test_tiny_and_huge_updates() -> None:
    tiny = first(findings_of("tiny_updates", steps=3), "tiny_updates")
    assert tiny.step == 2  # once it lasts 3 measured steps
    assert tiny.phase is Phase.OPTIMIZER_STEP and tiny.value < 1e-8
    huge = first(findings_of("huge_updates", steps=8), "huge_updates")
    assert huge.value > 1.0 and huge.step >= HealthThresholds().warmup_steps


def test_loss_divergence() -> None:
    f = first(findings_of("diverging", steps=12), "loss_divergence")
    assert f.severity == "error" and f.step >= HealthThresholds().loss_window - 1


@pytest.mark.slow
def test_every_kind_is_covered_by_a_broken_model() -> None:
    kinds = set()
    for name in ("nan_forward", "dead_relu", "detached", "exploding", "saturated", "vanishing",
                 "tiny_updates", "huge_updates", "diverging"):
        kinds |= {f.kind for f in findings_of(name, steps=8)}
    assert kinds == set(FINDING_KINDS) - set(SILENT_BUG_KINDS)  # those: tests/test_diagnosis.py


@pytest.mark.slow
def test_batchnorm_cancelled_bias_is_info_once_not_a_warning() -> None:
    with Engine(load(f"{SCENARIOS}/cnn_image.py:build_batchnorm")) as eng:
        eng.run(8)
        found = list(eng.findings)
    assert {(f.parameter, f.severity) for f in found} <= {("features.0.bias", "info"), ("features.4.bias", "info")}
    assert len(found) == len({f.parameter for f in found})


def _healthy(label: str, steps: int) -> list[Finding]:
    src = next(s for s in discover(SCENARIOS) if s.label == label)
    with Engine(src.build("cpu")) as eng:
        out = eng.run(steps)
        assert out.stopped_by == "steps", out.error
        return [f for f in eng.findings if f.severity != "info"]


SMALL = ["mlp_digits", "collab_filter", "regression_mse", "binary_bce", "binary_bce:build_logits"]
QUICK = {"mlp_digits", "collab_filter"}  # the rest take several seconds each: the full suite runs them


@pytest.mark.parametrize("label", [s if s in QUICK else pytest.param(s, marks=pytest.mark.slow) for s in SMALL])
def test_small_bundled_scenarios_are_healthy_for_40_steps(label: str) -> None:
    assert _healthy(label, 40) == []


LARGE = ["lstm_text", "cnn_image", "cnn_image:build_batchnorm", "gru_bidirectional", "resnet_tiny", "transformer_lm",
         "hf_style"]


@pytest.mark.slow
@pytest.mark.parametrize("label", LARGE)
def test_large_bundled_scenarios_are_healthy_for_40_steps(label: str) -> None:
    if label == "hf_style":
        pytest.importorskip("transformers")
    assert _healthy(label, 40) == []


def test_every_bundled_scenario_is_covered() -> None:
    labels = {s.label for s in discover(SCENARIOS)}
    assert labels == set(SMALL) | set(LARGE)
