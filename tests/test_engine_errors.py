"""StepError advice (engine/errors.py KNOWN_ERRORS) and out-of-memory handling, on real failures."""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench import Scenario
from workbench.cli import main
from workbench.engine import Engine, Phase, StepError
from workbench.engine.errors import KNOWN_ERRORS


def _scenario(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
              loss_fn: Callable = nn.MSELoss(), optimizer: torch.optim.Optimizer | None = None) -> Scenario:
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    return Scenario(model=model, optimizer=opt, loss_fn=loss_fn, data=[(inputs, targets)])


def _first_error(scenario: Scenario, steps: int = 3) -> StepError:
    with Engine(scenario) as eng:
        out = eng.run(steps)
    assert out.stopped_by == "error", f"expected a StepError, got {out}"
    assert isinstance(out.error, StepError)
    return out.error


class _AddOnMeta(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.zeros(3, device="meta")  # a tensor created on the wrong device


class _Exits(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise SystemExit(4)  # what sys.exit(4) raises: a step failure, not the workbench's exit


class _WorkerDiesInBackward(torch.autograd.Function):
    """What a DataLoader worker killed mid-step looks like: torch's SIGCHLD handler raises in
    the main thread wherever it is, here in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")


class _DiesInBackward(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WorkerDiesInBackward.apply(super().forward(x))


def _cases() -> list[tuple[str, Callable[[], Scenario], Phase, list[str]]]:
    x8 = torch.randn(8, 4)
    return [
        ("loss_shapes", lambda: _scenario(nn.Linear(4, 3), x8, torch.randn(8, 5)), Phase.LOSS,
         ["loss_fn(outputs (8, 3) float32, targets (8, 5) float32)", "must match", "equal shapes"]),
        ("loss_shapes", lambda: _scenario(nn.Linear(4, 1), x8, torch.rand(8), nn.BCEWithLogitsLoss()), Phase.LOSS,
         ["outputs (8, 1) float32, targets (8,) float32", "outputs.squeeze(-1)"]),
        ("class_index_targets",
         lambda: _scenario(nn.Linear(4, 3), x8, torch.randint(0, 3, (8,)).float(), nn.CrossEntropyLoss()),
         Phase.LOSS, ["expected target dtype to be Long", "targets (8,) float32", "targets.long()"]),
        ("class_index_targets",
         lambda: _scenario(nn.Linear(4, 3), x8, nn.functional.one_hot(torch.randint(0, 3, (8,)), 3),
                           nn.CrossEntropyLoss()),
         Phase.LOSS, ["targets (8, 3) int64", "targets.argmax(1)"]),
        ("class_out_of_range",
         lambda: _scenario(nn.Linear(4, 3), x8, torch.full((8,), 5), nn.CrossEntropyLoss()),
         Phase.LOSS, ["Target 5 is out of bounds", "as many outputs as classes"]),
        ("float_targets",
         lambda: _scenario(nn.Linear(4, 1), x8, torch.randint(0, 2, (8, 1)), nn.BCEWithLogitsLoss()),
         Phase.LOSS, ["targets (8, 1) int64", "targets.float()"]),
        ("device_mismatch", lambda: _scenario(_AddOnMeta(), x8, torch.randn(8, 3)), Phase.FORWARD,
         ["not on the expected device", "device=x.device"]),
        ("dtype_mismatch", lambda: _scenario(nn.Linear(4, 3), x8.double(), torch.randn(8, 3)), Phase.FORWARD,
         ["model((8, 4) float64)", "same dtype", "torch.float32"]),
        ("linear_in_features", lambda: _scenario(nn.Sequential(nn.Linear(4, 6), nn.Linear(5, 3)), x8,
                                                 torch.randn(8, 3)), Phase.FORWARD,
         ["inside module '1' (Linear)", "Linear '1' (Linear) receives 6 features", "built for 5"]),
        ("conv_channels", lambda: _scenario(nn.Conv2d(3, 2, 3), torch.randn(2, 1, 8, 8), torch.randn(2, 2, 6, 6)),
         Phase.FORWARD, ["model((2, 1, 8, 8) float32)", "expects 3 input channels but got 1", "(N, C, H, W)"]),
        ("embedding_index", lambda: _scenario(nn.Embedding(10, 3), torch.tensor([1, 11]), torch.randn(2, 3)),
         Phase.FORWARD, ["Embedding '(root)' (Embedding)", "largest id + 1"]),
        ("batchnorm_batch_1", lambda: _scenario(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)),
                                                torch.randn(1, 4), torch.randn(1, 8)),
         Phase.FORWARD, ["batch size 1", "BatchNorm module '1' (BatchNorm1d)", "drop_last=True"]),
        ("keyword_batch", lambda: Scenario(model=(m := nn.Linear(4, 3)), optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                                           loss_fn=None, data=[{"x": x8, "labels": torch.randn(8, 3)}]),
         Phase.FORWARD, ["model(dict{'x': (8, 4) float32", "model(**batch)", "no argument 'x'"]),
        ("dataloader_worker", lambda: _scenario(_DiesInBackward(4, 3), x8, torch.randn(8, 3)), Phase.BACKWARD,
         ["step 0, data loading: RuntimeError: DataLoader worker", "num_workers=0"]),
        ("user_exit", lambda: _scenario(_Exits(4, 3), x8, torch.randn(8, 3)), Phase.FORWARD,
         ["SystemExit: 4", "called sys.exit()", "Raise an exception"]),
        ("loss_without_graph", lambda: _scenario(nn.Linear(4, 3), x8, torch.randn(8, 3),
                                                 lambda o, y: nn.functional.mse_loss(o.detach(), y)),
         Phase.BACKWARD, ["does not require grad", "no graph back to any parameter", ".detach()ed"]),
    ]


CASES = _cases()


@pytest.mark.parametrize("kind, make, phase, words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_known_failures_get_the_call_and_advice(kind, make, phase, words) -> None:
    err = _first_error(make())
    assert err.kind == kind, str(err)
    assert err.phase is phase and err.step == 0
    message = str(err)
    for word in words:
        assert word in message, f"{word!r} not in:\n{message}"


def test_every_known_error_has_a_case() -> None:
    covered = {c[0] for c in CASES} | {"out_of_memory"}  # OOM: the tests below
    assert covered == {k.name for k in KNOWN_ERRORS}


def test_an_unknown_error_has_no_advice_but_keeps_the_call() -> None:
    class Odd(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("something only this model does")

    err = _first_error(_scenario(Odd(4, 3), torch.randn(8, 4), torch.randn(8, 3)))
    assert err.kind is None and err.advice is None and "hint" not in str(err)
    assert err.call == "model((8, 4) float32)"
    assert "test_engine_errors.py" in (err.user_frame or "")


# -- out of memory in every phase ----------------------------------------------------------


def _oom() -> torch.OutOfMemoryError:
    # What the CUDA caching allocator raises; on CPU it can only be constructed.
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


class _OomForward(nn.Module):
    """Raises OOM on its 3rd forward, after allocating an activation the error must not keep alive."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.calls = 0
        self.big: weakref.ref[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            big = torch.empty(1 << 20)
            self.big = weakref.ref(big)
            raise _oom()
        return self.fc(x)


class _OomBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise _oom()


class _OomOptimizer(torch.optim.SGD):
    def step(self, closure=None):  # type: ignore[override]
        raise _oom()


def _oom_scenario(phase: Phase) -> Scenario:
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    if phase is Phase.FORWARD:
        return _scenario(_OomForward(), x, y)
    model = nn.Linear(4, 1)
    if phase is Phase.LOSS:
        def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            raise _oom()
        return _scenario(model, x, y, loss_fn)
    if phase is Phase.BACKWARD:
        return _scenario(model, x, y, lambda out, t: nn.functional.mse_loss(_OomBackward.apply(out), t))
    return _scenario(model, x, y, optimizer=_OomOptimizer(model.parameters(), lr=0.1))


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
def test_out_of_memory_in_any_phase_is_marked_and_the_engine_stays_usable(phase: Phase) -> None:
    scenario = _oom_scenario(phase)
    with Engine(scenario) as eng:
        out = eng.run(5)
        err = out.error
        assert isinstance(err, StepError) and err.oom and err.kind == "out_of_memory"
        assert err.phase is phase and err.batch_size == 8
        message = str(err)
        assert f"out of memory in the {phase.value} phase at batch size 8" in message
        assert "--variants fp32,amp,accum-4" in message and "smaller batch" in message
        if phase is Phase.FORWARD:
            # The failed step's activations are freed although the error is still held.
            assert scenario.model.big is not None and scenario.model.big() is None
            assert out.steps_done == 2
            eng.step_once()  # the 4th forward succeeds: the engine carries on
            assert [r.step for r in eng.history] == [0, 1, 3]
        else:
            assert out.steps_done == 0
            with pytest.raises(StepError):  # deterministic failure, but a clean one each time
                eng.step_once()
        assert eng.next_phase is Phase.FORWARD and eng.batch is None


def test_out_of_memory_under_run_is_in_the_json(write_scenario, tmp_path: Path, capsys) -> None:
    path = write_scenario(
        "import torch\nfrom torch import nn\nfrom workbench import Scenario\n"
        "class Big(nn.Linear):\n"
        "    def forward(self, x):\n"
        "        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')\n"
        "def build(device):\n"
        "    m = Big(4, 1).to(device)\n"
        "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
        "                    loss_fn=nn.MSELoss(), data=[(torch.randn(16, 4), torch.randn(16, 1))])\n",
        "big.py",
    )
    report = tmp_path / "r.json"
    assert main(["run", str(path), "--steps", "3", "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert "out of memory in the forward phase at batch size 16" in err
    error = json.loads(report.read_text())["error"]
    assert error["type"] == "OutOfMemoryError" and error["oom"] is True
    assert error["batch_size"] == 16 and error["phase"] == "forward" and error["kind"] == "out_of_memory"
    assert "accum-4" in error["hint"] and error["at"].endswith("in forward")


def test_a_loss_without_graph_because_grad_mode_is_off_says_so() -> None:
    scenario = _scenario(nn.Linear(4, 3), torch.randn(8, 4), torch.randn(8, 3))
    torch.set_grad_enabled(False)  # what a build() that turned it off leaves behind
    try:
        err = _first_error(scenario)
    finally:
        torch.set_grad_enabled(True)
    assert err.kind == "loss_without_graph" and "gradient recording is off in this process" in str(err)
