"""BROKEN on purpose: 91% of the ReLU units in ``hidden.act`` are dead from the first step.

The hidden layer's bias was initialised to -2 (a value copied from a model
whose inputs were scaled 10x larger), so for most units the pre-activation
is negative for every sample: the ReLU outputs 0, passes no gradient, and
those units never recover.

Find it: ``workbench run scenarios/broken/dead_relu.py`` reports
``dead_units`` on ``hidden.act`` at every step (91% of the units are zero
for the whole batch) while the loss sits at ln 2 = 0.693, chance level for
two classes. Fix: default bias init, LeakyReLU, or normalised inputs.
"""

import torch
from torch import nn

from workbench import Scenario


def make_batches(seed: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(16):
        x = torch.randn(128, 20, generator=g)
        batches.append((x, (x[:, :5].sum(dim=1) > 0).long()))
    return batches


def build(device):
    torch.manual_seed(0)
    hidden = nn.Sequential(nn.Linear(20, 64), nn.ReLU())
    with torch.no_grad():
        hidden[0].bias.fill_(-2.0)  # the bug
    model = nn.Sequential()
    model.add_module("hidden", hidden)
    model.add_module("head", nn.Linear(64, 2))
    # Name the ReLU "hidden.act" for readable findings.
    hidden.add_module("act", hidden._modules.pop("1"))
    model = model.to(device)
    return Scenario(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        loss_fn=nn.CrossEntropyLoss(),
        data=make_batches(),
        name="broken-dead-relu",
        description="BROKEN: hidden bias initialised to -2, most ReLU units dead",
        seed=0,
        tags=("broken",),
    )
