import torch
from torch import nn

from workbench import Scenario


def build(device):
    model = nn.Linear(4, 2).to(device)
    # A dict per batch instead of (inputs, targets).
    data = [{"x": torch.randn(8, 4), "y": torch.randint(0, 2, (8,))}]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
