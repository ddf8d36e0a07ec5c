"""A DataLoader worker process is killed (SIGKILL, as the OOM killer does) on the 3rd batch."""

import os
import signal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from workbench import Scenario


class Dying(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        if i == 16:
            os.kill(os.getpid(), signal.SIGKILL)
        g = torch.Generator().manual_seed(i)
        return torch.randn(4, generator=g), int(i % 2)


def build(device):
    torch.manual_seed(0)
    model = nn.Linear(4, 2).to(device)
    data = DataLoader(Dying(), batch_size=8, num_workers=1)
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
