"""Instruments on a loop the test owns: the engine's phase boundaries, called by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.engine import params
from workbench.engine.instruments import Instruments, StepState
from workbench.engine.records import NAN_INF, NO_GRADIENT, Phase


class LogOfNegative(nn.Module):
    """A layer that turns finite inputs into NaN: log of a value below zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - 10.0)


def _step(inst: Instruments, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          step: int = 0) -> StepState:
    s = StepState(step=step, measured=True)
    inst.begin_phase()
    scale = inst.begin_forward(s)
    try:
        out = model(x)
    finally:
        inst.end_forward(s, scale)
    inst.forward_stats(s, scale)
    loss = nn.functional.mse_loss(out, y)
    inst.loss_value(s, loss)
    loss.backward()
    inst.backward_stats(s, opt)
    before = inst.before_update(s)
    s.lrs = tuple(g["lr"] for g in opt.param_groups)
    opt.step()
    opt.zero_grad(set_to_none=True)
    inst.update_stats(s, before, opt, None, 0)
    return s


def _measured(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              run: nn.Module | None = None) -> StepState:
    """One measured step of ``run`` (default ``model``) with Instruments on ``model``, hooks removed after."""
    inst = Instruments(model)
    inst.probe.attach()
    try:
        return _step(inst, run if run is not None else model, opt, x, y)
    finally:
        inst.probe.detach()


def test_a_nan_made_by_one_module_is_named_as_its_root() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), LogOfNegative(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = _measured(model, opt, torch.randn(16, 4), torch.randn(16, 1))
    roots = [f for f in s.findings if f.kind == NAN_INF and f.phase is Phase.FORWARD]
    assert [f.module for f in roots] == ["1"]
    assert "from finite inputs" in roots[0].message
    assert s.outputs_finite is False and s.loss is not None and s.loss != s.loss  # NaN
    assert {m.name for m in s.modules} == {"", "0", "1", "2"}
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_a_healthy_step_measures_every_parameter_and_its_update() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    head = nn.Linear(1, 1)  # never on the path to the loss
    model.add_module("unused", head)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = _measured(model, opt, torch.randn(16, 4), torch.randn(16, 1), run=model[:3])
    assert s.loss is not None and s.loss > 0 and s.total_grad_norm is not None
    measured = {p.name: p for p in s.params}
    assert measured["0.weight"].update_norm is not None and measured["0.weight"].update_norm > 0
    missing = [f for f in s.findings if f.kind == NO_GRADIENT]
    assert {f.parameter for f in missing} == {"unused.weight", "unused.bias"}


@pytest.mark.parametrize("fused_abs_max", [False, True], ids=["cpu-aminmax", "accelerator-inf-norm"])
def test_gradient_mean_std_and_update_norm_are_exact_for_a_large_parameter(
        fused_abs_max: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # 96 x 128 = 12288 weights: more than the 4096-element sample the activations use. The
    # accelerator's layout of the readings (abs max as one inf-norm launch) is taken on CPU too.
    if fused_abs_max:
        monkeypatch.setattr(params, "abs_max_by_aminmax", lambda device: False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 96), nn.Tanh(), nn.Linear(96, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(32, 128), torch.randn(32, 1)
    # The reference gradient and update, from a copy of the model trained by hand on the same batch.
    ref = nn.Sequential(nn.Linear(128, 96), nn.Tanh(), nn.Linear(96, 1))
    ref.load_state_dict(model.state_dict())
    nn.functional.mse_loss(ref(x), y).backward()
    g = ref[0].weight.grad.double()
    expected_update = (0.5 * g).norm().item()
    s = _measured(model, opt, x, y)
    p = {q.name: q for q in s.params}["0.weight"]
    assert p.grad_mean is not None and p.grad_std is not None and p.update_norm is not None
    assert abs(p.grad_mean - g.mean().item()) <= 1e-6 * g.abs().max().item()
    assert abs(p.grad_std - g.std(unbiased=False).item()) <= 1e-4 * g.std().item()
    assert abs(p.grad_norm - g.norm().item()) <= 1e-5 * g.norm().item()
    assert abs(p.update_norm - expected_update) <= 1e-4 * expected_update
    assert p.grad_abs_max == pytest.approx(g.abs().max().item(), rel=1e-6)
    assert {q.name: q.weight_norm for q in s.params}["2.weight"] == pytest.approx(
        ref[2].weight.detach().norm().item(), rel=1e-5)  # before the update, as the step read it


class WithEmptyParameter(nn.Module):
    """A model holding a zero-size parameter that still gets a (zero-size) gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.empty = nn.Parameter(torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.empty.sum()


@pytest.mark.parametrize("fused_abs_max", [False, True], ids=["cpu-aminmax", "accelerator-inf-norm"])
def test_a_zero_size_gradient_is_measured_on_either_layout(fused_abs_max: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # _foreach_norm has no inf-norm of an empty tensor: the accelerator layout must not ask for one.
    if fused_abs_max:
        monkeypatch.setattr(params, "abs_max_by_aminmax", lambda device: False)
    torch.manual_seed(0)
    model = WithEmptyParameter()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = _measured(model, opt, torch.randn(8, 4), torch.randn(8, 1))
    stats = {p.name: p for p in s.params}
    assert stats["empty"].grad_norm == 0.0 and stats["empty"].grad_abs_max == 0.0
    assert stats["fc.weight"].grad_norm is not None and stats["fc.weight"].grad_norm > 0


def test_a_half_precision_weight_norm_past_the_fp16_range_stays_finite() -> None:
    # 250 x 400 weights of 300: a norm of about 94868, past fp16's largest value (65504). The
    # norms are accumulated in float32, so the weight is not reported as non-finite.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 250), nn.Linear(250, 1)).half()
    with torch.no_grad():
        model[0].weight.fill_(300.0)
        model[0].weight.mul_(torch.rand_like(model[0].weight).sign())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    s = _measured(model, opt, torch.randn(4, 400).half() * 1e-3, torch.zeros(4, 1).half())
    weight = {p.name: p for p in s.params}["0.weight"]
    assert weight.weight_norm == pytest.approx(300.0 * (250 * 400) ** 0.5, rel=1e-3)
    assert not [f for f in s.findings if f.kind == NAN_INF]
