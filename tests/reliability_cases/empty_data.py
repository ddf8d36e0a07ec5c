import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario


def build(device):
    model = nn.Linear(4, 2).to(device)
    empty = TensorDataset(torch.randn(0, 4), torch.randint(0, 2, (0,)))
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=DataLoader(empty, batch_size=8))
