"""The error panel's (title, details): a step the user's code broke names its phase, step and line."""

from __future__ import annotations

import traceback

from workbench.engine.errors import StepError
from workbench.engine.records import Phase
from workbench.scenario import ScenarioError
from workbench.session.views import format_error


def _users_loss() -> None:
    raise ValueError("targets have the wrong shape")


def test_a_step_error_names_the_users_exception_its_phase_step_and_line() -> None:
    try:
        _users_loss()
    except ValueError as exc:
        err = StepError(Phase.LOSS, 3, exc)
    title, details = format_error(err)
    assert title.startswith("ValueError in loss of step 3: targets have the wrong shape")
    assert err.user_frame is not None and title.endswith(f"  (at {err.user_frame})")
    assert "test_format_error.py" in err.user_frame and "_users_loss" in err.user_frame
    assert details == err.traceback_text and "raise ValueError" in details


def test_sys_exit_in_a_phase_is_named_as_the_optimizer_step_that_raised_it() -> None:
    try:
        raise SystemExit(4)
    except SystemExit as exc:
        err = StepError(Phase.OPTIMIZER_STEP, 0, exc)
    title, _ = format_error(err)
    assert title.startswith("SystemExit in optimizer step of step 0: 4")


def test_other_errors_show_their_cause_or_themselves_with_a_traceback() -> None:
    try:
        try:
            raise KeyError("layer")
        except KeyError as inner:
            raise RuntimeError("could not build") from inner
    except RuntimeError as exc:
        error = exc
    title, details = format_error(error)
    assert title == "KeyError: 'layer'"
    assert error.__cause__ is not None
    assert details == "".join(traceback.format_exception(error.__cause__))
    assert format_error(ValueError("bad condition"))[0] == "ValueError: bad condition"


def test_a_scenario_error_splits_into_its_first_line_and_the_rest() -> None:
    assert format_error(ScenarioError("a.py:3: no build()\ndefine build()")) == ("a.py:3: no build()",
                                                                                  "define build()")
    assert format_error(ScenarioError("one line")) == ("one line", "one line")


def test_a_bench_step_error_has_no_phase_and_names_its_step() -> None:
    from workbench.bench.timing import BenchStepError

    try:
        _users_loss()
    except ValueError as exc:
        err = BenchStepError(4, exc, warmup=False)
    title, details = format_error(err)
    assert title.startswith("ValueError in step 4: targets have the wrong shape")
    assert err.user_frame is not None and title.endswith(f"  (at {err.user_frame})")
    assert "raise ValueError" in details
