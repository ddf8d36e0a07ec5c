"""A small CNN image classifier on synthetic 32x32 RGB images.

Conv(3,64,3)-ReLU-MaxPool-Conv(64,128,3)-ReLU-MaxPool-Linear(128*6*6 -> 10).
``build_batchnorm`` is the same network with BatchNorm2d after each conv,
in-place ReLUs and Dropout before the classifier.

Each class is a fixed colour-and-texture template; samples add noise and a
random brightness, so the task is learnable within a few dozen Adam steps.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario


def make_images(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 3, 8, 8, generator=g)
    templates = nn.functional.interpolate(templates, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.randint(0, 10, (n,), generator=g)
    brightness = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    images = templates[labels] * brightness + 0.8 * torch.randn(n, 3, 32, 32, generator=g)
    return TensorDataset(images, labels)


class ImageClassifier(nn.Module):
    def __init__(self, batchnorm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            if batchnorm:
                return [nn.Conv2d(c_in, c_out, 3), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            return [nn.Conv2d(c_in, c_out, 3), nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(3, 64), *block(64, 128))
        head: list[nn.Module] = [nn.Flatten()]
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(128 * 6 * 6, 10))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _scenario(device, model: nn.Module, name: str, description: str) -> Scenario:
    train = make_images(2048, seed=11)
    held_out = make_images(256, seed=12)
    return Scenario(
        model=model.to(device),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        loss_fn=nn.CrossEntropyLoss(),
        data=DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(13)),
        eval_data=DataLoader(held_out, batch_size=128),
        name=name,
        description=description,
        seed=0,
        tags=("cnn",),
    )


def build(device):
    torch.manual_seed(0)
    return _scenario(device, ImageClassifier(), name="cnn-image",
                     description="2-conv CNN classifier on synthetic 32x32 RGB images, Adam")


def build_batchnorm(device):
    torch.manual_seed(0)
    return _scenario(device, ImageClassifier(batchnorm=True, dropout=0.25), name="cnn-image-bn",
                     description="the CNN with BatchNorm2d, in-place ReLU and Dropout, Adam")
