"""The scenario prints to stdout and stderr in build and in its forward."""

import sys

import torch
from torch import nn

from workbench import Scenario


class Chatty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print(f"forward sees a batch of {x.shape[0]}")
        sys.stderr.write("stderr from forward\n")
        return self.fc(x)


def build(device):
    torch.manual_seed(0)
    print("building the chatty scenario")
    model = Chatty().to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="prints")
