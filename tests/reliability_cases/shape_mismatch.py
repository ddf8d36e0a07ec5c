import torch
from torch import nn

from workbench import Scenario


def build(device):
    model = nn.Linear(4, 3).to(device)
    # MSELoss between (8, 3) outputs and (8, 5) targets cannot broadcast.
    data = [(torch.randn(8, 4), torch.randn(8, 5))]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.MSELoss(), data=data)
