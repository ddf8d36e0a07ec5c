"""A healthy but slow scenario (each step sleeps) for interrupt tests."""

import time

import torch
from torch import nn

from workbench import Scenario


class Slow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        time.sleep(0.05)
        return self.fc(x)


def build(device):
    torch.manual_seed(0)
    model = Slow().to(device)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(8)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
