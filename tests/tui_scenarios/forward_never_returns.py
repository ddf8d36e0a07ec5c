"""The model's forward never returns (it waits on an event nobody sets), and it prints first."""

import threading

import torch
from torch import nn

from workbench import Scenario


class Stuck(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("forward: entering the wait that never ends")
        threading.Event().wait()  # user code that hangs: no timeout, no way out
        return self.fc(x)


def build(device):
    torch.manual_seed(0)
    model = Stuck().to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="forward-never-returns")
