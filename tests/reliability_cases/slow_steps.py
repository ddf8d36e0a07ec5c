"""A healthy but slow scenario (each step sleeps) for interrupt tests.

With SLOW_STEPS_MARKER set, each forward appends a line to that file, so a test can wait for
steps to have run instead of guessing with a sleep."""

import os
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
        marker = os.environ.get("SLOW_STEPS_MARKER")
        if marker:
            with open(marker, "a") as fh:
                fh.write("forward\n")
        return self.fc(x)


def build(device):
    torch.manual_seed(0)
    model = Slow().to(device)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(8)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
