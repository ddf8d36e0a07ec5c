"""A tiny ResNet: residual blocks (conv-BN-ReLU-conv-BN + skip) on 16x16 images.

Uses in-place ReLU after BatchNorm, the pattern that breaks naive backward
hooks, and SGD with Nesterov momentum and weight decay.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario


def make_images(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(70)
    templates = torch.randn(6, 3, 4, 4, generator=g)
    templates = nn.functional.interpolate(templates, size=(16, 16), mode="nearest")
    gd = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 6, (n,), generator=gd)
    x = templates[labels] + 0.7 * torch.randn(n, 3, 16, 16, generator=gd)
    return TensorDataset(x, labels)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def build(device):
    torch.manual_seed(0)
    model = TinyResNet().to(device)
    return Scenario(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        loss_fn=nn.CrossEntropyLoss(),
        data=DataLoader(make_images(2048, seed=71), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(72)),
        eval_data=DataLoader(make_images(256, seed=73), batch_size=128),
        name="resnet-tiny",
        description="2-block residual CNN with BatchNorm and in-place ReLU, SGD Nesterov",
        seed=0,
        tags=("cnn",),
    )
