"""BROKEN on purpose: NaN appears at step 7 in module ``norm``.

A hand-written feature normalisation divides by the batch standard
deviation with no epsilon. Batch 7 comes from a shard where sensor 3 was
stuck at 0, so that feature's std is exactly 0 and 0/0 = NaN. From step 8
every weight is NaN as well.

Find it: ``workbench run scenarios/broken/nan_at_step7.py --break-on nan_inf``
stops at step 7 and names ``norm`` as the first module whose output is
non-finite while its inputs were finite. Fix: ``(x - mean) / (std + 1e-5)``
or ``nn.BatchNorm1d``.
"""

import torch
from torch import nn

from workbench import Scenario

FEATURES, BATCH = 12, 64


class FeatureNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=0)) / x.std(dim=0)  # the bug: no epsilon


def make_batches(seed: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(FEATURES, 1, generator=g)
    batches = []
    for i in range(16):
        x = torch.randn(BATCH, FEATURES, generator=g)
        if i == 7:
            x[:, 3] = 0.0  # the stuck sensor
        batches.append((x, x @ w + 0.1 * torch.randn(BATCH, 1, generator=g)))
    return batches


def build(device):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("norm", FeatureNorm())
    model.add_module("hidden", nn.Linear(FEATURES, 32))
    model.add_module("act", nn.Tanh())
    model.add_module("out", nn.Linear(32, 1))
    model = model.to(device)
    return Scenario(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        loss_fn=nn.MSELoss(),
        data=make_batches(),
        name="broken-nan-at-step7",
        description="BROKEN: hand-written normalisation without eps; NaN at step 7 in `norm`",
        seed=0,
        tags=("broken",),
    )
