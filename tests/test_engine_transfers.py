"""At most one device->host transfer per phase, whatever the number of layers."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from workbench.engine import Engine, EngineConfig, Phase
from workbench.scenario import Scenario

# Every way a tensor's values reach the host.
TRANSFER_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


def deep_mlp(depth: int, clip: float | None = None) -> Scenario:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(16, 1))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(32, 16, generator=g), torch.randn(32, 1, generator=g)) for _ in range(2)]
    # SGD: Adam calls .item() on its own CPU step counter inside optimizer.step(), a sync of
    # the user's optimizer that this test must not blame on the debugger.
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                    loss_fn=nn.MSELoss(), data=data, clip_grad_norm=clip)


@pytest.fixture
def count_transfers(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counts: Counter = Counter()
    for name in TRANSFER_METHODS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, __original=original, __name=name, **k):
            counts[__name] += 1
            return __original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return counts


def transfers_per_phase(depth: int, counts: Counter, stats_every: int = 1,
                        clip: float | None = None) -> dict[Phase, int]:
    per_phase: dict[Phase, int] = {}
    with Engine(deep_mlp(depth, clip), EngineConfig(stats_every=stats_every)) as eng:
        eng.step_once()  # warm-up step outside the count
        for _ in range(4):
            before = sum(counts.values())
            result = eng.advance()
            per_phase[result.phase] = sum(counts.values()) - before
    return per_phase


@pytest.mark.slow
def test_one_transfer_per_phase_independent_of_depth(count_transfers: Counter) -> None:
    shallow = transfers_per_phase(2, count_transfers)
    deep = transfers_per_phase(40, count_transfers)
    assert shallow == deep, (shallow, deep)
    assert all(n <= 1 for n in deep.values()), deep
    assert deep[Phase.FORWARD] == 1 and deep[Phase.BACKWARD] == 1


def test_unmeasured_steps_transfer_only_loss_and_grad_norm(count_transfers: Counter) -> None:
    per_phase = transfers_per_phase(40, count_transfers, stats_every=1000)  # step 1 is unmeasured
    assert per_phase == {Phase.FORWARD: 0, Phase.LOSS: 1, Phase.BACKWARD: 1, Phase.OPTIMIZER_STEP: 0}


@pytest.mark.parametrize("every", [1, 1000], ids=["measured", "unmeasured"])
def test_clipping_reads_its_norm_with_the_backwards_transfer(count_transfers: Counter, every: int) -> None:
    # The clip norm goes to the host with the backward's numbers; reading it after the
    # optimizer step would wait for that step's kernels on a GPU.
    per_phase = transfers_per_phase(4, count_transfers, stats_every=every, clip=0.5)
    assert per_phase == {Phase.FORWARD: int(every == 1), Phase.LOSS: 1, Phase.BACKWARD: 1,
                         Phase.OPTIMIZER_STEP: int(every == 1)}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_cuda_one_transfer_per_phase_and_memory(count_transfers: Counter) -> None:
    scenario = deep_mlp(8)
    scenario.model.cuda()
    scenario.optimizer = torch.optim.SGD(scenario.model.parameters(), lr=0.01, momentum=0.9)
    with Engine(scenario) as eng:
        eng.step_once()
        before = sum(count_transfers.values())
        rec = eng.step_once()
        assert sum(count_transfers.values()) - before <= 4
    assert rec.memory.cuda_allocated and rec.memory.cuda_peak and rec.memory.cuda_reserved
    assert rec.module("0").device.startswith("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_cuda_new_sizes_mid_training_copy_to_the_device_without_waiting() -> None:
    # A new output size needs a new sample index, a new layout new lengths and bounds: each is
    # a host->device copy, and from pageable memory that copy waits for the queued forward.
    from workbench.engine.probe import ActivationProbe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)).cuda()
    probe = ActivationProbe(model, sample_size=256)
    probe.attach()
    for rows in (3, 50, 7, 300, 3):  # outputs below and above the sample size
        x = torch.randn(rows, 16, device="cuda")
        probe.begin_forward(True)
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
            stacked = probe.forward_tensor()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        probe.end_forward()
        assert stacked is not None
        stats = probe.decode_forward(stacked.tolist())
        assert all(s.output is not None and s.output.finite for s in stats)


def test_a_learning_rate_held_as_a_tensor_is_read_as_its_value() -> None:
    # Capturable optimizers and schedules written for torch.compile keep lr as a tensor; on an
    # accelerator each such lr is read in one transfer with the others (params.lr_values).
    from workbench.engine.params import lr_values

    scenario = deep_mlp(2)
    params = list(scenario.model.parameters())
    scenario.optimizer = torch.optim.SGD([{"params": params[:2], "lr": torch.tensor(0.01)},
                                          {"params": params[2:]}], lr=0.05, momentum=0.9)
    with Engine(scenario, EngineConfig(stats_every=1)) as eng:
        records = [eng.step_once() for _ in range(2)]
    assert all(r.lrs == pytest.approx((0.01, 0.05)) for r in records)
    values = lr_values([{"lr": torch.tensor(0.5)}, {}, {"lr": 2}], default=0.0)
    assert values == (0.5, 0.0, 2.0) and all(type(v) is float for v in values)
