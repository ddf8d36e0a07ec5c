"""A small MLP whose third batch carries a NaN input: fc1's output turns NaN at step 3.

Used by the TUI tests: a nan_inf breakpoint must stop at step 3 on module fc1.
"""

import torch
from torch import nn

from workbench import Scenario

BAD_STEP = 3


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def build(device):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batches = []
    for i in range(8):
        x = torch.randn(16, 8, generator=g)
        if i == BAD_STEP:
            x[2, 5] = float("nan")
        batches.append((x, torch.randint(0, 3, (16,), generator=g)))
    model = Net().to(device)
    return Scenario(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(),
        data=batches,
        name="nan-at-step-3",
        description="a NaN in the input of step 3",
    )
