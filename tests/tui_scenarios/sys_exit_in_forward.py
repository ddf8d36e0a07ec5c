"""The model's forward calls sys.exit(3) on its second call (user code that quits the process)."""

import sys

import torch
from torch import nn

from workbench import Scenario


class Quits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            sys.exit(3)  # the line the error panel names
        return self.fc(x)


def build(device):
    torch.manual_seed(0)
    model = Quits().to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="sys-exit-in-forward")
