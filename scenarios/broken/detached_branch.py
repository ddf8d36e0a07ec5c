"""BROKEN on purpose: the ``context`` tower never learns (its output is detached).

A two-tower model: ``main`` reads the features, ``context`` reads a second
input. Someone added ``.detach()`` to the context embedding while debugging
and left it in, so no gradient reaches ``context``'s parameters: they stay
at their initial values forever while the loss still goes down a bit.

Find it: ``workbench run scenarios/broken/detached_branch.py`` reports
``no_gradient`` (error) on ``context.0.weight`` and friends. Fix: remove
the ``.detach()``.
"""

import torch
from torch import nn

from workbench import Scenario


class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.context = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        c = self.context(ctx).detach()  # the bug
        return self.head(torch.cat([self.main(x), c], dim=1))


def make_batches(seed: int = 5) -> list:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(16):
        x, ctx = torch.randn(64, 16, generator=g), torch.randn(64, 8, generator=g)
        y = x[:, :4].sum(dim=1, keepdim=True) + ctx[:, :2].sum(dim=1, keepdim=True)
        batches.append(((x, ctx), y))
    return batches


def build(device):
    torch.manual_seed(0)
    model = TwoTower().to(device)
    return Scenario(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=3e-3),
        loss_fn=nn.MSELoss(),
        data=make_batches(),
        name="broken-detached-branch",
        description="BROKEN: a stray .detach() leaves the context tower without gradients",
        seed=0,
        tags=("broken",),
    )
