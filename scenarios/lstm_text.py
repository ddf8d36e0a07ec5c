"""Token-sequence classification: Embedding -> LSTM(batch_first) -> Linear on the last step.

Synthetic "documents": each class favours its own slice of the vocabulary,
mixed with shared filler tokens, so the class is learnable from the tokens
the LSTM reads. ``num_classes`` is a real parameter of ``make_scenario``.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario

VOCAB = 200
SEQ_LEN = 24


def make_sequences(n: int, num_classes: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    slice_size = (VOCAB // 2) // num_classes
    topical = labels[:, None] * slice_size + torch.randint(0, slice_size, (n, SEQ_LEN), generator=g)
    filler = VOCAB // 2 + torch.randint(0, VOCAB // 2, (n, SEQ_LEN), generator=g)
    use_topical = torch.rand(n, SEQ_LEN, generator=g) < 0.4
    return TensorDataset(torch.where(use_topical, topical, filler), labels)


class TextClassifier(nn.Module):
    def __init__(self, vocab: int, num_classes: int, embed: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(tokens))
        return self.head(out[:, -1])


def make_scenario(device, num_classes: int = 4, description: str | None = None) -> Scenario:
    torch.manual_seed(0)
    model = TextClassifier(VOCAB, num_classes).to(device)
    train = make_sequences(2048, num_classes, seed=21)
    return Scenario(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01),
        loss_fn=nn.CrossEntropyLoss(),
        data=DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(22)),
        eval_data=DataLoader(make_sequences(256, num_classes, seed=23), batch_size=128),
        name="lstm-text",
        description=description or f"Embedding -> LSTM -> Linear, {num_classes}-class token sequences, AdamW",
        seed=0,
        tags=("rnn",),
    )


def build(device):
    # The description as a literal, so `workbench list --static` can read it without building.
    return make_scenario(device, num_classes=4, description="Embedding -> LSTM -> Linear, 4-class token sequences, AdamW")
