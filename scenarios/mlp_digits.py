"""The classic 784-128-10 MLP on synthetic 28x28 "digits".

Each of the 10 classes has a fixed random stroke pattern; samples are that
pattern, randomly shifted in brightness, plus noise. Learnable in a few
dozen SGD steps, generated in memory from a seed (no downloads).
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario


def make_digits(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(10, 28, 28, generator=g) > 0.7).float()
    labels = torch.randint(0, 10, (n,), generator=g)
    brightness = 0.5 + torch.rand(n, 1, 1, generator=g)
    images = prototypes[labels] * brightness + 0.6 * torch.randn(n, 28, 28, generator=g)
    return TensorDataset(images.reshape(n, 784), labels)


class MLP(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def build(device):
    torch.manual_seed(0)
    model = MLP().to(device)
    train = make_digits(4096, seed=1)
    held_out = make_digits(512, seed=2)
    return Scenario(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        loss_fn=nn.CrossEntropyLoss(),
        data=DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(3)),
        eval_data=DataLoader(held_out, batch_size=256),
        name="mlp-digits",
        description="784-128-10 MLP, ReLU, SGD+momentum on synthetic 28x28 digits",
        seed=0,
    )
