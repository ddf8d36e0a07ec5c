import torch
from torch import nn

from workbench import Scenario


def build(device):
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).to(device)
    data = [(torch.randn(1, 4), torch.randint(0, 2, (1,)))]  # batch size 1 under BatchNorm in training
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
