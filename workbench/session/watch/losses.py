"""The loss of one watched step, over however many micro-batches the loop ran before its update.

A loop that accumulates gradients runs several forwards and backwards per optimizer step,
each with its own loss. The step's loss is their mean (their sum when each is already a
share of the whole step's, as Hugging Face models compute it from ``num_items_in_batch``),
kept on the device until the step's one read (a stack and a mean: no sync per micro-batch). Where several places report a loss,
the most explicit one is taken: ``wb.log(loss=...)`` over a framework's loss (an
integration's ``set_loss``) over the loss the model returned (``outputs.loss``).
"""

from __future__ import annotations

import torch

MODEL_OUTPUT, FRAMEWORK, LOGGED = 0, 1, 2  # who reported the loss: a higher rank wins


class StepLoss:
    """The losses one step reported, of the highest-ranking reporter seen so far."""

    def __init__(self) -> None:
        self.terms: list[torch.Tensor] = []
        self.source = ""
        self.rank = -1
        # Each term already divided by the whole step's item count (Hugging Face's Trainer passes
        # num_items_in_batch to a model that takes loss kwargs): the step's loss is their sum.
        self.summed = False

    def add(self, loss: torch.Tensor, source: str, rank: int) -> None:
        """One micro-batch's loss (a one-element tensor); ignored under a higher-ranking reporter."""
        if rank < self.rank:
            return
        if rank > self.rank:
            self.terms = []
        term = loss.detach()
        self.terms.append(term.reshape(()) if term.dim() else term)
        self.source, self.rank = source, rank

    def value(self) -> torch.Tensor | None:
        """The mean of the terms (their sum when ``summed``; the one term when the step had one
        micro-batch), on the device."""
        if not self.terms:
            return None
        if len(self.terms) == 1:
            return self.terms[0]
        device = self.terms[0].device
        stacked = torch.stack([t.float().to(device) for t in self.terms])
        return stacked.sum() if self.summed and self.rank == MODEL_OUTPUT else stacked.mean()
