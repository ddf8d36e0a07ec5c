"""What a user's loop hands the watch, unwrapped: the model under ``torch.compile`` or DDP, the
torch optimizer under a framework's wrapper, and several optimizers (or none) seen as one
holder of param groups for the health rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that really computes: ``torch.compile``'s ``_orig_mod``, DDP/DataParallel's ``.module``."""
    for _ in range(8):  # a compiled DDP model, a DDP of a compiled model: a few layers at most
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        break
    return model


def unwrap_optimizer(opt: Any) -> torch.optim.Optimizer:
    """The torch optimizer under Lightning's LightningOptimizer or accelerate's AcceleratedOptimizer."""
    for _ in range(8):
        if type(opt).__module__.startswith("torch.optim") or not any(
                isinstance(getattr(opt, a, None), torch.optim.Optimizer) for a in ("optimizer", "_optimizer")):
            break
        inner = getattr(opt, "optimizer", None)
        opt = inner if isinstance(inner, torch.optim.Optimizer) else opt._optimizer
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"workbench.watch: expected a torch.optim.Optimizer (or a list of them), got "
                        f"{type(opt).__name__}. Pass the optimizer your loop calls step() on.")
    return opt


class Optimizers:
    """Several optimizers seen as one holder of param groups (for the unowned-parameter rule)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]


class AllParameters:
    """No optimizer (wb.step()): every parameter counts as held, so none is called unowned."""

    def __init__(self, model: nn.Module) -> None:
        self.param_groups = [{"params": list(model.parameters()), "lr": math.nan}]


def param_holder(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> Any:
    """What the health rules read param groups from: the one optimizer, all of them, or the model's parameters."""
    return optimizers[0] if len(optimizers) == 1 else Optimizers(optimizers) if optimizers else AllParameters(model)
