"""BROKEN on purpose: the forward raises at step 3.

The model flattens with a hard-coded batch size (``x.view(32, 4 * 8 * 8)``). The
dataset has 101 samples and the DataLoader keeps the last partial batch,
so batches 0-2 have 32 samples and batch 3 has 5: the view fails at step 3.

Find it: ``workbench run scenarios/broken/raises_at_step3.py`` exits 2 with
"step 3, forward phase: RuntimeError: shape '[32, 256]' is invalid for input of size 1280"
pointing at the line below; the TUI shows the same error and keeps the
three good steps. Fix: ``x.flatten(1)`` (or ``drop_last=True``).
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(x.view(32, 4 * 8 * 8))  # the bug: the batch size is not always 32


def build(device):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(9)
    images = torch.randn(101, 1, 8, 8, generator=g)
    labels = torch.randint(0, 3, (101,), generator=g)
    model = Classifier().to(device)
    return Scenario(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        loss_fn=nn.CrossEntropyLoss(),
        data=DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=False),
        name="broken-raises-at-step3",
        description="BROKEN: view(32, 256) with a partial last batch; raises at step 3",
        seed=0,
        tags=("broken",),
    )
