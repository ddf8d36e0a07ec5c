"""Small, deterministic broken models: each ``build_<kind>`` trips one health rule.

Loaded by the engine tests as ``pathologies.py:build_<kind>``. Every model is
tiny (CPU, milliseconds per step) and seeded, so the step and module where
each problem shows up are fixed.
"""

import torch
from torch import nn

from workbench import Scenario

N, D = 64, 8


def _data(n_batches: int = 4, d: int = D, classes: int | None = None, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(N, d, generator=g)
        y = torch.randint(0, classes, (N,), generator=g) if classes else scale * torch.randn(N, 1, generator=g)
        batches.append((x, y))
    return batches


def _scenario(model, data, loss_fn=None, opt=None, **kw) -> Scenario:
    return Scenario(
        model=model,
        optimizer=opt or torch.optim.Adam(model.parameters(), lr=1e-3),
        loss_fn=loss_fn or nn.MSELoss(),
        data=data,
        seed=0,
        **kw,
    )


class Log(nn.Module):
    """log(x) of values that are negative half the time: NaN in the forward."""

    def forward(self, x):
        return torch.log(x)


class NanInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class BadBackward(nn.Module):
    """Identity forward, NaN gradient backward: finite forward, non-finite backward only."""

    def forward(self, x):
        return NanInBackward.apply(x)


class TwoBranch(nn.Module):
    """The ``unused`` branch is computed and then detached: its parameters get no gradient."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(D, 1)
        self.unused = nn.Linear(D, 1)

    def forward(self, x):
        return self.used(x) + 0.0 * self.unused(x).detach()


def build(device):
    return build_nan_forward(device)


def build_nan_forward(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), Log(), nn.Linear(16, 1)).to(device)
    return _scenario(model, _data())


def build_nan_backward(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), BadBackward(), nn.Linear(16, 1)).to(device)
    return _scenario(model, _data())


def build_nan_input(device):
    torch.manual_seed(0)
    data = _data()
    data[0][0][3, 2] = float("nan")  # one corrupt sample in the first batch
    model = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 1)).to(device)
    return _scenario(model, data)


def build_dead_relu(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 1)).to(device)
    with torch.no_grad():
        model[0].bias.fill_(-20.0)  # every pre-activation negative: every unit dead
    return _scenario(model, _data())


def build_detached(device):
    torch.manual_seed(0)
    return _scenario(TwoBranch().to(device), _data())


def build_exploding(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 1)).to(device)
    # Targets in the tens of thousands with an unscaled MSE: gradients in the 1e5s.
    return _scenario(model, _data(scale=3e4))


def build_saturated(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32), nn.Sigmoid(), nn.Linear(32, 1)).to(device)
    with torch.no_grad():
        model[0].weight.mul_(200.0)  # pre-activations in the hundreds: sigmoid pinned at 0/1
    return _scenario(model, _data())


def build_vanishing(device):
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Linear(D, D), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(D, 1)).to(device)
    # SGD: Adam would rescale the tiny gradients and hide the problem in the updates.
    return _scenario(model, _data(), opt=torch.optim.SGD(model.parameters(), lr=0.1))


def build_tiny_updates(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 1)).to(device)
    return _scenario(model, _data(), opt=torch.optim.SGD(model.parameters(), lr=1e-12))


def build_huge_updates(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1)).to(device)
    # Adam moves every weight by ~lr per step; lr=5 on weights of size ~0.3 rewrites them.
    return _scenario(model, _data(), opt=torch.optim.Adam(model.parameters(), lr=5.0))


def build_diverging(device):
    torch.manual_seed(0)
    model = nn.Linear(D, 1).to(device)
    # Plain SGD with a step size above 2/lambda_max of the quadratic: the loss grows geometrically.
    return _scenario(model, _data(scale=1.0), opt=torch.optim.SGD(model.parameters(), lr=1.5))


class RaiseAt(nn.Module):
    def __init__(self, step: int):
        super().__init__()
        self.fc = nn.Linear(D, 1)
        self.calls = 0
        self.step = step

    def forward(self, x):
        if self.calls == self.step:
            self.calls += 1
            raise RuntimeError(f"deliberate failure at call {self.step}")
        self.calls += 1
        return self.fc(x)


def build_raises(device):
    torch.manual_seed(0)
    return _scenario(RaiseAt(3).to(device), _data())


def build_bad_loss(device):
    torch.manual_seed(0)
    model = nn.Linear(D, 1).to(device)
    return _scenario(model, _data(), loss_fn=lambda out, y: (out - y) ** 2)  # not reduced: not a scalar


def build_multi_input(device):
    """Two inputs, the second through a module that runs twice (a shared ReLU)."""
    torch.manual_seed(0)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(D, 8)
            self.b = nn.Linear(4, 8)
            self.act = nn.ReLU()
            self.head = nn.Linear(8, 1)

        def forward(self, x, z):
            return self.head(self.act(self.a(x)) + self.act(self.b(z)))

    g = torch.Generator().manual_seed(1)
    data = [((torch.randn(N, D, generator=g), torch.randn(N, 4, generator=g)), torch.randn(N, 1, generator=g))
            for _ in range(3)]
    return _scenario(Two().to(device), data)


def build_spike(device):
    """Healthy, except batch 6 whose inputs are 300x too large (a unit bug in one shard)."""
    torch.manual_seed(0)
    data = _data(n_batches=8)
    data[6] = (data[6][0] * 300.0, data[6][1])
    model = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 1)).to(device)
    return _scenario(model, data, opt=torch.optim.SGD(model.parameters(), lr=1e-3))
