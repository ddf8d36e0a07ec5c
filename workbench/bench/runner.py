"""Run a list of variants on one scenario and collect a :class:`BenchRun`.

Each row is isolated: a variant that raises (or runs out of memory) becomes
a failed row with the reason and the others still run; after an OOM the
CUDA cache is emptied and the peak statistics reset, so the next row starts
clean. Ctrl-C stops the current row and returns what finished, marked
interrupted.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from workbench.bench import hardware as hw
from workbench.bench.context import BenchContext, collect, seeded_build
from workbench.bench.results import BenchRun, BenchSettings, VariantResult
from workbench.bench.timing import DEFAULT_PLAN, BenchStepError, Plan, user_error, where_failed
from workbench.bench.variants import BASELINE, Variant, resolve
from workbench.errors import message_of
from workbench.bench.variants.base import fp32_loss_after
from workbench.scenario import ScenarioSource, resolve_device
from workbench.scenario.torch_state import TorchState


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
    plan: Plan = DEFAULT_PLAN,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    isolate_memory: bool = False,
) -> BenchRun:
    """Every variant on identical batches, one row each; never raises for a row's failure.

    ``isolate_memory`` (CPU): each row that ran is run again for a few steps in
    a fresh process, and its peak RSS replaces the in-process figure (kept in
    the row's extras). Rows that are not ``isolatable`` (DDP: each rank measures
    its own) are left as they are.
    """
    dev = resolve_device(device)
    chosen = _variants(variants)
    # Every row starts from torch's settings as the bench found them: a forward that changed the
    # default dtype or grad mode must not break the rows after it (each row builds anew).
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    start_state = TorchState.now()  # the threads the rows run on included (--threads, if given)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load_start = load_average()
    t0 = time.perf_counter()
    results: list[VariantResult] = []
    interrupted = False
    try:
        hardware = hw.detect()
        probe = seeded_build(source, dev)  # as every row builds: the same weights as theirs
        data_rng = torch.get_rng_state()  # what a shuffled DataLoader draws the batches below from
        batches, eval_batches = collect(probe, plan.total)
        settings = BenchSettings(plan.warmup, plan.steps, plan.block, len(batches), batches[0].size,
                                 torch.get_num_threads(), plan.budget_s,
                                 plan.min_samples if plan.budget_s is not None else 0)
        for index, variant in enumerate(chosen):
            def tick(done: int, total: int, _name: str = variant.name, _i: int = index) -> None:
                if progress is not None:
                    progress(BenchProgress(_name, _i, len(chosen), done, total))

            tick(0, plan.total)
            start_state.restore()
            ctx = BenchContext(source, dev, plan, batches, eval_batches, hardware, tick, data_rng)
            try:
                result = run_one(variant, ctx, probe)
                if isolate_memory and result.ok and dev.type == "cpu" and variant.isolatable:
                    result = with_isolated_peak(result, variant, source)
            except KeyboardInterrupt:
                interrupted = True
                break
            results.append(result)
            if progress is not None:
                progress(BenchProgress(variant.name, index, len(chosen), plan.total, plan.total, result))
        try:
            start_state.restore()
            results = with_baseline_losses(
                results, BenchContext(source, dev, plan, batches, eval_batches, hardware, data_rng=data_rng),
                rerun=not interrupted)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        start_state.restore()
        torch.set_num_threads(previous_threads)  # last: the rows' state holds --threads, not the caller's
    return BenchRun(
        scenario=probe.name or source.label,
        device=str(dev),
        hardware=hardware,
        settings=settings,
        results=tuple(with_speedups(results)),
        started=started,
        wall_s=time.perf_counter() - t0,
        interrupted=interrupted,
        load=_load_pair(load_start, load_average()),
    )


def _load_pair(start: float | None, end: float | None) -> tuple[float, float] | None:
    return (start, end) if start is not None and end is not None else None


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


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
    except BaseException as exc:  # SystemExit from the scenario too: this row failed, the others still run
        return VariantResult(variant.name, "failed", variant.description, reason=failure_reason(exc, variant, ctx),
                             extras={"oom": is_oom(exc), "row_wall_s": time.perf_counter() - t0,
                                     "traceback": format_traceback(exc)})
    finally:
        release_memory(ctx.device)
    return dataclasses.replace(result, extras={**result.extras, "row_wall_s": time.perf_counter() - t0})


def with_isolated_peak(result: VariantResult, variant: Variant, source: ScenarioSource) -> VariantResult:
    """The row with its memory from an isolated process; on failure the in-process figure stays, warned."""
    from workbench.bench.isolated import isolated_peak
    from workbench.distributed import RankFailed

    extras = {**result.extras, "in_process_peak": result.peak_memory,
              "in_process_method": result.memory_method}
    try:
        peak = isolated_peak(source, variant, torch.get_num_threads())
    except RankFailed as exc:
        warning = f"isolated memory run failed, in-process figure kept: {exc}"
        return dataclasses.replace(result, extras=extras, warnings=(*result.warnings, warning))
    extras["isolated_start_rss"] = peak.start_bytes
    return dataclasses.replace(result, peak_memory=peak.peak_bytes, memory_method=peak.method, extras=extras)


def is_oom(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (what torch.cuda.OutOfMemoryError is), also from a timed step or a DDP rank."""
    from workbench.distributed import RankFailed

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, (BenchStepError, RankFailed)) and exc.oom)


