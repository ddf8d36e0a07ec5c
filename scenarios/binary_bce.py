"""Binary classification of two noisy interleaved spirals.

A LeakyReLU MLP with a Sigmoid output and BCELoss (the classic setup);
``build_logits`` is the numerically safer BCEWithLogitsLoss form with a
step LR scheduler.
"""

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario


def make_spirals(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    r = torch.rand(n, generator=g) * 2.5 + 0.3
    angle = 1.6 * r + math.pi * labels.float()
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    x += 0.15 * torch.randn(n, 2, generator=g)
    return TensorDataset(x, labels.float()[:, None])


def _mlp(sigmoid: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Linear(2, 64), nn.LeakyReLU(0.1),
        nn.Linear(64, 64), nn.LeakyReLU(0.1),
        nn.Linear(64, 1),
    ]
    if sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def _scenario(device, sigmoid: bool, description: str) -> Scenario:
    torch.manual_seed(0)
    model = _mlp(sigmoid).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Scenario(
        model=model,
        optimizer=optimizer,
        loss_fn=nn.BCELoss() if sigmoid else nn.BCEWithLogitsLoss(),
        data=DataLoader(make_spirals(4096, seed=61), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(62)),
        eval_data=DataLoader(make_spirals(512, seed=63), batch_size=256),
        scheduler=None if sigmoid else torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.5),
        scheduler_interval=None if sigmoid else "step",  # halved every 30 batches, as meant
        name="binary-bce" if sigmoid else "binary-bce-logits",
        description=description,
        seed=0,
    )


# Each build names its description where `workbench list --static` can read it.
def build(device):
    return _scenario(device, sigmoid=True, description="LeakyReLU MLP, Sigmoid + BCELoss on two spirals, SGD")


def build_logits(device):
    return _scenario(device, sigmoid=False,
                     description="LeakyReLU MLP, BCEWithLogitsLoss on two spirals, SGD + StepLR")
