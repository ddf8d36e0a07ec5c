"""A tiny healthy scenario the hostile cases wrap (not a scenario itself: `_` files are skipped).

``tiny(device, on_forward=f)`` calls ``f(call_number)`` at the start of each forward, so a
case file only says what its user code does wrong, and when.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from workbench import Scenario


class Hooked(nn.Module):
    def __init__(self, on_forward: Callable[[int], None] | None) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.on_forward = on_forward
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.on_forward is not None:
            self.on_forward(self.calls)
        return self.fc(x)


def tiny(device, on_forward: Callable[[int], None] | None = None, **fields) -> Scenario:  # noqa: ANN001
    torch.manual_seed(0)
    model = Hooked(on_forward).to(device)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(8)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, **fields)
