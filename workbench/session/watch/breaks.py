"""A watch's breakpoints: the conditions it takes, which one fires, ``Break``, and pdb at the hit.

What the loop does once one fired (raise, wait for a client, log) is the watch's own
step bookkeeping (loop.py); this module holds what needs none of it.
"""

from __future__ import annotations

import dataclasses
import pdb
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from workbench.engine.breakpoints import Breakpoint, Condition
from workbench.engine.instruments import StepState
from workbench.engine.records import BreakHit, Finding, Phase

ON_BREAK = ("raise", "pdb", "wait", "log")


class Break(Exception):
    """A ``break_on`` condition fired (``on_break="raise"``), before the optimizer step.

    ``hit`` is the engine's BreakHit (step, phase, breakpoint, finding, reason);
    ``finding`` the finding that fired it, or None for loss/grad_norm/step conditions.
    """

    def __init__(self, hit: BreakHit) -> None:
        self.hit = hit
        self.finding = hit.finding
        where = "before its optimizer step" if hit.phase is Phase.BACKWARD else "after its optimizer step"
        super().__init__(f"workbench breakpoint {hit.breakpoint!r} at step {hit.step} ({where}): {hit.reason}")


def parse_breakpoints(break_on: Iterable[str | Breakpoint] | str) -> list[Breakpoint]:
    """``break_on`` as ``run --break-on`` takes it: conditions, or strings with commas."""
    items = [break_on] if isinstance(break_on, (str, Breakpoint)) else list(break_on)
    out: list[Breakpoint] = []
    for item in items:
        if isinstance(item, Breakpoint):
            out.append(item)
            continue
        for text in (c for c in str(item).split(",") if c.strip()):
            try:
                out.append(Breakpoint.parse(text))
            except ValueError as exc:
                raise ValueError(f"workbench.watch(break_on=...): {exc}") from None
    return out


def first_hit(breakpoints: Sequence[Breakpoint], phase: Phase, s: StepState, candidates: Sequence[Finding],
              fired: set[str], *, once: bool) -> BreakHit | None:
    """The first of ``breakpoints`` that fires at ``phase`` of step ``s``, its key added to ``fired``.

    After the optimizer step only finding conditions are checked (the loss and gradient
    norm were checked before it). ``once``: skip those already in ``fired`` (this step's).
    """
    for bp in breakpoints:
        if phase is Phase.OPTIMIZER_STEP and bp.condition != "finding":
            continue
        key = bp.describe()
        if key in fired and once:
            continue
        hit = bp.check(step=s.step, phase=phase, loss=s.loss, total_grad_norm=s.total_grad_norm,
                       findings=candidates)
        if hit is not None:
            fired.add(key)
            return hit
    return None


def late_loss_hit(breakpoints: Sequence[Breakpoint], s: StepState, findings: Sequence[Finding]) -> BreakHit | None:
    """The first loss condition (``loss>X``, ``loss<X``), or a finding condition on what the loss
    rules found, that fires on a loss logged after the step's ``optimizer.step()``: it is read
    when the step's record is written, after the update (the hit's phase says so)."""
    for bp in breakpoints:
        if bp.condition is Condition.LOSS:
            hit = bp.check(step=s.step, phase=Phase.OPTIMIZER_STEP, loss=s.loss, total_grad_norm=None,
                           findings=())
        elif bp.condition is Condition.FINDING:
            hit = bp.check(step=s.step, phase=Phase.OPTIMIZER_STEP, loss=None, total_grad_norm=None,
                           findings=findings)
        else:
            continue
        if hit is not None:
            return dataclasses.replace(hit, reason=f"{hit.reason}; the loss was logged after optimizer.step(), so "
                                                   "the step's update is done (wb.log(loss=...) before it stops "
                                                   "before the update)")
    return None


def debug(hit: BreakHit, model: nn.Module, wb: Any, s: StepState,
          activation_sample: Callable[[str], torch.Tensor | None]) -> None:
    """Drop into pdb with the finding, its module, its tensors and the watch at hand."""
    f = hit.finding
    modules = dict(model.named_modules())
    name = f.module if f is not None else ""
    module = modules.get(name, model)
    own = dict(module.named_parameters(recurse=False)) if module is not None else {}
    namespace = {
        "hit": hit, "finding": f, "module": module, "module_name": name, "model": model, "wb": wb,
        "params": own, "grads": {k: p.grad for k, p in own.items()},
        "activation": activation_sample(name) if name else None,
        "step": s.step, "modules": {m.name: m for m in s.modules},
    }
    banner = (f"workbench: {hit.breakpoint} at step {hit.step}: {hit.reason}\n"
              "  at hand: finding, module, module_name, params, grads, activation (output sample), "
              "modules (this step's stats), model, wb; `c` continues the step.")
    _inspect(namespace, banner)


def _make_pdb() -> pdb.Pdb:
    return pdb.Pdb()


def _inspect(namespace: dict[str, Any], banner: str) -> None:
    """A frame holding the finding's objects as locals, for pdb to stop in."""
    finding = namespace["finding"]  # noqa: F841 - locals for the debugger
    module = namespace["module"]  # noqa: F841
    module_name = namespace["module_name"]  # noqa: F841
    params = namespace["params"]  # noqa: F841
    grads = namespace["grads"]  # noqa: F841
    activation = namespace["activation"]  # noqa: F841
    modules = namespace["modules"]  # noqa: F841
    model = namespace["model"]  # noqa: F841
    wb = namespace["wb"]  # noqa: F841
    hit = namespace["hit"]  # noqa: F841
    debugger = _make_pdb()
    print(banner, file=debugger.stdout)
    debugger.set_trace(sys._getframe())
