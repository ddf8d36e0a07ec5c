"""Training-step builders shared by the variants and by benchmarks/.

A step builder returns ``step(i)`` that trains on batch ``i % len(batches)``;
the timing harness decides how often to call it. Nothing here syncs with
the device: the harness does that once per timed block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from workbench.bench.timing import StepFn
from workbench.scenario import Batch, Scenario


def call(scenario: Scenario, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """The scenario's forward, but through ``model`` (a DDP/DataParallel/compiled wrapper)."""
    if scenario.forward is not None:
        return scenario.forward(model, inputs)
    return model(*inputs)


def first_tensor(output: Any) -> torch.Tensor:
    """The main output of a model that may return a tuple or a dict."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    if isinstance(output, dict) and output:
        return first_tensor(next(iter(output.values())))
    raise TypeError(f"model output of type {type(output).__name__} holds no tensor")


def loss_is_summed(scenario: Scenario) -> bool:
    return getattr(scenario.loss_fn, "reduction", "mean") == "sum"


def _optimizer_step(scenario: Scenario, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.step(scenario.optimizer)
        scaler.update()
    else:
        scenario.optimizer.step()
    scenario.optimizer.zero_grad(set_to_none=True)
    if scenario.scheduler is not None:
        scenario.scheduler.step()


def train_step_fn(
    scenario: Scenario,
    batches: Sequence[Batch],
    *,
    model: nn.Module | None = None,
    autocast: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> StepFn:
    """One optimizer step per call: forward, loss, backward, step, zero_grad, scheduler."""
    net = model if model is not None else scenario.model
    device_type = scenario.device.type

    def step(i: int) -> torch.Tensor:
        batch = batches[i % len(batches)]
        ctx = (
            torch.autocast(device_type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        )
        with ctx:
            loss = scenario.loss_fn(call(scenario, net, batch.inputs), batch.targets)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        _optimizer_step(scenario, scaler)
        return loss

    return step


def split_micro(batch: Batch, k: int) -> list[Batch]:
    """``k`` micro-batches along dim 0 (sizes differ by at most one)."""
    inputs = [torch.tensor_split(t, k) for t in batch.inputs]
    targets = torch.tensor_split(batch.targets, k)
    return [Batch(tuple(parts[j] for parts in inputs), targets[j]) for j in range(k)]


def accum_step_fn(scenario: Scenario, batches: Sequence[Batch], k: int) -> StepFn:
    """Gradient accumulation: k micro-batches, one optimizer step, same effective batch.

    Each micro-batch loss is weighted by its share of the batch, so with a
    mean-reduced loss the accumulated gradient equals the full batch's (up
    to float rounding; BatchNorm statistics are per micro-batch and differ).
    """
    summed = loss_is_summed(scenario)
    prepared = []
    for batch in batches:
        micros = split_micro(batch, k)
        weights = [1.0 if summed else m.size / batch.size for m in micros]
        prepared.append(list(zip(micros, weights)))

    def step(i: int) -> torch.Tensor:
        total = None
        for micro, weight in prepared[i % len(prepared)]:
            loss = scenario.loss_fn(scenario.call_model(micro.inputs), micro.targets) * weight
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        _optimizer_step(scenario, None)
        assert total is not None
        return total

    return step


def accumulated_gradients(scenario: Scenario, batch: Batch, k: int) -> list[torch.Tensor]:
    """The gradients accum-k produces on ``batch`` (no optimizer step); for tests and checks."""
    scenario.optimizer.zero_grad(set_to_none=True)
    summed = loss_is_summed(scenario)
    for micro in split_micro(batch, k):
        weight = 1.0 if summed else micro.size / batch.size
        (scenario.loss_fn(scenario.call_model(micro.inputs), micro.targets) * weight).backward()
    grads = [p.grad.detach().clone() for p in scenario.model.parameters() if p.grad is not None]
    scenario.optimizer.zero_grad(set_to_none=True)
    return grads


@torch.no_grad()
def mean_loss(scenario: Scenario, batches: Sequence[Batch], model: nn.Module | None = None) -> float:
    """Mean fp32 loss over ``batches`` in eval mode; the model's mode is restored.

    This is the quality figure of every training row: all variants are scored
    on the same batches after the same number of steps.
    """
    net = model if model is not None else scenario.model
    was_training = net.training
    net.eval()
    try:
        total = 0.0
        for batch in batches:
            b = batch.to(scenario.device)
            # .item() is a host-device sync point; fine here, it is outside timing.
            total += float(scenario.loss_fn(call(scenario, net, b.inputs), b.targets).float().item())
        return total / len(batches) if batches else math.nan
    finally:
        net.train(was_training)


def inference_fn(scenario: Scenario, model: nn.Module, batches: Sequence[Batch]) -> Callable[[int], Any]:
    def step(i: int) -> Any:
        with torch.no_grad():
            return call(scenario, model, batches[i % len(batches)].inputs)

    return step
