"""The model's forward ends its process with os._exit(7) on its first call, after printing to stderr."""

import os
import sys

import torch
from torch import nn

from workbench import Scenario


class Dies(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("about to leave with os._exit(7)", file=sys.stderr, flush=True)
        os._exit(7)


def build(device):
    torch.manual_seed(0)
    model = Dies().to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="os-exit-in-forward")
