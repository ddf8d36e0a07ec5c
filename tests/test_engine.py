"""The stepping engine: phases, records, bounded history, clean detach, errors, threads."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from torch import nn

from tests.conftest import BROKEN, SCENARIOS
from workbench.engine import (
    Breakpoint,
    Engine,
    EngineConfig,
    Phase,
    StepError,
)
from workbench import Scenario
from workbench.scenario import ScenarioError, load, split_batch

PATHO = BROKEN / "pathologies.py"


def patho(kind: str):
    return load(f"{PATHO}:build_{kind}")


def test_advance_runs_one_phase_at_a_time() -> None:
    with Engine(load(SCENARIOS / "mlp_digits.py")) as eng:
        assert eng.next_phase is Phase.FORWARD and eng.step == 0
        r = eng.advance()
        assert (r.phase, r.step, r.loss, r.record) == (Phase.FORWARD, 0, None, None)
        assert eng.next_phase is Phase.LOSS
        cur = eng.current
        assert cur.phases_done == (Phase.FORWARD,)
        assert cur.batch_size == 64  # mlp_digits' DataLoader batch: the TUI drops that dimension
        assert {m.name for m in cur.modules} == {"", "fc1", "act", "fc2"}
        assert cur.params == ()
        r = eng.advance()
        assert r.phase is Phase.LOSS and r.loss is not None and r.loss > 0
        r = eng.advance()
        assert r.phase is Phase.BACKWARD and eng.next_phase is Phase.OPTIMIZER_STEP
        assert eng.current.total_grad_norm is not None
        assert {p.name for p in eng.current.params} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
        r = eng.advance()
        assert r.phase is Phase.OPTIMIZER_STEP and r.record is not None
        assert eng.step == 1 and eng.next_phase is Phase.FORWARD
        rec = r.record
        assert rec.step == 0 and set(rec.phase_seconds) == set(Phase)
        assert rec.lrs == (pytest.approx(0.05),)  # mlp_digits' SGD lr, one param group
        fc1 = rec.param("fc1.weight")
        assert fc1 is not None and fc1.update_norm is not None and fc1.update_ratio is not None
        assert fc1.update_ratio == pytest.approx(fc1.update_norm / fc1.weight_norm)
        assert rec.memory.rss_bytes and rec.memory.activation_bytes
        assert rec.memory.cuda_allocated is None  # CPU run


def test_module_stats_match_a_direct_computation() -> None:
    scenario = load(SCENARIOS / "mlp_digits.py")
    with Engine(scenario) as eng:
        eng.advance()
        fc1 = {m.name: m for m in eng.current.modules}["fc1"]
        with torch.no_grad():
            expected = scenario.model.fc1(eng.batch.inputs[0])
    assert fc1.shape == tuple(expected.shape) and fc1.dtype == "float32" and fc1.device == "cpu"
    # Exact over the whole tensor:
    assert fc1.min == pytest.approx(expected.min().item()) and fc1.max == pytest.approx(expected.max().item())
    assert fc1.abs_max == pytest.approx(expected.abs().max().item())
    # Estimated from a 4096-element sample (the tensor has 8192): within 4 standard errors.
    assert fc1.sampled
    sd = expected.std().item()
    assert fc1.mean == pytest.approx(expected.mean().item(), abs=4 * sd / 64)
    assert fc1.std == pytest.approx(sd, rel=0.05)
    assert fc1.nan_count == 0 and fc1.inf_count == 0 and fc1.bytes == expected.numel() * 4


def _plain_losses(spec: str, steps: int) -> list[float]:
    s = load(spec)
    torch.manual_seed(s.seed)
    s.model.train()
    losses: list[float] = []
    it = iter(s.data)
    for _ in range(steps):
        batch = split_batch(next(it))
        loss = s.loss_fn(s.call_model(batch.inputs), batch.targets)
        loss.backward()
        s.optimizer.step()
        s.optimizer.zero_grad()
        if s.scheduler is not None:
            s.scheduler.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["mlp_digits.py", "regression_mse.py",
                                  pytest.param("cnn_image.py:build_batchnorm", marks=pytest.mark.slow)])
def test_instrumented_training_is_identical_to_a_plain_loop(name: str) -> None:
    spec = f"{SCENARIOS}/{name}"
    expected = _plain_losses(spec, 4)
    with Engine(load(spec)) as eng:
        eng.run(4)
        got = [r.loss for r in eng.history]
    assert got == expected  # bit-identical: the hooks observe, they never change the math


def _clipping_scenario() -> Scenario:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 6, generator=g) * 4, torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), loss_fn=nn.CrossEntropyLoss(),
                    data=data, clip_grad_norm=0.05, seed=0)


@pytest.mark.parametrize("every", [1, 3])
def test_clipping_with_the_steps_own_norm_is_bit_identical_to_clip_grad_norm(every: int) -> None:
    # The engine computes the total norm once in backward and clips with it; the result must be
    # what a plain loop with clip_grad_norm_ gets, on measured and unmeasured steps alike.
    plain = _clipping_scenario()
    torch.manual_seed(plain.seed)
    norms = []
    for step in range(6):
        x, y = plain.data[step % 4]
        loss = plain.loss_fn(plain.model(x), y)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(plain.model.parameters(), 0.05)))
        plain.optimizer.step()
        plain.optimizer.zero_grad()
    with Engine(_clipping_scenario(), EngineConfig(stats_every=every)) as eng:
        eng.run(6)
        records = list(eng.history)
        model = eng.scenario.model
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.model.parameters()))
    assert [r.grad_norm_before_clip for r in records] == norms
    assert all(r.clipped for r in records)  # the norm is far above 0.05: every step was scaled
    assert [r.total_grad_norm for r in records if not r.measured] == pytest.approx(
        [n for r, n in zip(records, norms) if not r.measured], rel=1e-6)


def test_stats_every_k_and_bounded_history() -> None:
    with Engine(load(SCENARIOS / "mlp_digits.py"), EngineConfig(stats_every=3, history=4)) as eng:
        out = eng.run(7)
        assert out.steps_done == 7 and out.stopped_by == "steps"
        hist = eng.history
        assert [r.step for r in hist] == [3, 4, 5, 6]
        assert [bool(r.modules) for r in hist] == [True, False, False, True]
        assert all(r.loss is not None and r.total_grad_norm is not None for r in hist)
        assert not hist[1].params and hist[1].measured is False
        assert all(r.instrument_seconds >= 0 for r in hist)


def test_data_is_cycled_and_epochs_counted() -> None:
    with Engine(patho("detached")) as eng:  # 4 batches per epoch
        eng.run(9)
        assert [r.epoch for r in eng.history] == [0, 0, 0, 0, 1, 1, 1, 1, 2]


def test_close_removes_every_hook_and_restores_training_and_rng() -> None:
    scenario = load(SCENARIOS / "cnn_image.py:build_batchnorm")
    scenario.model.eval()
    scenario.model.classifier.train()  # a mixed state must come back exactly
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    eng = Engine(scenario)
    assert scenario.model.training
    eng.run(1)
    eng.close()
    eng.close()  # idempotent
    for m in scenario.model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert not scenario.model.training and scenario.model.classifier.training
    assert not scenario.model.features.training
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(RuntimeError, match="closed"):
        eng.advance()


def test_in_place_relu_after_batchnorm_gets_forward_and_gradient_stats() -> None:
    with Engine(load(SCENARIOS / "cnn_image.py:build_batchnorm")) as eng:
        rec = eng.step_once()
    relu, bn = rec.module("features.2"), rec.module("features.1")
    assert relu is not None and bn is not None
    assert relu.min == 0.0 and bn.min < 0  # BN's stats were taken before ReLU overwrote it
    assert relu.grad_norm and bn.grad_norm and relu.dead_fraction == 0.0
    assert rec.module("classifier.1").type_name == "Dropout"
    assert eng.module_names[:4] == ("", "features", "features.0", "features.1")


def test_flatten_shares_its_producers_stats_with_its_own_shape() -> None:
    # Flatten returns a view of MaxPool's output (same memory): it reuses MaxPool's stats
    # instead of a second pass; shape, gradient and the counted bytes stay right.
    scenario = load(SCENARIOS / "cnn_image.py")
    with Engine(scenario) as eng:
        eng.advance()
        with torch.no_grad():
            relu_out = scenario.model.features[:5](eng.batch.inputs[0])
            expected = scenario.model.features[5](relu_out).flatten(1)
        rec = eng.step_once()
    pool, flat, relu = rec.module("features.5"), rec.module("classifier.0"), rec.module("features.4")
    assert pool is not None and flat is not None and relu is not None
    assert flat.shape == tuple(expected.shape) and pool.shape == (expected.shape[0], 128, 6, 6)
    assert (flat.min, flat.max, flat.mean, flat.std, flat.zero_fraction) == (
        pool.min, pool.max, pool.mean, pool.std, pool.zero_fraction)
    assert flat.min == pytest.approx(expected.min().item()) and flat.max == pytest.approx(expected.max().item())
    assert flat.grad_norm == pytest.approx(pool.grad_norm, rel=1e-5) and flat.grad_finite
    # Dead channels from the per-unit max (N,C,H,W: a channel zero over the whole batch).
    assert relu.max == pytest.approx(relu_out.max().item())
    assert relu.dead_fraction == pytest.approx((relu_out.amax(dim=(0, 2, 3)) <= 0).float().mean().item())
    leaf_bytes = sum(m.bytes for m in rec.modules if m.name not in ("", "features", "classifier"))
    assert rec.memory.activation_bytes == leaf_bytes - flat.bytes


def test_lstm_tuple_output_is_summarised_by_its_first_tensor() -> None:
    with Engine(load(SCENARIOS / "lstm_text.py")) as eng:
        rec = eng.step_once()
    lstm = rec.module("lstm")
    assert lstm is not None and lstm.shape == (64, 24, 64) and lstm.grad_norm is not None
    assert rec.module("embedding").shape == (64, 24, 32)
    assert rec.param("embedding.weight").has_grad


def test_multi_input_and_a_module_called_twice() -> None:
    with Engine(patho("multi_input")) as eng:
        rec = eng.step_once()
    act = rec.module("act")
    assert act is not None and act.calls == 2  # stats describe the last call
    assert rec.module("b").shape == (64, 8) and not rec.findings


def test_custom_forward_is_used() -> None:
    from workbench.scenario import replace

    base = load(SCENARIOS / "mlp_digits.py")
    seen: list[int] = []

    def forward(model, inputs):
        seen.append(len(inputs))
        return model(*inputs) * 0.5

    with Engine(replace(base, forward=forward)) as eng:
        eng.step_once()
    assert seen == [1]


def test_user_exception_becomes_step_error_and_the_engine_keeps_going() -> None:
    with Engine(patho("raises")) as eng:  # forward raises on its 4th call
        out = eng.run(10)
        assert out.stopped_by == "error" and out.steps_done == 3
        err = out.error
        assert isinstance(err, StepError) and err.phase is Phase.FORWARD and err.step == 3
        assert isinstance(err.original, RuntimeError) and "deliberate failure" in err.traceback_text
        assert err.user_frame and "pathologies.py" in err.user_frame
        assert eng.next_phase is Phase.FORWARD and eng.step == 4
        assert [r.step for r in eng.history] == [0, 1, 2]
        rec = eng.step_once()  # usable afterwards
        assert rec.step == 4 and len(eng.history) == 4


def test_a_loss_that_is_not_a_scalar_is_a_clear_step_error() -> None:
    with Engine(patho("bad_loss")) as eng:
        eng.advance()
        with pytest.raises(StepError) as info:
            eng.advance()
    assert info.value.phase is Phase.LOSS
    assert isinstance(info.value.original, ScenarioError)
    assert "expected a scalar Tensor" in str(info.value)


def test_breakpoint_pauses_before_the_optimizer_step_and_skip_drops_it() -> None:
    with Engine(patho("nan_forward"), EngineConfig(breakpoints=(Breakpoint.parse("nan_inf"),))) as eng:
        weights = [p.detach().clone() for p in eng.scenario.model.parameters()]
        out = eng.run(5)
        assert out.stopped_by == "breakpoint" and out.steps_done == 0
        hit = out.break_hit
        assert hit is not None and hit.step == 0 and hit.phase is Phase.BACKWARD
        assert hit.finding is not None and hit.finding.module == "1" and hit.breakpoint == "nan_inf"
        assert eng.pending_break == hit and eng.next_phase is Phase.OPTIMIZER_STEP
        rec = eng.skip_step()
        assert rec.skipped and eng.skipped_steps == 1 and eng.next_phase is Phase.FORWARD
        for before, p in zip(weights, eng.scenario.model.parameters()):
            assert torch.equal(before, p) and p.grad is None


@pytest.mark.parametrize(
    ("text", "stops_at"),
    [("step==2", 2), ("loss>0.5", 0), ("grad_norm>1e-9", 0), ("any>=info", 0), ("loss<1e9", 0),
     ("grad_norm<1e9", 0)],
)
def test_breakpoint_conditions(text: str, stops_at: int) -> None:
    with Engine(patho("dead_relu")) as eng:
        eng.add_breakpoint(text)
        assert eng.breakpoints == (Breakpoint.parse(text),)
        out = eng.run(6)
        assert out.stopped_by == "breakpoint" and out.break_hit.step == stops_at
        eng.remove_breakpoint(text)
        assert eng.run(2).stopped_by == "steps"


def test_module_glob_breakpoint_only_matches_that_module() -> None:
    with Engine(patho("dead_relu")) as eng:
        eng.add_breakpoint(Breakpoint.on_finding("dead_units", module="0*"))
        assert eng.run(3).stopped_by == "steps"
        eng.add_breakpoint("dead_units@1")
        out = eng.run(3)
        assert out.stopped_by == "breakpoint" and out.break_hit.finding.module == "1"


def test_should_stop_is_polled_between_phases() -> None:
    polls = []

    def stop() -> bool:
        polls.append(1)
        return len(polls) > 2

    with Engine(load(SCENARIOS / "mlp_digits.py")) as eng:
        out = eng.run(None, should_stop=stop)
        assert out.stopped_by == "stopped" and out.steps_done == 0
        assert eng.next_phase is Phase.BACKWARD
        seen = []
        out = eng.run(2, on_step=seen.append)
        assert [r.step for r in seen] == [0, 1] and out.steps_done == 2


def test_runs_from_a_worker_thread() -> None:
    result = {}

    def work() -> None:
        with Engine(load(SCENARIOS / "collab_filter.py")) as eng:
            result["out"] = eng.run(3)
            result["rec"] = eng.history[-1]

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert result["out"].steps_done == 3
    rec = result["rec"]
    assert rec.module("user").shape == (256, 16)
    assert rec.param("user.weight").grad_norm > 0  # embedding rows outside the batch: zero, not missing


def test_module_tree() -> None:
    with Engine(load(SCENARIOS / "resnet_tiny.py")) as eng:
        tree = eng.module_tree
    assert tree[""].total_params == sum(p.numel() for p in eng.scenario.model.parameters())
    assert all(c in tree for node in tree.values() for c in node.children)


def test_breakpoint_parse_errors_say_what_is_expected() -> None:
    for bad in ("nan", "loss>abc", "step==-1", "dead_units>=fatal", ""):
        with pytest.raises(ValueError, match="expected"):
            Breakpoint.parse(bad)
    for text in ("nan_inf", "dead_units@features.*", "any>=error", "loss>5", "grad_norm>100", "step==12",
                 "exploding_gradient>=warning@fc*"):
        assert Breakpoint.parse(text).describe() == text
    assert Breakpoint.parse("loss >= 5").describe() == "loss>5"
    assert Breakpoint.parse("loss <= 0.05").describe() == "loss<0.05"
    for text in ("loss<0.05", "grad_norm<1e-06"):
        assert Breakpoint.parse(text).describe() == text
    with pytest.raises(ValueError, match="not nan"):
        Breakpoint.parse("loss>nan")


def test_below_breakpoints_fire_under_the_threshold_and_never_on_nan() -> None:
    def fires(text: str, loss: float | None, norm: float | None = None) -> bool:
        hit = Breakpoint.parse(text).check(step=3, phase=Phase.BACKWARD, loss=loss, total_grad_norm=norm,
                                           findings=())
        return hit is not None

    assert fires("loss<0.05", 0.01) and not fires("loss<0.05", 0.05) and not fires("loss<0.05", 0.2)
    assert not fires("loss<0.05", float("nan"))  # a NaN loss has not converged
    assert fires("loss>5", float("nan"))  # but it is "above" any bound: divergence stops there
    assert fires("grad_norm<1e-6", None, 1e-8) and not fires("grad_norm<1e-6", None, None)
    hit = Breakpoint.parse("loss<0.05").check(step=3, phase=Phase.BACKWARD, loss=0.01, total_grad_norm=None,
                                             findings=())
    assert hit.reason == "loss 0.01 < 0.05"


def test_run_stops_when_the_loss_converges() -> None:
    with Engine(load(SCENARIOS / "mlp_digits.py")) as eng:
        eng.run(1)
        target = eng.history[-1].loss * 0.9
        eng.add_breakpoint(f"loss<{target:g}")
        out = eng.run(200)
        assert out.stopped_by == "breakpoint", "the loss never fell 10% in 200 steps"
        hit = out.break_hit
        assert hit.step >= 1 and hit.reason.startswith("loss ")
        assert float(hit.reason.split()[1]) < target
        assert all(r.loss >= target for r in eng.history if r.step < hit.step)  # the first step below it


def test_activation_sample_for_inspectors() -> None:
    with Engine(load(SCENARIOS / "mlp_digits.py")) as eng:
        assert eng.activation_sample("fc1") is None  # nothing measured yet
        eng.advance()
        with torch.no_grad():
            expected = eng.scenario.model.fc2(eng.scenario.model.act(eng.scenario.model.fc1(eng.batch.inputs[0])))
        small = eng.activation_sample("fc2")  # 640 elements: all of them
        assert small is not None and torch.equal(small, expected.reshape(-1))
        big = eng.activation_sample("fc1")  # 8192 elements: a 4096 sample
        assert big is not None and big.numel() == 4096 and big.device.type == "cpu"
        assert eng.activation_sample("nope") is None


def test_sparse_embedding_gradients() -> None:
    from torch import nn

    from workbench.scenario import Scenario

    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 8, sparse=True)
            self.fc = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(x).mean(1))

    torch.manual_seed(0)
    model = Bag()
    data = [(torch.randint(0, 50, (16, 5)), torch.randn(16, 1)) for _ in range(3)]
    scenario = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        loss_fn=nn.MSELoss(), data=data)
    with Engine(scenario) as eng:
        for _ in range(3):  # forward, loss, backward
            eng.advance()
        grad = eng.scenario.model.emb.weight.grad
        assert grad is not None and grad.is_sparse
        expected = grad.coalesce().values().norm().item()
        rec = eng.step_once()
    p = rec.param("emb.weight")
    assert p is not None and p.grad_norm == pytest.approx(expected, rel=1e-5)
    assert p.update_norm and not [f for f in rec.findings if f.severity == "error"]


def test_sparse_embedding_gradients_on_an_unmeasured_step_give_the_total_norm() -> None:
    from torch import nn

    from workbench.scenario import Scenario

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Flatten(), nn.Linear(40, 1))
    data = [(torch.randint(0, 50, (16, 5)), torch.randn(16, 1)) for _ in range(3)]
    scenario = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        loss_fn=nn.MSELoss(), data=data)
    with Engine(scenario, EngineConfig(stats_every=100)) as eng:
        eng.step_once()  # step 0 is measured
        for _ in range(3):  # step 1: forward, loss, backward
            eng.advance()
        grads = [p.grad for p in model.parameters()]
        assert grads[0] is not None and grads[0].is_sparse
        expected = math.sqrt(sum(float((g.coalesce().values() if g.is_sparse else g).norm()) ** 2 for g in grads))
        rec = eng.step_once()
    assert not rec.measured and rec.total_grad_norm == pytest.approx(expected, rel=1e-5)


class _Poke(nn.Module):
    """Writes 3 NaNs, 2 Infs and a row of 10 zeros into its (8, 10) input's copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[0, :3] = float("nan")
        out[1, :2] = float("inf")
        out[2, :] = 0.0
        return out