def format_traceback(exc: BaseException, limit: int = 60) -> str:
    """The failed row's traceback for the JSON report (its last ``limit`` lines).

    A timed step's error is the user's exception with every frame from the row down
    to its raise: the row's frames to the step, then the step's own.
    """
    import traceback

    if isinstance(exc, BenchStepError):
        # The wrapper's frames run from the row to the timed step (its last frame is the re-raise,
        # which the original's first frame repeats at the call of the step).
        outer = traceback.format_list(traceback.extract_tb(exc.__traceback__)[:-1])
        parts = traceback.format_exception(exc.original)
        heads = [i for i, part in enumerate(parts) if part.startswith("Traceback (most recent call last)")]
        at = heads[-1] + 1 if heads else 0
        parts[at:at] = outer
    else:
        parts = traceback.format_exception(type(exc), exc, exc.__traceback__)
    lines = "".join(parts).splitlines()
    return "\n".join(lines[-limit:])


def failure_reason(exc: BaseException, variant: Variant, ctx: BenchContext) -> str:
    """One line: 'out of memory at step 3, batch size 64 (micro-batch 16): ...' or 'Type: message (at
    step k, file:line in function)', the line the user's code raised from."""
    where = where_failed(exc)
    raised_at = _raised_at(exc, ctx)
    exc = user_error(exc)
    text = message_of(exc).strip()
    detail = text.splitlines()[0] if text else ""
    if is_oom(exc):  # the batch size is the point, not the line that happened to allocate
        head = f"out of memory {where}" if where else "out of memory"
        head += f", {variant.batch_note(ctx)}"
        return f"{head}: {detail}" if detail else head
    reason = f"{type(exc).__name__}: {detail}"
    where = ", ".join(w for w in (where, raised_at) if w)
    reason = f"{reason} ({where})" if where else reason
    advice = variant.failure_advice(exc, ctx)
    return f"{reason}. {advice[0].upper()}{advice[1:]}" if advice else reason


def _raised_at(exc: BaseException, ctx: BenchContext) -> str:
    """'file:line in function' of the user's code the error came from ('' when none is on its traceback)."""
    from workbench.errors import user_frame

    if isinstance(exc, BenchStepError):
        return exc.user_frame or ""
    frame = user_frame(exc, ctx.source.path)  # the scenario's own line first, as `workbench run` names it
    return f"{frame.filename}:{frame.lineno} in {frame.name}" if frame else ""


def release_memory(device: torch.device) -> None:
    """After a row: drop its garbage; on CUDA return cached blocks and reset the peak.

    An OOM in one row must not starve the next one, nor leave its peak in the
    next row's "CUDA max allocated" figure.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def with_baseline_losses(
    results: list[VariantResult], ctx: BenchContext, *, rerun: bool = True
) -> list[VariantResult]:
    """Give every trained row fp32's loss after the same number of optimizer steps.

    Rows that trained as many steps as the fp32 row compare with its final
    loss. A row a time budget stopped earlier or later gets an untimed fp32
    re-run to that step count (``rerun``; one per distinct count), so the
    quality column never compares losses after different amounts of training.
    """
    base = next((r for r in results if r.name == BASELINE and r.ok), None)
    if base is None or base.steps_trained is None or base.final_loss is None:
        return results
    known: dict[int, float | None] = {base.steps_trained: base.final_loss}
    out = []
    for r in results:
        steps = r.steps_trained
        if r is not base and r.ok and r.final_loss is not None and steps is not None:
            if steps not in known and rerun:
                try:
                    known[steps] = fp32_loss_after(ctx, steps)
                except Exception:  # fp32 trained fine once; if a re-run fails, show no delta
                    known[steps] = None
                finally:
                    release_memory(ctx.device)
            if known.get(steps) is not None:
                r = dataclasses.replace(r, baseline_loss=known[steps])
        out.append(r)
    return out


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
