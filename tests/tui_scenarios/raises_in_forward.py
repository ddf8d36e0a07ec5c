"""The model's forward raises on its second call: step 1 fails in the forward phase."""

import torch
from torch import nn

from workbench import Scenario


class Flaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("flaky forward: deliberate failure on call 2")
        return self.fc(x)


def build(device):
    torch.manual_seed(0)
    model = Flaky().to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="raises-in-forward")
