"""Silent training bugs: each diagnosis rule fires on its own small broken model, with the cause,
the number and what to try in the message; healthy look-alikes stay quiet for 40 steps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import BROKEN
from workbench.engine import Engine, EngineConfig, Finding, Phase
from workbench.engine.records import SILENT_BUG_KINDS, collapse_findings
from workbench.scenario import load

BUGS = BROKEN / "silent_bugs.py"
CONTROLS = Path(__file__).resolve().parent / "healthy_scenarios" / "controls.py"


def run(name: str, steps: int = 40, path: Path = BUGS, **config) -> list[Finding]:
    with Engine(load(f"{path}:build_{name}"), EngineConfig(**config)) as eng:
        out = eng.run(steps)
        assert out.stopped_by == "steps", out.error
        return list(eng.findings)


def only(findings: list[Finding], kind: str) -> Finding:
    matches = [f for f in findings if f.kind == kind]
    assert len(matches) == 1, f"expected one {kind}, got {[(f.kind, f.where, f.step) for f in findings]}"
    return matches[0]


# -- probabilities fed to a loss that expects logits ------------------------------------------
@pytest.mark.parametrize(("name", "source", "loss"), [
    ("softmax_into_cross_entropy", "softmax", "CrossEntropyLoss"),
    ("sigmoid_into_bce_with_logits", "sigmoid", "BCEWithLogitsLoss"),
    ("softmax_into_nll", "softmax", "NLLLoss"),
])
def test_probabilities_into_a_logits_loss_is_an_error_naming_both(name: str, source: str, loss: str) -> None:
    f = only(run(name, steps=3), "probabilities_as_logits")
    assert (f.step, f.phase, f.severity) == (0, Phase.LOSS, "error")
    assert source in f.message and loss in f.message and "logits" in f.message
    assert f.value is not None and 0 < f.value <= 1.0  # the largest value it received: a probability
    if source == "softmax":
        assert "rows summing to 1" in f.message


# -- loss inputs that broadcast ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["broadcast_mse", "broadcast_manual"])
def test_loss_inputs_that_broadcast_name_both_shapes(name: str) -> None:
    found = run(name, steps=6)  # past the steps whose loss calls are watched
    f = only(found, "loss_broadcast")
    assert (f.step, f.severity) == (0, "error")
    assert "(64, 1)" in f.message and "(64,)" in f.message and "(64, 64)" in f.message
    assert f.value == 64 * 64 and f.threshold == 64
    # torch's own once-per-process warning is folded into that finding, not a second one.
    assert not [x for x in found if x.kind == "loss_warning"]


def test_a_library_warning_inside_the_loss_becomes_a_finding() -> None:
    with pytest.warns(UserWarning, match="label smoothing"):  # still reaches the user's own filters
        f = only(run("loss_warning", steps=3), "loss_warning")
    assert f.severity == "warning" and f.phase is Phase.LOSS
    assert "UserWarning" in f.message and "label smoothing ignored" in f.message and "silent_bugs.py" in f.message


def test_a_loss_warning_first_raised_on_an_unwatched_step_becomes_a_finding_once() -> None:
    # Steps 3.. are not watched (no TorchFunctionMode, no catch_warnings): the warning is seen
    # as it is shown, under the filters the user has, and said once.
    with pytest.warns(UserWarning, match="clipped"):
        found = run("late_loss_warning", steps=12)
    f = only(found, "loss_warning")
    assert f.step == 6 and "targets past the last class were clipped" in f.message and "silent_bugs.py" in f.message


# -- non-finite data -----------------------------------------------------------------------------
def test_a_nan_target_is_a_data_finding_with_batch_and_sample_and_the_nan_loss_is_grouped_under_it() -> None:
    found = run("nan_target", steps=6)
    f = only(found, "non_finite_data")
    assert (f.step, f.severity, f.module) == (2, "error", "")
    assert "batch 2" in f.message and "sample 17" in f.message and "targets" in f.message
    later = [x for x in found if x.step >= 2 and x is not f]
    assert later and all(x.cause == "non_finite_data" for x in later)
    assert not [x for x in found if x.step < 2]
    collapsed = collapse_findings(found)
    assert [c.kind for c in collapsed] == ["non_finite_data"]
    assert {c.kind for c in collapsed[0].consequences} == {"nan_inf", "loss_divergence"}


def test_nan_and_inf_inputs_name_the_samples_not_a_module() -> None:
    found = run("nan_input", steps=3)
    f = only(found, "non_finite_data")
    assert f.step == 1 and "inputs" in f.message and "samples 5, 40" in f.message
    assert "1 NaN, 1 Inf" in f.message
    module_nan = [x for x in found if x.kind == "nan_inf" and x.step == 1]
    assert module_nan and all(x.cause == "non_finite_data" for x in module_nan)


# -- unnormalised inputs -------------------------------------------------------------------------
def test_raw_pixels_into_a_conv() -> None:
    f = only(run("raw_pixels", steps=3), "unnormalised_inputs")
    assert (f.step, f.module, f.severity) == (0, "0", "warning")
    assert f.value is not None and f.value > 100 and "0-255 pixels" in f.message and "255" in f.message


def test_features_on_a_large_scale_into_a_linear() -> None:
    f = only(run("unscaled_features", steps=3), "unnormalised_inputs")
    assert f.module == "0" and f.value is not None and f.value > 100
    assert "standardise" in f.message and "pixels" not in f.message


# -- parameters the optimizer does not own -------------------------------------------------------
def test_parameters_outside_every_param_group_are_an_error_not_tiny_updates() -> None:
    found = run("unowned_head", steps=8)
    f = only(found, "unowned_parameters")
    assert (f.step, f.module, f.severity) == (0, "head", "error")
    assert "'head.weight'" in f.message and "'head.bias'" in f.message and "add_param_group" in f.message
    assert not [x for x in found if x.kind == "tiny_updates"]


# -- learning-rate collapse ----------------------------------------------------------------------
def test_a_per_epoch_scheduler_stepped_per_batch_collapses_the_lr() -> None:
    found = run("lr_collapse", steps=12)
    f = only(found, "lr_collapse")
    assert f.severity == "warning" and f.step == 2
    assert "StepLR" in f.message and "gamma=0.1" in f.message and "0.1 (step 0) -> 0.01 (step 1)" in f.message
    assert "per epoch" in f.message
    # The tiny updates that follow are the collapse's consequences.
    tiny = [x for x in found if x.kind == "tiny_updates"]
    assert all(x.cause == "lr_collapse" for x in tiny)


# -- no learning progress ------------------------------------------------------------------------
@pytest.mark.slow
def test_no_progress_names_the_window_and_chance_level() -> None:
    f = only(run("no_progress", steps=30), "no_progress")
    assert f.severity == "warning" and f.step == 19
    assert "steps 10-19" in f.message and "steps 0-9" in f.message and "ln 5" in f.message


# -- weight decay overwhelming learning ---------------------------------------------------------
def test_weight_decay_that_outweighs_the_gradient_names_both_magnitudes() -> None:
    found = run("weight_decay", steps=25)
    f = only(found, "weight_decay_dominates")
    assert f.severity == "warning" and f.step == 19 and f.value is not None and f.value >= 0.5
    assert "wd*||w||" in f.message and "||g||" in f.message and "shrank from" in f.message
    assert "Lower" in f.message and "weight_decay" in f.message
    # The stalled loss is its consequence, grouped under it.
    stalled = only(found, "no_progress")
    assert stalled.cause == "weight_decay_dominates"
    assert [c.kind for c in collapse_findings(found)[0].consequences] == ["no_progress"]


# -- oscillating loss ----------------------------------------------------------------------------
def test_an_oscillating_loss_suggests_a_lower_learning_rate() -> None:
    found = run("oscillating", steps=24)
    f = only(found, "oscillating_loss")
    assert f.severity == "warning" and f.value is not None and f.value >= 0.5
    assert "100% of the steps" in f.message and "lower the learning rate" in f.message
    assert not [x for x in found if x.kind == "loss_divergence"]  # said before any divergence
    assert all(x.cause == "oscillating_loss" for x in found if x.kind == "huge_updates" and x.step > f.step)


@pytest.mark.slow
def test_two_batches_of_different_difficulty_alternating_is_not_oscillation() -> None:
    # The RNN scenario's two batches have losses 1.1 and 2.4: they alternate every step.
    assert not [f for f in run("rnn_through_time", steps=30) if f.kind == "oscillating_loss"]


# -- exploding gradients through time ------------------------------------------------------------
def test_exploding_gradients_through_time_are_named_on_the_recurrent_layer() -> None:
    found = run("rnn_through_time", steps=3)
    f = [x for x in found if x.kind == "exploding_through_time"][0]
    assert (f.step, f.module, f.severity) == (0, "rnn", "error") and f.value is not None and f.value > 1e3
    assert "recurrent layer 'rnn' (RNN)" in f.message and "through time" in f.message
    assert "clip_grad_norm_" in f.message and "LSTM/GRU" in f.message
    # The generic per-parameter and total-norm findings are its consequences.
    generic = [x for x in found if x.kind == "exploding_gradient"]
    assert generic and all(x.cause == "exploding_through_time" for x in generic)
    top = collapse_findings(found)
    assert [t.kind for t in top if t.kind.startswith("exploding")] == ["exploding_through_time"]


@pytest.mark.slow
def test_every_silent_bug_kind_has_a_scenario() -> None:
    kinds: set[str] = set()
    for name in ("softmax_into_cross_entropy", "broadcast_mse", "loss_warning", "nan_target", "raw_pixels",
                 "unowned_head", "lr_collapse", "no_progress", "weight_decay", "oscillating", "rnn_through_time"):
        kinds |= {f.kind for f in run(name, steps=24)}
    assert set(SILENT_BUG_KINDS) <= kinds


# -- healthy controls ----------------------------------------------------------------------------
CONTROL_NAMES = ["logsoftmax_nll", "sigmoid_bce", "logits_cross_entropy", "transformer_encoder", "gru",
                 "sgd_warmup_cosine", "regression", "layerscale_adamw", "layerscale_sgd"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CONTROL_NAMES)
def test_healthy_controls_raise_nothing_over_40_steps(name: str) -> None:
    found = [f for f in run(name, steps=40, path=CONTROLS) if f.severity != "info"]
    assert found == [], [(f.kind, f.where, f.step, f.message) for f in found]


def test_layerscale_gradients_are_tiny_at_step_0_yet_not_vanishing() -> None:
    with Engine(load(f"{CONTROLS}:build_layerscale_sgd")) as eng:
        record = eng.step_once()
    fc1 = record.param("blocks.0.fc1.weight")
    assert fc1 is not None and fc1.grad_norm / fc1.weight_norm < 1e-7  # what used to be reported
    assert not [f for f in record.findings if f.kind in ("vanishing_gradient", "tiny_updates")]


# -- collapsing ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_consecutive_repeats_collapse_into_one_with_a_step_range() -> None:
    found = run("nan_input", steps=20)
    assert len(found) > 30
    collapsed = collapse_findings(found)
    # The bad batch comes back once per epoch (4 batches): one root each time, its NaN episode under it.
    assert [(c.kind, c.step) for c in collapsed] == [("non_finite_data", s) for s in (1, 5, 9, 13, 17)]
    first = collapsed[0]
    assert [(c.kind, c.module, c.steps) for c in first.consequences] == [
        ("nan_inf", "0", "1-4 (4x)"), ("loss_divergence", "", "1-4 (4x)")]
    assert sum(c.count for r in collapsed for c in (r, *r.consequences)) == len(found)


def test_collapse_keeps_separate_runs_apart_and_gaps_within_the_stats_interval() -> None:
    f = Finding(0, Phase.FORWARD, "fc", None, "dead_units", "warning", 1.0, 0.5, "dead")
    at = [replace(f, step=s) for s in (0, 1, 2, 5, 6)]
    runs = collapse_findings(at)
    assert [(r.step, r.last_step, r.count) for r in runs] == [(0, 2, 3), (5, 6, 2)]
    assert [(r.step, r.count) for r in collapse_findings(at, gap=3)] == [(0, 5)]
    other = replace(f, module="fc2", step=1)
    assert [r.module for r in collapse_findings([at[0], other, at[1]])] == ["fc", "fc2"]


# -- the collapsed findings in the JSON report and the run output --------------------------------
def test_run_report_lists_a_nan_episode_as_its_root_with_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from workbench.cli import main

    out = tmp_path / "report.json"
    assert main(["run", f"{BUGS}:build_nan_target", "--steps", "12", "--device", "cpu", "--json", str(out)]) == 1
    text = " ".join(capsys.readouterr().out.split())
    report = json.loads(out.read_text())
    listed = report["findings"]
    roots = [f for f in listed if f["kind"] == "non_finite_data"]
    assert [f["step"] for f in roots] == [2]  # later the model itself is NaN: no more data to blame
    first = roots[0]
    assert first["count"] == 1 and first["cause"] is None and first["last_step"] == 2
    follow = {(c["kind"], c["module"]): c for c in first["consequences"]}
    assert follow[("loss_divergence", "")]["count"] == 10 and follow[("loss_divergence", "")]["last_step"] == 11
    assert len(listed) == 1  # 12 steps of NaN: one entry
    assert all(c["cause"] == "non_finite_data" for c in first["consequences"])
    # Every finding is either listed or folded under a listed one; the summary still counts them all.
    folded = sum(f["count"] + sum(c["count"] for c in f["consequences"]) for f in listed)
    assert folded == sum(report["summary"]["findings_by_kind"].values())
    assert {"step", "phase", "module", "parameter", "kind", "severity", "value", "threshold", "message"} <= set(first)
    # The table: one row for the data, the NaN loss under it.
    assert "non_finite_data" in text and "then nan_inf" in text and "loss_divergence" in text


def test_the_readme_findings_table_lists_every_kind_with_its_severity() -> None:
    import re

    from tests.conftest import ROOT
    from workbench.engine.records import FINDING_KINDS, SETUP_KINDS

    text = (ROOT / "README.md").read_text()
    table = text[text.index("| kind | severity |"):].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([a-z, ]+) \|", table, re.M))
    assert set(rows) == set(FINDING_KINDS) | set(SETUP_KINDS)
    assert rows["non_finite_data"] == "error" and rows["oscillating_loss"] == "warning"


def test_a_new_kind_is_a_breakpoint_condition() -> None:
    from workbench.engine import Breakpoint

    with Engine(load(f"{BUGS}:build_nan_target"), EngineConfig(breakpoints=(Breakpoint.parse("non_finite_data"),))) as eng:
        out = eng.run(10)
    assert out.stopped_by == "breakpoint" and out.break_hit is not None
    assert out.break_hit.step == 2 and out.break_hit.finding is not None
    assert out.break_hit.finding.kind == "non_finite_data"


def test_a_rewind_replays_the_window_rules_from_their_saved_state() -> None:
    with Engine(load(f"{BUGS}:build_lr_collapse"), EngineConfig(snapshots=4)) as eng:
        eng.run(4)
        first = [(f.kind, f.step, f.message) for f in eng.findings if f.kind == "lr_collapse"]
        eng.rewind(3)
        eng.run(3)
        again = [(f.kind, f.step, f.message) for f in eng.findings if f.kind == "lr_collapse"]
    assert first and again == first


def test_a_loss_that_never_moves_is_stalled_even_with_no_minimum_gain() -> None:
    from workbench.engine.diagnosis import Diagnosis
    from workbench.engine.thresholds import HealthThresholds

    d = Diagnosis(HealthThresholds(progress_min_gain=0.0))
    for _ in range(2 * d.t.progress_window):
        d._see_loss(0.1)  # 0.1 ten times sums to a hair below 1.0: the mean must not read as a gain
        d._steps_seen += 1
    assert d._stalled() is not None


def test_the_warnings_stand_in_of_an_unwatched_loss_step_restores_and_then_only_forwards() -> None:
    import warnings

    from workbench.engine.diagnosis import Diagnosis
    from workbench.engine.thresholds import HealthThresholds

    d = Diagnosis(HealthThresholds())
    seen: list[str] = []

    def user_show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        seen.append(str(message))

    before = warnings.showwarning
    warnings.showwarning = user_show
    try:
        with pytest.raises(ValueError), d.watch_loss(None, None, step=7) as watch:  # step 7: not watched
            warnings.warn_explicit("first", UserWarning, "loss.py", 1)
            raise ValueError("the loss failed")
        assert warnings.showwarning is user_show  # put back, even when the loss raised
        assert [str(w.message) for w in watch.warnings] == ["first"] and seen == ["first"]
        with d.watch_loss(None, None, step=8) as watch:
            ours = warnings.showwarning
            theirs_seen: list[str] = []

            def theirs(message, *rest):  # type: ignore[no-untyped-def]
                theirs_seen.append(str(message))
                ours(message, *rest)  # the loss's own hook chains to whatever was there

            warnings.showwarning = theirs
        assert warnings.showwarning is theirs  # not ours to undo
        warnings.warn_explicit("later", UserWarning, "train.py", 2)
        # After the step the stand-in, still called through their hook, only forwards.
        assert theirs_seen == ["later"] and seen == ["first", "later"] and watch.warnings == []
    finally:
        warnings.showwarning = before
