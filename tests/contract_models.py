"""Shapes of real training code, written locally (timm and torchvision do not install here).

Each is a scenario file's text: ``write(tmp_path, NAME)`` puts it on disk for the
loader and the commands. They follow what the originals do:

* ``TIME_MAJOR_LM``: pytorch/examples word_language_model: an LSTM LM on
  ``(seq, batch)`` token tensors, the hidden state carried from batch to batch
  (detached, "truncated BPTT") in a closure, ``batch_dim=1``, clipping.
* ``PADDED_ENCODER``: ``nn.TransformerEncoder(batch_first=True)`` with a
  ``src_key_padding_mask``; batches are ``(tokens, mask, labels)`` triples
  taken apart by ``forward(model, batch)`` and ``loss_fn(outputs, batch)``.
* ``TWO_LOSSES``: a model with a classification and a reconstruction head;
  ``loss_fn`` returns both parts by name; ``clip_grad_norm`` and an EMA in ``before_step``.
* ``TIMM_SCHEDULER``: a scheduler in timm's shape (no torch base class,
  ``step(epoch)`` and ``step_update(num_updates)``), driven by ``scheduler_step``.
"""

from __future__ import annotations

from pathlib import Path

TIME_MAJOR_LM = '''
import torch
from torch import nn
from workbench import Scenario

VOCAB, SEQ, BATCH = 50, 12, 10


class RNNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, 16)
        self.rnn = nn.LSTM(16, 32)  # time-major: (seq, batch, feature)
        self.decoder = nn.Linear(32, VOCAB)

    def forward(self, tokens, hidden):
        out, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(out), hidden


def build(device):
    torch.manual_seed(0)
    model = RNNModel().to(device)
    g = torch.Generator().manual_seed(1)
    stream = (torch.arange(SEQ * BATCH * 6) * 3 + torch.randint(0, 2, (SEQ * BATCH * 6,), generator=g)) % VOCAB
    columns = stream.reshape(BATCH, -1).t()  # batchify: (time, batch)
    data = [(columns[i:i + SEQ], columns[i + 1:i + 1 + SEQ]) for i in range(0, columns.shape[0] - SEQ - 1, SEQ)]
    carried = {"hidden": None}

    def forward(model, inputs):
        (tokens,) = inputs
        hidden = carried["hidden"]
        if hidden is not None and hidden[0].shape[1] != tokens.shape[1]:
            hidden = None  # a micro-batch or a rank's shard: a fresh state of its width
        logits, hidden = model(tokens, hidden)
        carried["hidden"] = tuple(h.detach() for h in hidden)  # truncated BPTT
        return logits

    def loss_fn(logits, targets):
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))

    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), loss_fn=loss_fn,
                    data=data, forward=forward, batch_dim=1, clip_grad_norm=0.25,
                    description="word_language_model shape: time-major LSTM, carried hidden state",
                    carries_state=True{state_hooks})
'''

STATE_HOOKS = (", state=lambda: carried['hidden'], "
               "load_state=lambda value: carried.__setitem__('hidden', value)")

PADDED_ENCODER = '''
import torch
from torch import nn
from workbench import Scenario


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens, padding):
        h = self.encoder(self.emb(tokens), src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1))


def build(device):
    torch.manual_seed(0)
    model = Classifier().to(device)
    g = torch.Generator().manual_seed(2)
    data = []
    for _ in range(6):
        labels = torch.randint(0, 3, (8,), generator=g)
        tokens = labels[:, None] * 10 + torch.randint(0, 10, (8, 9), generator=g)
        lengths = torch.randint(4, 10, (8, 1), generator=g)
        padding = torch.arange(9) >= lengths  # True: a padded position
        data.append((tokens, padding, labels))
    return Scenario(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=3e-3),
                    loss_fn=lambda out, batch: nn.functional.cross_entropy(out, batch[2]),
                    forward=lambda model, batch: model(batch[0], batch[1]), data=data,
                    description="TransformerEncoder with a padding mask, (tokens, mask, labels) batches")
'''

