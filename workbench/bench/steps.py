"""Training-step builders shared by the variants and by benchmarks/.

A step builder returns ``step(i)`` that trains on batch ``i % len(batches)``;
the timing harness decides how often to call it. The step itself is the
scenario layer's (``workbench.scenario.step``): the same model call, loss,
clipping, ``before_step`` hook, GradScaler and scheduler as every other
command. Nothing here syncs with the device, except what the user's recipe does itself
(``GradScaler.step`` reads its inf check, once a step under fp16): the harness syncs
once per timed block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from workbench.bench.timing import StepFn
from workbench.scenario import Batch, Scenario, prediction_tensor
from workbench.scenario.step import (
    accumulate_step,
    backward,
    instrumented,
    micro_batches,
    scheduler_at_epoch,
    train_step,
)


def call(scenario: Scenario, model: nn.Module, batch: Batch | tuple[torch.Tensor, ...]) -> Any:
    """The scenario's forward, but through ``model`` (a DDP/DataParallel/compiled wrapper)."""
    return scenario.call_model(batch, model)


def first_tensor(output: Any) -> torch.Tensor:
    """The main output of a model: its prediction (``logits`` of an HF output, never a loss
    the model computed), else its first tensor."""
    found = prediction_tensor(output)
    if found is not None:
        return found
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    if isinstance(output, torch.Tensor):
        return output
    raise TypeError(f"model output of type {type(output).__name__} holds no tensor")


def loss_is_summed(scenario: Scenario) -> bool:
    return scenario.loss_is_summed


class EpochClock:
    """The bench's epochs: a pass over the ``n`` fixed batches (the data's length, or the
    plan's steps when the data is longer). A per-epoch scheduler steps when they start
    over, given the loss of the step before, as the engine gives it (ReduceLROnPlateau
    judges by it; other schedulers ignore it). Costs nothing for a per-step scheduler.
    ``reduce`` turns that loss into the one to judge by (a DDP rank's into the global batch's).
    """

    def __init__(self, scenario: Scenario, n: int,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.scenario = scenario
        self.n = n
        self.reduce = reduce
        self.on = scenario.scheduler_interval == "epoch"
        self.last: torch.Tensor | None = None

    def before(self, i: int) -> None:
        """Before step ``i`` (counted from 0): the epoch tick, when the batches start over."""
        if self.on and i > 0 and i % self.n == 0:
            last = self.last
            if last is not None and self.reduce is not None:
                last = self.reduce(last)
            scheduler_at_epoch(self.scenario, i, i // self.n, last)

    def after(self, loss: torch.Tensor) -> torch.Tensor:
        """Keep the step's loss for the next tick (a detached view: no sync, no graph kept)."""
        if self.on:
            self.last = loss.detach()
        return loss

    def epoch(self, i: int) -> int:
        return i // self.n


def train_step_fn(
    scenario: Scenario,
    batches: Sequence[Batch],
    *,
    model: nn.Module | None = None,
    autocast: torch.dtype | None | str = None,
    scaler: torch.amp.GradScaler | None = None,
) -> StepFn:
    """One optimizer step per call: forward, loss, backward, clip/before_step, step, scheduler.

    ``autocast``: a dtype, or None for fp32 (the default: each bench row names its own
    precision, so the fp32 row is fp32 whatever ``amp`` the scenario trains with);
    ``"scenario"`` for the scenario's own ``amp``.
    """
    n = len(batches)
    clock = EpochClock(scenario, n)

    def step(i: int) -> torch.Tensor:
        clock.before(i)
        return clock.after(train_step(scenario, batches[i % n], model=model, scaler=scaler,
                                      autocast=autocast, step=i, epoch=clock.epoch(i)))

    return step


def accum_step_fn(scenario: Scenario, batches: Sequence[Batch], k: int,
                  autocast: torch.dtype | None | str = None) -> StepFn:
    """Gradient accumulation: k micro-batches, one optimizer step, same effective batch.

    Each micro-batch loss is weighted by its share of the batch, so with a
    mean-reduced loss the accumulated gradient equals the full batch's (up
    to float rounding; BatchNorm statistics are per micro-batch and differ).
    Micro-batches are cut along the scenario's ``batch_dim``.
    """
    prepared = [micro_batches(scenario, batch, k) for batch in batches]
    clock = EpochClock(scenario, len(prepared))

    def step(i: int) -> torch.Tensor:
        clock.before(i)
        return clock.after(accumulate_step(scenario, prepared[i % len(prepared)], autocast=autocast,
                                           step=i, epoch=clock.epoch(i)))

    return step


def accumulated_gradients(scenario: Scenario, batch: Batch, k: int) -> list[torch.Tensor]:
    """The gradients accum-k produces on ``batch`` (no optimizer step); for tests and checks."""
    scenario.optimizer.zero_grad(set_to_none=True)
    accumulate_step(scenario, micro_batches(scenario, batch, k), autocast=None, update=False)
    grads = [p.grad.detach().clone() for p in scenario.model.parameters() if p.grad is not None]
    scenario.optimizer.zero_grad(set_to_none=True)
    return grads


def mean_loss(scenario: Scenario, batches: Sequence[Batch], model: nn.Module | None = None) -> float:
    """Mean fp32 loss over ``batches`` in eval mode; the model's mode is restored.

    This is the quality figure of every training row: all variants are scored
    on the same batches after the same number of steps.
    """
    net = model if model is not None else scenario.model
    with instrumented(net, train=False, grad=False, restore_rng=False):
        total = 0.0
        for batch in batches:
            b = batch.to(scenario.device)
            loss = scenario.loss(scenario.call_model(b, net), b)
            # .item() is a host-device sync point; fine here, it is outside timing.
            total += float(loss.float().item())
        return total / len(batches) if batches else math.nan


def inference_fn(scenario: Scenario, model: nn.Module, batches: Sequence[Batch]) -> Callable[[int], Any]:
    def step(i: int) -> Any:
        with torch.no_grad():
            return scenario.call_model(batches[i % len(batches)], model)

    return step


__all__ = ["call", "first_tensor", "loss_is_summed", "EpochClock", "train_step_fn", "accum_step_fn",
           "accumulated_gradients", "mean_loss", "inference_fn", "backward"]
