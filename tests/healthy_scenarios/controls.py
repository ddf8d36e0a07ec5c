"""Healthy training setups that look like the silent bugs but are right: no error, no warning.

Loaded by tests/test_diagnosis.py as ``controls.py:build_<name>``; 40 steps each must be quiet.
Each learns a task that is learnable (labels follow from the inputs), so "no progress" must not fire.
"""

import math

import torch
from torch import nn

from workbench import Scenario

N, D, C = 64, 8, 4


def _classification(n: int = 8, seed: int = 0, d: int = D):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, C, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(N, d, generator=g)
        out.append((x, (x @ w).argmax(dim=1)))
    return out


def build_logsoftmax_nll(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, C), nn.LogSoftmax(dim=1)).to(device)
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-2), nn.NLLLoss(), _classification())


def build_sigmoid_bce(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid()).to(device)
    data = [(x, (y % 2).float().unsqueeze(1)) for x, y in _classification()]
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-2), nn.BCELoss(), data)


def build_logits_cross_entropy(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, C)).to(device)
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-2), nn.CrossEntropyLoss(), _classification())


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(D, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, C)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def build_transformer_encoder(device):
    torch.manual_seed(0)
    model = _Encoder().to(device)
    data = [(x.reshape(N // 4, 4, D), y.reshape(N // 4, 4)[:, 0]) for x, y in _classification()]
    data = [(x, (x[:, 0] @ torch.ones(D)).gt(0).long() + 2 * (x[:, 1, 0] > 0).long()) for x, _ in data]
    return Scenario(model, torch.optim.AdamW(model.parameters(), 1e-3), nn.CrossEntropyLoss(), data)


class _GRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(D, 32, batch_first=True)
        self.head = nn.Linear(32, C)

    def forward(self, x):
        h, _ = self.gru(x)
        return self.head(h[:, -1])


def build_gru(device):
    torch.manual_seed(0)
    model = _GRU().to(device)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(D, C, generator=g)
    data = []
    for _ in range(8):
        x = torch.randn(N, 12, D, generator=g)
        data.append((x, (x.sum(dim=1) @ w).argmax(dim=1)))
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-2), nn.CrossEntropyLoss(), data)


def build_sgd_warmup_cosine(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, C)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    warmup, total = 5, 40

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return Scenario(model, opt, nn.CrossEntropyLoss(), _classification(), scheduler=sched)


def build_regression(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, 1)).to(device)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D, 1, generator=g)
    data = []
    for _ in range(8):
        x = torch.randn(N, D, generator=g)
        data.append((x, x @ w + 0.1 * torch.randn(N, 1, generator=g)))  # (N, 1) like the output
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-2), nn.MSELoss(), data)


class _LayerScaleBlock(nn.Module):
    """A ConvNeXt-style block: norm, MLP, then a per-channel scale initialised to 1e-6."""

    def __init__(self, dim: int, init: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x + self.gamma * self.fc2(self.act(self.fc1(self.norm(x))))


class _LayerScaleNet(nn.Module):
    def __init__(self, blocks: int = 4, dim: int = 32):
        super().__init__()
        self.stem = nn.Linear(D, dim)
        self.blocks = nn.Sequential(*[_LayerScaleBlock(dim) for _ in range(blocks)])
        self.head = nn.Linear(dim, C)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def build_layerscale_adamw(device):
    torch.manual_seed(0)
    model = _LayerScaleNet().to(device)
    return Scenario(model, torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.05), nn.CrossEntropyLoss(),
                    _classification())


def build_layerscale_sgd(device):
    torch.manual_seed(0)
    model = _LayerScaleNet().to(device)
    return Scenario(model, torch.optim.SGD(model.parameters(), 0.05, momentum=0.9), nn.CrossEntropyLoss(),
                    _classification())
