"""The demo scenarios in scenarios/broken/ go wrong exactly as their docstrings say."""

from __future__ import annotations

from tests.conftest import SCENARIOS
from workbench.engine import Engine, Phase, StepError
from workbench.scenario import load

BROKEN_DEMOS = SCENARIOS / "broken"


def run(name: str, steps: int = 10) -> Engine:
    eng = Engine(load(BROKEN_DEMOS / name))
    eng.run(steps)
    return eng


def test_nan_at_step7_in_norm() -> None:
    with run("nan_at_step7.py") as eng:
        first = next(f for f in eng.findings if f.kind == "nan_inf")
    assert (first.step, first.phase, first.module) == (7, Phase.FORWARD, "norm")


def test_dead_relu() -> None:
    with run("dead_relu.py", 3) as eng:
        dead = [f for f in eng.findings if f.kind == "dead_units"]
    assert {f.module for f in dead} == {"hidden.act"} and dead[0].value > 0.85


def test_detached_branch() -> None:
    with run("detached_branch.py", 2) as eng:
        missing = {f.parameter for f in eng.findings if f.kind == "no_gradient"}
    assert missing == {"context.0.weight", "context.0.bias"}


def test_raises_at_step3() -> None:
    with Engine(load(BROKEN_DEMOS / "raises_at_step3.py")) as eng:
        out = eng.run(10)
    assert out.stopped_by == "error" and out.steps_done == 3
    assert isinstance(out.error, StepError) and out.error.step == 3
    assert "invalid for input of size 1280" in str(out.error)
