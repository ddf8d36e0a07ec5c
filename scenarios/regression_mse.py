"""Non-linear regression with a Tanh MLP, MSELoss, Adam and a cosine LR schedule.

Targets are a smooth function of 16 inputs plus noise.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario


def make_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(50)  # the target function is the same for every split
    w1 = 0.25 * torch.randn(16, 4, generator=g)
    w2 = torch.randn(4, generator=g)
    gd = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=gd)
    y = torch.sin(x @ w1) @ w2 + 0.05 * torch.randn(n, generator=gd)
    return TensorDataset(x, y[:, None])


def build(device):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(),
        nn.Linear(64, 64), nn.Tanh(),
        nn.Linear(64, 1),
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return Scenario(
        model=model,
        optimizer=optimizer,
        loss_fn=nn.MSELoss(),
        data=DataLoader(make_data(4096, seed=51), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(52)),
        eval_data=DataLoader(make_data(512, seed=53), batch_size=256),
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200, eta_min=1e-4),
        name="regression-mse",
        description="Tanh MLP regression, MSELoss, Adam with a cosine LR schedule",
        seed=0,
    )
