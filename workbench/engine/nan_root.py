"""Where a step first went non-finite: the root causes the nan_inf findings name.

The probe says which calls had non-finite outputs (forward) or gradients (backward);
these functions pick the innermost culprit and say what it means. The health monitor
turns a root into its finding; the prose about *why* lives here with the search that
found it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workbench.engine.probe import CallInfo
from workbench.engine.records import ParamStats


@dataclass(frozen=True)
class ForwardRoot:
    """The first call whose output is non-finite (innermost: children complete first)."""

    module: str  # "" for the model's own forward()
    inputs_finite: bool  # False: the NaN/Inf came in with the inputs (the batch, code outside modules)
    own_weights_non_finite: bool  # the module's own parameters already were NaN/Inf

    @property
    def message(self) -> str:
        where = f"module {self.module!r}" if self.module else "the model's forward()"
        if self.own_weights_non_finite:
            return (f"{where} produced NaN/Inf because its own parameters are already non-finite: an "
                    "earlier optimizer step made them so (an earlier nan_inf finding then names that step), "
                    "or code outside the optimizer step wrote them (a weight set by hand, a load_state_dict, "
                    "a checkpoint). Restart from a checkpoint and fix what wrote them.")
        if self.inputs_finite:
            return (f"{where} produced NaN/Inf from finite inputs: the first non-finite "
                    "activation of this step. Look for log/sqrt/division of values that can "
                    "reach 0 or below, exp overflow, or weights already non-finite.")
        return (f"{where} received NaN/Inf inputs: the batch itself (or code outside any "
                "module) is non-finite. Check the data pipeline.")


@dataclass(frozen=True)
class BackwardRoot:
    """Where the gradients first turned non-finite, and what that points to."""

    module: str
    parameter: str | None  # set when only a parameter's gradient is non-finite
    message: str


def forward_root(model: nn.Module, first_bad: tuple[str, bool] | None) -> ForwardRoot | None:
    """``first_bad``: (module, its inputs were finite) of the innermost non-finite output."""
    if first_bad is None:
        return None
    name, inputs_finite = first_bad
    return ForwardRoot(name, inputs_finite, _weights_non_finite(model, name))


def _weights_non_finite(model: nn.Module, name: str) -> bool:
    module = dict(model.named_modules()).get(name)
    own = list(module.parameters(recurse=False)) if module is not None else []
    if not own:
        return False
    # Deliberate extra sync, only on a step that already found a NaN/Inf: is the cause the
    # module's own weights (poisoned by an earlier step) or its computation?
    return not bool(torch.stack([torch.isfinite(p).all() for p in own]).all().tolist())


def backward_root(calls: Sequence[CallInfo], grad_calls: Sequence[int], norms: Sequence[float],
                  params: Sequence[ParamStats], model_output_call: int | None) -> BackwardRoot | None:
    """The root of this backward's non-finite gradients, or None when all are finite.

    ``grad_calls``/``norms``: the calls whose output gradient was seen, in backward order,
    and those gradients' norms; ``model_output_call``: the call that returned the model's
    output (its gradient comes straight from the loss).
    """
    grad_of: dict[int, float] = dict(zip(grad_calls, norms))
    backward_order = {call: i for i, call in enumerate(grad_calls)}
    bad = {c for c, n in grad_of.items() if not math.isfinite(n)}
    if bad:
        # Where the gradient turned non-finite: a call whose output gradient is finite but
        # which passed a non-finite gradient to the module that produced its input.
        candidates = [c for c in calls if c.index in grad_of and c.index not in bad
                      and any(p in bad for p in c.producers)]
        names = [c.name for c in candidates]
        innermost = [c for c in candidates
                     if not any(o != c.name and (c.name == "" or o.startswith(c.name + ".")) for o in names)]
        innermost.sort(key=lambda c: backward_order.get(c.index, 0))
        if innermost:
            c = innermost[0]
            return BackwardRoot(
                c.name, None,
                f"module {c.name!r} ({type(c.module).__name__}) turned a finite gradient into "
                "NaN/Inf in its backward: the gradient reaching its output is finite, the one "
                "it passes to its input is not. Look for sqrt/log/pow/division at 0 or "
                "a custom autograd Function in it.")
        if model_output_call is not None and model_output_call in bad:
            return BackwardRoot(
                "", None,
                "the loss's backward produced a NaN/Inf gradient for the model output: "
                "check the loss function near 0/1 (log of 0) and its targets.")
        first = min(bad, key=lambda c: backward_order[c])
        c = calls[first]
        return BackwardRoot(
            c.name, None,
            f"the first non-finite gradient in backward order is at the output of "
            f"{c.name!r} ({type(c.module).__name__}).")
    for p in reversed(params):  # backward visits the last layers first
        if p.has_grad and p.grad_norm is not None and not math.isfinite(p.grad_norm):
            return BackwardRoot(
                p.module, p.name,
                f"the gradient of parameter {p.name!r} is NaN/Inf while every activation "
                "gradient is finite: something in its weight-gradient path (a hook, a custom "
                "autograd Function, a .register_hook) introduces it.")
    return None
