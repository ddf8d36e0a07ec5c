"""Each forward takes 0.3 s (a sleep): long enough to press keys while a phase runs."""

import time

import torch
from torch import nn

from workbench import Scenario


class Slow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.3)
        return self.fc2(torch.relu(self.fc1(x)))


def build(device):
    torch.manual_seed(0)
    model = Slow().to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="slow-forward")
