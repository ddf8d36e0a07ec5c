"""A small GPT-style decoder on synthetic text: dict batches, the loss computed inside the model.

The shape of most language-model training code: batches are dicts
(``input_ids``, ``attention_mask``, ``labels``) as a tokenizer and collator
give them, the model is called ``model(**batch)`` and returns its own loss
next to the logits, so the scenario says ``loss_fn=None``. It clips the
gradient norm and warms the learning rate up per step, as such loops do.

The "text" follows a learnable rule: each token is the previous one plus a
small step (mod the vocabulary), with some noise, so the loss falls quickly.
Kept small (2 layers, width 32, batches of 8 x 24 tokens) so a step takes a few ms on CPU.
"""

import math

import torch
from torch import nn

from workbench import Scenario

VOCAB = 64
SEQ_LEN = 24


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, causal: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, key_padding_mask=padding, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token + position embeddings, pre-norm blocks, a head tied to the token embedding."""

    def __init__(self, vocab: int = VOCAB, dim: int = 32, layers: int = 2, heads: int = 2,
                 max_len: int = SEQ_LEN) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight  # weight tying, as GPT-2 does
        for emb in (self.tok, self.pos):
            nn.init.normal_(emb.weight, std=0.02)  # GPT-2's init: unit-variance logits would start at loss ~20

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        n = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(n, device=input_ids.device))
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)  # True: masked
        padding = attention_mask == 0 if attention_mask is not None else None
        for block in self.blocks:
            x = block(x, causal, padding)
        logits = self.head(self.ln_f(x))
        out = {"logits": logits}
        if labels is not None:
            # Next-token loss inside the model, ignoring padded positions (-100), like HF models.
            shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
            out = {"loss": nn.functional.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100),
                   **out}
        return out


def make_text(batches: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        start = torch.randint(0, VOCAB, (batch_size, 1), generator=g)
        steps = torch.randint(1, 4, (batch_size, 1), generator=g)
        ids = (start + steps * torch.arange(SEQ_LEN)) % VOCAB
        noise = torch.rand(batch_size, SEQ_LEN, generator=g) < 0.05
        ids = torch.where(noise, torch.randint(0, VOCAB, ids.shape, generator=g), ids)
        # Right padding on a few rows, marked in attention_mask and ignored by the loss.
        lengths = torch.randint(SEQ_LEN * 3 // 4, SEQ_LEN + 1, (batch_size, 1), generator=g)
        mask = (torch.arange(SEQ_LEN) < lengths).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def build(device):
    torch.manual_seed(0)
    model = TinyGPT().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    warmup = 10
    return Scenario(
        model=model,
        optimizer=optimizer,
        loss_fn=None,  # the model returns {"loss", "logits"} when given labels
        data=make_text(32, 8, seed=7),
        eval_data=make_text(4, 8, seed=8),
        name="transformer-lm",
        description="2-layer GPT-style decoder, tied head, dict batches with padding, loss inside the model",
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup)),
        scheduler_interval="step",
        clip_grad_norm=1.0,
        tags=("transformer",),
    )


def perplexity(loss: float) -> float:
    return math.exp(loss)
