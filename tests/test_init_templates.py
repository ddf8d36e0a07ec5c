"""`workbench init` templates pass `workbench check --strict` as written (the README says so),
and fit the model they are written around: a transformers head's labels, a plain class's
input size and classes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from workbench.cli import main

_names = itertools.count()


def _one_step(path: Path) -> float:
    """Build the written scenario and run one forward, loss and backward: what check does first."""
    import math

    from workbench import load

    s = load(str(path))
    batch = s.make_batch(next(iter(s.data)))
    loss = s.compute_loss(s.call_model(batch), batch).total
    loss.backward()
    assert math.isfinite(loss.item())
    return loss.item()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--model", "BertForMaskedLM"], ["--model", "BertForSequenceClassification"]],
                         ids=["gpt2", "bert-mlm", "bert-seqcls"])
def test_hf_template_passes_strict_check(tmp_path: Path, extra: list[str], capsys) -> None:
    pytest.importorskip("transformers")
    path = tmp_path / "hf_scenario.py"
    assert main(["init", "--hf", *extra, str(path)]) == 0
    # --strict: a warning (grad_clipping from a max_norm every step exceeds) fails it too.
    assert main(["check", "--strict", str(path)]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("cls", [
    "BertForSequenceClassification",  # one label per sequence, not per token (the bug)
    "BertForTokenClassification", "BertForQuestionAnswering",
    # The rest of the heads: a few seconds each on a busy 2-core machine.
    *(pytest.param(c, marks=pytest.mark.slow) for c in (
        "GPT2ForSequenceClassification",  # a decoder needs a pad token to find each sequence's end
        "BertForMultipleChoice", "BertForPreTraining", "BertForNextSentencePrediction", "BertModel",
        "LlamaForCausalLM", "GPT2LMHeadModel")),
])
def test_hf_template_gives_the_labels_its_head_takes(cls: str, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    path = tmp_path / "hf_head.py"
    assert main(["init", "--hf", "--model", cls, str(path)]) == 0
    _one_step(path)


MODELS = '''\
import torch
from torch import nn


class Net(nn.Module):  # 10 features, 3 classes: not the template's 16 and 2
    def __init__(self, d_in=10, hidden=32, n_out=3):
        super().__init__()
        self.a = nn.Linear(d_in, hidden)
        self.b = nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Cnn(nn.Module):  # its head fixes the image size: 28x28 grey images
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3)
        self.h = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.h(torch.relu(self.c(x)).flatten(1))


class Tokens(nn.Module):
    def __init__(self, vocab=50):
        super().__init__()
        self.e = nn.Embedding(vocab, 16)
        self.h = nn.Linear(16, 4)

    def forward(self, x):
        return self.h(self.e(x).mean(1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.h = nn.Linear(16, 2)

    def forward(self, x):
        return self.h(self.rnn(x)[0][:, -1])


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(7, 1)

    def forward(self, x):
        return self.l(x)


class NeedsArgs(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.e = nn.Embedding(vocab, dim)

    def forward(self, x):
        return self.e(x)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(5, 3)

    def forward(self, x):
        return {"out": self.l(x)}
'''


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of model classes next to where the scenarios go; a fresh name per test."""
    import sys

    name = f"wb_init_models_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(MODELS)
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("cls, expect", [
    ("Net", "torch.randn(512, 10"), ("Cnn", "torch.randn(512, 1, 28, 28"), ("Tokens", "torch.randint(0, 50, (512, 32)"),
    ("Recurrent", "torch.randn(512, 32, 8"), ("Regressor", "nn.MSELoss()"),
])
def test_model_template_fits_the_class(cls: str, expect: str, models: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / f"scn_{cls}.py"
    assert main(["init", "--model", f"{models}:{cls}", str(path)]) == 0
    text = path.read_text()
    assert expect in text and "ADJUST" not in text, text
    assert "needs your hand" not in capsys.readouterr().out
    _one_step(path)


@pytest.mark.slow
def test_model_template_passes_check(models: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "scn_net.py"
    assert main(["init", "--model", f"{models}:Net", str(path)]) == 0
    assert main(["check", "--strict", str(path)]) == 0, capsys.readouterr().out


def test_model_with_required_arguments_says_what_to_fill_in(models: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "scn_args.py"
    assert main(["init", "--model", f"{models}:NeedsArgs", str(path)]) == 0
    out = capsys.readouterr().out
    assert "vocab, dim" in out and "ADJUST" in out
    text = path.read_text()
    assert "ADJUST" in text and "NeedsArgs(vocab=..., dim=...)" in text
    # Until filled in, it stops at that line with a message saying so, not deep inside torch.
    from workbench import load
    from workbench.scenario import ScenarioError

    with pytest.raises(ScenarioError, match=r"pass NeedsArgs's arguments \(vocab, dim\)"):
        load(str(path))


def test_model_whose_output_is_unknown_says_what_to_adjust(models: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "scn_dict.py"
    assert main(["init", "--model", f"{models}:DictOut", str(path)]) == 0
    assert "ADJUST" in capsys.readouterr().out
    text = path.read_text()
    assert "ADJUST" in text and "a dict" in text
