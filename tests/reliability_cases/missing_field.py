import torch
from torch import nn

from workbench import Scenario


def build(device):
    model = nn.Linear(4, 2).to(device)
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    data=[(torch.randn(8, 4), torch.randint(0, 2, (8,)))])