def test_nan_inf_counts_and_zero_fraction_are_exact() -> None:
    # NaN/Inf counts are computed only once min/max show a non-finite value; zeros are
    # counted over the zero-padded sample with the padding taken off again.
    model = nn.Sequential(nn.Linear(4, 10), _Poke())
    data = [(torch.randn(8, 4), torch.randn(8, 10))]
    scenario = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        loss_fn=nn.MSELoss(), data=data)
    with Engine(scenario) as eng:
        eng.advance()
        poke = {m.name: m for m in eng.current.modules}["1"]
        fc = {m.name: m for m in eng.current.modules}["0"]
        assert not poke.sampled and poke.nan_count == 3 and poke.inf_count == 2
        assert poke.zero_fraction == pytest.approx(10 / 80)
        assert fc.nan_count == 0 and fc.inf_count == 0 and fc.zero_fraction == 0.0
    with Engine(patho("nan_backward")) as eng:  # every gradient below BadBackward is NaN
        eng.advance(), eng.advance(), eng.advance()
        params = {p.name: p for p in eng.current.params}
        assert params["0.weight"].grad_nan == params["0.weight"].shape[0] * params["0.weight"].shape[1]
        assert params["0.bias"].grad_inf == 0 and params["3.weight"].grad_nan == 0


