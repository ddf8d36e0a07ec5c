"""The Variant contract and the helper every training variant shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from workbench.bench.context import BenchContext
from workbench.bench.memory import track_peak
from workbench.bench.results import Hardware, Timing, VariantResult
from workbench.bench.steps import mean_loss, train_step_fn
from workbench.bench.timing import StepFn, measure
from workbench.scenario import Batch, Scenario


@dataclass(frozen=True)
class Numerics:
    """How a variant computes a step's numbers, for `workbench diff`: the model it runs,
    the autocast dtype, and whether it trains (False: inference only, as int8)."""

    model: nn.Module
    autocast: torch.dtype | None
    trains: bool


@dataclass(frozen=True)
class Variant:
    """One way to run the scenario's training (or inference, or input pipeline).

    Subclasses override :meth:`applicable` (None, or why the row is skipped on
    this machine) and :meth:`run`. ``run`` raising marks the row failed; the
    runner keeps going with the others.
    """

    name: str
    description: str = ""
    # `--isolate-memory` re-runs the row in a fresh process; False for rows that
    # run in processes of their own and measure memory there (DDP ranks).
    isolatable: ClassVar[bool] = True

    def applicable(self, scenario: Scenario, hardware: Hardware) -> str | None:
        return None

    def run(self, ctx: BenchContext) -> VariantResult:
        raise NotImplementedError

    def numerics(self, scenario: Scenario) -> Numerics | None:
        """The numerics this variant computes with (``workbench diff`` compares two), or None
        for a variant that changes how the step runs (batching, layout, processes, compiler)
        and not the numbers in it. Raises UsageError when it cannot run on this scenario."""
        return None

    def failure_advice(self, exc: BaseException, ctx: BenchContext) -> str | None:
        """What to do about ``exc`` (the user's error the row failed with) when this variant
        knows the cause better than the message does; None when it does not."""
        return None

    def batch_note(self, ctx: BenchContext) -> str:
        """What one step processes, for an out-of-memory reason ("batch size 64")."""
        return f"batch size {ctx.batch_size}"

    # -- helpers for subclasses ----------------------------------------------------------
    def ok(self, **fields: Any) -> VariantResult:
        timing: Timing | None = fields.get("timing")
        warnings = list(fields.pop("warnings", ()))
        for label, t in (("timing", timing), ("reference", fields.get("reference"))):
            if t is not None and t.noisy:
                warnings.append(
                    f"{label}: IQR is {t.iqr / t.median:.0%} of the median; the machine was busy, "
                    "re-run or raise --steps"
                )
        return VariantResult(self.name, "ok", self.description, warnings=tuple(warnings), **fields)


@dataclass(frozen=True)
class Prepared:
    """What a training variant hands to :func:`run_training`."""

    step: StepFn
    model: nn.Module | None = None  # the model to score (default: scenario.model)
    extras: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    finish: Callable[[dict[str, Any]], None] | None = None  # adds extras after timing


def run_training(
    variant: Variant,
    ctx: BenchContext,
    prepare: Callable[[Scenario, Sequence[Batch]], Prepared],
    *,
    convert: Callable[[torch.Tensor], torch.Tensor] | None = None,
    samples_per_step: int | None = None,
) -> VariantResult:
    """Fresh scenario, fixed batches on the device, warm-up, timed blocks, final loss."""
    scenario = ctx.build()
    batches = ctx.device_batches(convert)
    first: list[float] = []
    with track_peak(ctx.device) as peak:
        prepared = prepare(scenario, batches)
        timing = measure(
            prepared.step,
            ctx.plan,
            ctx.device,
            samples_per_step=samples_per_step or ctx.batch_size,
            tick=ctx.tick,
            first_step_s=first,
        )
    extras = dict(prepared.extras)
    if first:
        extras["first_step_s"] = first[0]
    if prepared.finish is not None:
        prepared.finish(extras)
    loss = mean_loss(scenario, ctx.batches, prepared.model)
    warnings = list(prepared.warnings)
    if not math.isfinite(loss):
        warnings.append(f"final loss is {loss}: this variant diverged")
    return variant.ok(
        timing=timing,
        peak_memory=peak.bytes,
        memory_method=peak.method,
        final_loss=loss,
        steps_trained=ctx.plan.warmup + timing.timed_steps,
        extras=extras,
        warnings=tuple(warnings),
    )


def fp32_loss_after(ctx: BenchContext, steps: int) -> float:
    """fp32's final loss after ``steps`` optimizer steps on the fixed batches (untimed).

    The quality reference for a row that a time budget stopped at another
    step count than fp32: losses only compare after the same steps.
    """
    scenario = ctx.build()
    step = train_step_fn(scenario, ctx.device_batches())
    for i in range(steps):
        step(i)
    return mean_loss(scenario, ctx.batches)
