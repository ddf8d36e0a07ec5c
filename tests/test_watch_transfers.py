"""workbench.watch makes the engine's device->host transfers: one per boundary, whatever the depth."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

import workbench
from tests.test_engine_transfers import count_transfers  # noqa: F401 - the fixture


def _deep(depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(16, 1))


def transfers_per_step(depth: int, counts: Counter) -> list[int]:
    model = _deep(depth)
    # SGD: Adam reads its own step counter with .item() inside step(), the user's sync, not ours.
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 16, generator=g), torch.randn(32, 1, generator=g)
    per_step = []
    with workbench.watch(model, opt, every=2) as wb:
        for step in range(7):
            before = sum(counts.values())
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            wb.log(loss=loss)  # before the step: read with the backward boundary's loss transfer
            opt.step()
            opt.zero_grad()
            per_step.append(sum(counts.values()) - before)
    assert len(wb.history) == 7
    return per_step[2:]  # steps 0-1 hold the one-time checks (the first layer's input scale)


def test_watch_transfers_do_not_grow_with_depth(count_transfers: Counter) -> None:  # noqa: F811
    shallow = transfers_per_step(2, count_transfers)
    deep = transfers_per_step(30, count_transfers)
    assert shallow == deep
    # Steps 2, 4, 6 measured (forward stats, the loss, backward stats, update norms) and 3, 5 not
    # (the loss, the total gradient norm); the logged loss is not read a second time.
    measured, unmeasured = shallow[0::2], shallow[1::2]
    assert set(measured) == {4} and set(unmeasured) == {2}


def test_logged_tensors_are_read_together_once_per_step(count_transfers: Counter) -> None:  # noqa: F811
    model = _deep(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 16)
    with workbench.watch(model, opt, every=1000) as wb:
        for _ in range(3):
            out = model(x)
            out.mean().backward()
            opt.step()
            opt.zero_grad()
            before = sum(count_transfers.values())
            wb.log(mean=out.mean(), spread=out.std(), peak=out.amax())  # after the step: no sync here
            assert sum(count_transfers.values()) == before
    assert [sorted(v) for v in wb.logged] == [["mean", "peak", "spread"]] * 3
    assert count_transfers["tolist"] >= 3
