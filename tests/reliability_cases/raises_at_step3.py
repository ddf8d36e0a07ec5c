"""Trains normally, then the forward pass raises at step 3 (the 4th batch)."""

import torch
from torch import nn

from workbench import Scenario


class Flaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("flaky layer failed on its 4th call")
        return self.fc(x)


def build(device):
    torch.manual_seed(0)
    model = Flaky().to(device)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(8)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
