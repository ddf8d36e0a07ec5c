"""Small models with the bugs that raise nothing: each ``build_<kind>`` trips one diagnosis rule.

Loaded by tests/test_diagnosis.py as ``silent_bugs.py:build_<kind>``. Tiny, seeded, CPU.
"""

import math

import torch
from torch import nn

from workbench import Scenario

N, D, C = 64, 8, 5


def _batches(n: int = 4, d: int = D, classes: int | None = C, seed: int = 0, scale: float = 1.0, shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = scale * torch.randn(N, d, generator=g) + shift
        y = torch.randint(0, classes, (N,), generator=g) if classes else x[:, :1] * 0.5 + 0.1 * torch.randn(N, 1, generator=g)
        out.append((x, y))
    return out


def _mlp(out: int = C, last: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, out)]
    return nn.Sequential(*layers, *([last] if last is not None else []))


def build_softmax_into_cross_entropy(device):
    model = _mlp(last=nn.Softmax(dim=1)).to(device)
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), nn.CrossEntropyLoss(), _batches())


def build_sigmoid_into_bce_with_logits(device):
    model = _mlp(out=1, last=nn.Sigmoid()).to(device)
    data = [(x, (y % 2).float().unsqueeze(1)) for x, y in _batches()]
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), nn.BCEWithLogitsLoss(), data)


def build_softmax_into_nll(device):
    model = _mlp(last=nn.Softmax(dim=1)).to(device)
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), nn.NLLLoss(), _batches())


def build_broadcast_mse(device):
    model = _mlp(out=1).to(device)
    data = [(x, y.squeeze(1)) for x, y in _batches(classes=None)]  # (N,) targets for (N, 1) outputs
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), nn.MSELoss(), data)


def build_broadcast_manual(device):
    model = _mlp(out=1).to(device)
    data = [(x, y.squeeze(1)) for x, y in _batches(classes=None)]
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), lambda out, y: ((out - y) ** 2).mean(), data)


def build_loss_warning(device):
    import warnings

    model = _mlp().to(device)

    def loss_fn(out, y):
        warnings.warn("label smoothing ignored for this target dtype", UserWarning)
        return nn.functional.cross_entropy(out, y)

    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), loss_fn, _batches())


def build_late_loss_warning(device):
    """A loss that warns first on step 6, a step whose loss calls are not watched."""
    import warnings

    model = _mlp().to(device)
    calls = [0]

    def loss_fn(out, y):
        calls[0] += 1
        if calls[0] >= 7:
            warnings.warn("targets past the last class were clipped", UserWarning)
        return nn.functional.cross_entropy(out, y)

    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), loss_fn, _batches())


def build_nan_target(device):
    model = _mlp(out=1).to(device)
    data = _batches(classes=None)
    data[2][1][17, 0] = float("nan")  # batch 2, sample 17
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), nn.MSELoss(), data)


def build_nan_input(device):
    model = _mlp().to(device)
    data = _batches()
    data[1][0][5, 3] = float("inf")  # batch 1, sample 5
    data[1][0][40, 0] = float("nan")  # and sample 40
    return Scenario(model, torch.optim.SGD(model.parameters(), 0.01), nn.CrossEntropyLoss(), data)


def build_raw_pixels(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, C)).to(device)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, 256, (16, 3, 8, 8), generator=g).float(), torch.randint(0, C, (16,), generator=g))
            for _ in range(2)]
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), nn.CrossEntropyLoss(), data)


def build_unscaled_features(device):
    model = _mlp().to(device)
    return Scenario(model, torch.optim.Adam(model.parameters(), 1e-3), nn.CrossEntropyLoss(),
                    _batches(scale=40.0, shift=300.0))


def build_unowned_head(device):
    torch.manual_seed(0)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(D, 16)
            self.head = nn.Linear(16, C)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    model = TwoHeads().to(device)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    model.head = nn.Linear(16, C).to(device)  # replaced after the optimizer was built
    return Scenario(model, opt, nn.CrossEntropyLoss(), _batches())


def build_lr_collapse(device):
    model = _mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    # A per-epoch StepLR stepped every batch: /10 per step.
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    return Scenario(model, opt, nn.CrossEntropyLoss(), _batches(), scheduler=sched)


def build_no_progress(device):
    # Labels independent of the inputs and a learning rate far too small: stuck at ln C.
    model = _mlp().to(device)
    return Scenario(model, torch.optim.SGD(model.parameters(), 1e-5), nn.CrossEntropyLoss(), _batches(n=8))


def build_weight_decay(device):
    model = _mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=5.0)
    return Scenario(model, opt, nn.CrossEntropyLoss(), _batches(n=8))


class _Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


def build_oscillating(device):
    # A rate regressor (exp output, MSE) with the lr a little too high: SGD settles into a
    # 2-cycle around the minimum, the loss alternating low/high by about 2x for ever.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 1), _Exp()).to(device)
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(N, D, generator=g))
    x = math.sqrt(N) * q  # whitened inputs
    y = torch.exp(x @ (0.1 * torch.randn(D, 1, generator=g)))
    return Scenario(model, torch.optim.SGD(model.parameters(), lr=0.5), nn.MSELoss(), [(x, y)])


def build_rnn_through_time(device):
    torch.manual_seed(0)

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(4, 32, batch_first=True)
            with torch.no_grad():  # recurrent weights with a spectral radius of 2.5: BPTT multiplies by it
                self.rnn.weight_hh_l0.copy_(2.5 * torch.linalg.qr(torch.randn(32, 32))[0])
            self.out = nn.Linear(32, 1)

        def forward(self, x):
            h, _ = self.rnn(x)
            return self.out(h[:, -1])

    model = Seq().to(device)
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(16, 40, 4, generator=g), torch.randn(16, 1, generator=g)) for _ in range(2)]
    return Scenario(model, torch.optim.SGD(model.parameters(), 1e-6), nn.MSELoss(), data)
