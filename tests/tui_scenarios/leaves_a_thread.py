"""build() starts a non-daemon thread that never ends."""

import threading

import torch
from torch import nn

from workbench import Scenario


def build(device):
    torch.manual_seed(0)
    threading.Thread(target=threading.Event().wait, name="user-thread-forever").start()
    model = nn.Linear(4, 2).to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="leaves-a-thread")