def test_an_update_that_overflows_the_weights_is_named_at_the_optimizer_step() -> None:
    from workbench.scenario import Scenario

    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    data = [(torch.randn(16, 8), 1e10 * torch.randn(16, 1))]
    # Large but finite gradients, and an lr that takes the weights past float32's range in one step.
    scenario = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1e30),
                        loss_fn=nn.MSELoss(), data=data)
    with Engine(scenario) as eng:
        rec = eng.step_once()
    assert all(p.grad_norm is not None and math.isfinite(p.grad_norm) for p in rec.params)
    found = [f for f in rec.findings if f.kind == "nan_inf" and f.phase is Phase.OPTIMIZER_STEP]
    assert len(found) == 1 and "became non-finite in the optimizer step" in found[0].message
    assert found[0].parameter in ("weight", "bias") and found[0].value is not None and not math.isfinite(found[0].value)
    assert not torch.isfinite(model.weight).all()


def test_the_engine_measures_a_layer_from_the_step_it_is_unfrozen() -> None:
    from workbench.scenario import Scenario

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    scenario = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        loss_fn=nn.CrossEntropyLoss(), data=data)
    with Engine(scenario) as eng:
        frozen = eng.step_once()
        model[0].requires_grad_(True)
        thawed = eng.step_once()
    assert {p.name for p in frozen.params} == {"2.weight", "2.bias"}
    assert {p.name for p in thawed.params} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    grads = [p.grad_norm for p in thawed.params if p.grad_norm is not None]
    assert thawed.total_grad_norm == pytest.approx(math.sqrt(sum(g * g for g in grads)))


