"""Tiny models for the workbench.watch and integration tests (built in code, no downloads)."""

from __future__ import annotations

import torch
from torch import nn


class LogOfShifted(nn.Module):
    """Finite inputs in, NaN out: log of values below zero (the injected root cause)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - 50.0)


class DictLM(nn.Module):
    """Hugging Face style: keyword batch (input_ids, labels), returns a dict with the loss inside."""

    def __init__(self, vocab: int = 32, dim: int = 16, poison: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.poison = LogOfShifted() if poison else nn.Identity()
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.poison(self.body(self.embed(input_ids)))
        logits = self.head(h)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return out


def dict_batches(n: int, vocab: int = 32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (4, 6), generator=g)
        out.append({"input_ids": ids, "labels": ids.roll(-1, dims=1)})
    return out


class DetachedHead(nn.Module):
    """A head whose input is detached: the body gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).detach())


def hook_count(model: nn.Module, *optimizers: torch.optim.Optimizer) -> int:
    """Every module hook on ``model`` and every step hook on the optimizers."""
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    for o in optimizers:
        n += len(o._optimizer_step_pre_hooks) + len(o._optimizer_step_post_hooks)
    return n
