"""A bidirectional GRU over multichannel time series, trained with RMSprop.

Each sample is 8 noisy channels; the class is the frequency of a sine wave
hidden in them. The GRU reads both directions; the head sees the mean of
its outputs over time.
"""

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario

STEPS = 32
CHANNELS = 8
CLASSES = 5


def make_waves(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    t = torch.arange(STEPS).float()
    freq = 0.5 + labels.float()[:, None]  # cycles per window
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    wave = torch.sin(2 * math.pi * freq * t / STEPS + phase)  # (n, STEPS)
    mixing = torch.randn(1, 1, CHANNELS, generator=g)
    x = wave[:, :, None] * mixing + 0.5 * torch.randn(n, STEPS, CHANNELS, generator=g)
    return TensorDataset(x, labels)


class BiGRUClassifier(nn.Module):
    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.gru = nn.GRU(CHANNELS, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out.mean(dim=1))


def build(device):
    torch.manual_seed(0)
    model = BiGRUClassifier().to(device)
    return Scenario(
        model=model,
        optimizer=torch.optim.RMSprop(model.parameters(), lr=3e-3),
        loss_fn=nn.CrossEntropyLoss(),
        data=DataLoader(make_waves(2048, seed=31), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(32)),
        eval_data=DataLoader(make_waves(256, seed=33), batch_size=128),
        name="gru-bidirectional",
        description="bidirectional GRU over 8-channel time series, 5 frequency classes, RMSprop",
        seed=0,
        tags=("rnn",),
    )