def test_a_finite_update_whose_norm_overflows_float32_is_not_said_to_make_the_weights_non_finite() -> None:
    """An update of 1e18 per element has an inf float32 norm; the weights stay finite (~1e18)."""
    from workbench.scenario import Scenario

    class Shove(torch.optim.Optimizer):
        def __init__(self, params) -> None:  # noqa: ANN001
            super().__init__(params, {})

        @torch.no_grad()
        def step(self, closure=None):  # noqa: ANN001, ANN201
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(1e18)

    torch.manual_seed(0)
    model = nn.Linear(4096, 1)
    data = [(torch.randn(2, 4096), torch.randn(2, 1))]
    scenario = Scenario(model=model, optimizer=Shove(model.parameters()), loss_fn=nn.MSELoss(), data=data)
    with Engine(scenario) as eng:
        rec = eng.step_once()
    assert torch.isfinite(model.weight).all()
    weight = next(p for p in rec.params if p.name == "weight")
    assert weight.update_norm is not None and math.isinf(weight.update_norm)  # 1e18 * 64 past float32
    assert not [f for f in rec.findings if f.kind == "nan_inf"], [f.message for f in rec.findings]


class _ToComplex128(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.complex128) * (1 + 1j)


class _Magnitude(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.abs().float()


def test_a_complex128_activation_is_measured_with_its_output_gradient() -> None:
    from workbench.scenario import Scenario

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), _ToComplex128(), _Magnitude(), nn.Linear(6, 2))
    data = [(torch.randn(8, 6), torch.randint(0, 2, (8,))) for _ in range(2)]
    scenario = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        loss_fn=nn.CrossEntropyLoss(), data=data)
    with Engine(scenario) as eng:
        rec = eng.step_once()
        eng.step_once()
    m = rec.module("1")
    assert m is not None and m.dtype == "complex128" and m.grad_norm is not None and math.isfinite(m.grad_norm)
    assert m.max == pytest.approx(math.sqrt(2) * float(model[0](data[0][0]).abs().max()), rel=0.2)


def test_a_small_output_sample_is_the_whole_tensor_padded_with_its_first_element() -> None:
    from workbench.engine.probe import SampleIndex

    index = SampleIndex(16)
    for n in (1, 5, 16):
        flat = torch.arange(1.0, n + 1)
        sample, real = index.take(flat)
        assert real == n and sample.shape == (16,)
        assert torch.equal(sample[:n], flat) and torch.equal(sample[n:], torch.full((16 - n,), 1.0))
    big = torch.arange(100.0)
    sample, real = index.take(big)
    assert real == 16 and torch.equal(sample, index.take(big.clone())[0])  # the same positions each time