TWO_LOSSES = '''
import copy
import torch
from torch import nn
from workbench import Scenario


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.cls = nn.Linear(32, 4)
        self.rec = nn.Linear(32, 8)

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.cls(h), "recon": self.rec(h)}


def build(device):
    torch.manual_seed(0)
    model = TwoHeads().to(device)
    ema = copy.deepcopy(model)
    calls = []
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 8, generator=g) * 4
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]

    def loss_fn(out, targets):
        return {"ce": nn.functional.cross_entropy(out["logits"], targets),
                "recon": 0.5 * nn.functional.mse_loss(out["recon"], torch.zeros_like(out["recon"]))}

    def before_step(model, optimizer):
        calls.append(1)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.mul_(0.9).add_(p, alpha=0.1)

    model.before_step_calls = calls  # a plain attribute, for the test to count the hook's calls
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=loss_fn,
                    data=data, clip_grad_norm=0.1, before_step=before_step,
                    description="two named losses, clipping, an EMA in before_step")
'''

TIMM_SCHEDULER = '''
import torch
from torch import nn
from workbench import Scenario


class TimmLikeScheduler:
    """timm's scheduler protocol: no torch base class; step(epoch) and step_update(num_updates)."""

    def __init__(self, optimizer, t_in_epochs, base_lr=0.1):
        self.optimizer, self.t_in_epochs, self.base_lr = optimizer, t_in_epochs, base_lr
        self.calls = []

    def _set(self, t):
        for g in self.optimizer.param_groups:
            g["lr"] = self.base_lr / (1 + t)

    def step(self, epoch, metric=None):
        self.calls.append(("step", epoch))
        if self.t_in_epochs:
            self._set(epoch)

    def step_update(self, num_updates, metric=None):
        self.calls.append(("step_update", num_updates))
        if not self.t_in_epochs:
            self._set(num_updates)

    def state_dict(self):
        return {"calls": list(self.calls)}

    def load_state_dict(self, state):
        self.calls = list(state["calls"])


def _base(device, t_in_epochs, **changes):
    torch.manual_seed(0)
    model = nn.Linear(4, 2).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]  # an epoch is 3 steps
    return dict(model=model, optimizer=optimizer, loss_fn=nn.CrossEntropyLoss(), data=data,
                scheduler=TimmLikeScheduler(optimizer, t_in_epochs), **changes)


def build(device):
    # As timm's train loop does it: step_update after every optimizer step.
    fields = _base(device, False)
    return Scenario(**fields, scheduler_step=lambda s, step, epoch: s.step_update(step))


def build_epochs(device):
    # t_in_epochs: step(epoch) once per pass over the data.
    fields = _base(device, True)
    return Scenario(**fields, scheduler_interval="epoch", scheduler_step=lambda s, step, epoch: s.step(epoch))


def build_steplr(device):
    # A per-epoch torch scheduler given with no interval: the loader warns.
    fields = _base(device, True)
    fields["scheduler"] = torch.optim.lr_scheduler.StepLR(fields["optimizer"], step_size=1, gamma=0.5)
    return Scenario(**fields)


def build_steplr_epochs(device):
    fields = _base(device, True)
    fields["scheduler"] = torch.optim.lr_scheduler.StepLR(fields["optimizer"], step_size=1, gamma=0.5)
    return Scenario(**fields, scheduler_interval="epoch")
'''

AMP = '''
import torch
from torch import nn
from workbench import Scenario


def _scenario(device, amp, scale=1.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).to(device)
    with torch.no_grad():
        model[2].weight.mul_(scale)
    data = [(torch.randn(16, 8), torch.randint(0, 2, (16,))) for _ in range(2)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                    loss_fn=nn.CrossEntropyLoss(), data=data, amp=amp)


def build(device):
    return _scenario(device, "bf16")


def build_fp16(device):
    return _scenario(device, "fp16")


def build_fp16_overflow(device):
    # Weights so large that the scaled fp16 gradients overflow: the GradScaler skips steps.
    return _scenario(device, "fp16", scale=3e3)
'''


def write(directory: Path, text: str, name: str, **fmt: str) -> Path:
    path = directory / name
    path.write_text(text.replace("{state_hooks}", fmt.get("state_hooks", "")), encoding="utf-8")
    return path
