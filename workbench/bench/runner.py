"""Run a list of variants on one scenario and collect a :class:`BenchRun`.

Each row is isolated: a variant that raises (or runs out of memory) becomes
a failed row with the reason and the others still run. Ctrl-C stops after
the current row and returns what finished, marked interrupted.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from workbench.bench import hardware as hw
from workbench.bench.context import BenchContext, collect
from workbench.bench.results import BenchRun, BenchSettings, VariantResult
from workbench.bench.timing import Plan
from workbench.bench.variants import BASELINE, Variant, resolve
from workbench.scenario import ScenarioSource, resolve_device


@dataclass(frozen=True)
class BenchProgress:
    """A progress report: ``result`` is set once the row ``variant`` is finished."""

    variant: str
    index: int  # 0-based position of the row
    count: int  # rows in all
    done: int  # steps done within this row
    total: int  # steps in this row
    result: VariantResult | None = None


ProgressFn = Callable[[BenchProgress], None]


def run_bench(
    source: ScenarioSource,
    variants: Iterable[str] | Iterable[Variant] | None = None,
    *,
    device: str | torch.device = "cpu",
    plan: Plan = Plan(),
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> BenchRun:
    dev = resolve_device(device)
    chosen = _variants(variants)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    results: list[VariantResult] = []
    interrupted = False
    try:
        hardware = hw.detect()
        probe = source.build(dev)
        batches, eval_batches = collect(probe, plan.total)
        settings = BenchSettings(plan.warmup, plan.steps, plan.block, len(batches), batches[0].size,
                                 torch.get_num_threads())
        for index, variant in enumerate(chosen):
            def tick(done: int, total: int, _name: str = variant.name, _i: int = index) -> None:
                if progress is not None:
                    progress(BenchProgress(_name, _i, len(chosen), done, total))

            tick(0, plan.total)
            ctx = BenchContext(source, dev, plan, batches, eval_batches, hardware, tick)
            try:
                result = run_one(variant, ctx, probe)
            except KeyboardInterrupt:
                interrupted = True
                break
            results.append(result)
            if progress is not None:
                progress(BenchProgress(variant.name, index, len(chosen), plan.total, plan.total, result))
    finally:
        torch.set_num_threads(previous_threads)
    return BenchRun(
        scenario=probe.name or source.label,
        device=str(dev),
        hardware=hardware,
        settings=settings,
        results=tuple(with_speedups(results)),
        started=started,
        wall_s=time.perf_counter() - t0,
        interrupted=interrupted,
    )


def _variants(variants: Iterable[str] | Iterable[Variant] | None) -> list[Variant]:
    if variants is None:
        return resolve(None)
    items = list(variants)
    if all(isinstance(v, Variant) for v in items):
        return items  # type: ignore[return-value]
    return resolve(str(v) for v in items)


def run_one(variant: Variant, ctx: BenchContext, probe: object) -> VariantResult:
    """One row: skipped with the reason, ok, or failed with the error; never raises but Ctrl-C."""
    reason = variant.applicable(probe, ctx.hardware)  # type: ignore[arg-type]
    if reason:
        return VariantResult(variant.name, "skipped", variant.description, reason=reason)
    t0 = time.perf_counter()
    try:
        result = variant.run(ctx)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        oom = isinstance(exc, torch.OutOfMemoryError)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = ("out of memory: " if oom else f"{type(exc).__name__}: ") + detail
        return VariantResult(variant.name, "failed", variant.description, reason=reason)
    finally:
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()  # an OOM in one row must not starve the next
    return dataclasses.replace(result, extras={**result.extras, "row_wall_s": time.perf_counter() - t0})


def with_speedups(results: list[VariantResult]) -> list[VariantResult]:
    """Fill ``speedup`` of the training rows against the fp32 row's median step time."""
    base = next((r for r in results if r.name == BASELINE and r.ok and r.timing), None)
    out = []
    for r in results:
        if r.ok and r.timing and r.speedup is None and base is not None and base.timing:
            r = dataclasses.replace(
                r, speedup=base.timing.median / r.timing.median,
                speedup_basis=r.speedup_basis or BASELINE,
            )
        out.append(r)
    return out
