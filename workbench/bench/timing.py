"""The timing harness: warm-up, repeated timed blocks, CUDA-synchronised clocks.

One function, :func:`measure`, times any ``step(i)`` callable the same way
for every variant, so the rows of a comparison differ only in the step.

A plan may carry a time budget: timing then stops after the block that
passes ``budget_s`` of timed time, once ``min_samples`` blocks are in. A
slow variant (bf16 emulated on a CPU without it: 10x the fp32 step) then
costs seconds, not minutes; the Timing records what was planned so the
report can say the row was cut short.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from workbench.bench.results import Timing
from workbench.distributed import describe_failure as describe_rank_failure
from workbench.engine.errors import TrainingStepError

StepFn = Callable[[int], object]
# (steps done, steps in all) after each warm-up step and each timed block.
Tick = Callable[[int, int], None]


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA kernels before reading the host clock.

    This is a deliberate host-device sync point: without it the clock would
    measure only the kernel launches. A no-op on CPU.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Fewest timed blocks a budget may leave: a median and an IQR need a few samples.
MIN_SAMPLES = 5


@dataclass(frozen=True)
class Plan:
    """How many steps to warm up and time, in blocks of how many, within what time budget.

    ``budget_s`` None times every planned step (what an explicit ``--steps`` asks for).
    """

    warmup: int = 3
    steps: int = 15
    block: int = 1
    budget_s: float | None = None
    min_samples: int = MIN_SAMPLES

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.steps < 1 or self.block < 1 or self.min_samples < 1:
            raise ValueError(f"bad timing plan {self}: need warmup >= 0, steps >= 1, block >= 1, "
                             "min_samples >= 1")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"bad timing plan {self}: budget_s must be > 0 seconds or None")

    @property
    def total(self) -> int:
        return self.warmup + self.steps

    @property
    def blocks(self) -> list[int]:
        """Sizes of the timed blocks: steps split into blocks of ``block`` (last may be short)."""
        full, rest = divmod(self.steps, self.block)
        return [self.block] * full + ([rest] if rest else [])


# Given "this rank wants to stop", says whether all stop: ranks of DDP must stop together.
Agree = Callable[[bool], bool]


# Timed seconds per measurement before a default run stops timing a row (once it
# has MIN_SAMPLES): the default matrix on cnn_image then fits in a minute on 2
# cores even where autocast emulates bf16 at ~10x the fp32 step.
DEFAULT_BUDGET_S = 2.0
DEFAULT_PLAN = Plan(warmup=3, steps=15, budget_s=DEFAULT_BUDGET_S)


def measure(
    step: StepFn,
    plan: Plan,
    device: torch.device,
    *,
    samples_per_step: int = 0,
    tick: Tick | None = None,
    first_step_s: list[float] | None = None,
    agree: Agree | None = None,
) -> Timing:
    """Run ``plan.warmup`` untimed steps, then time ``plan.steps`` steps in blocks.

    ``step(i)`` receives the global step index (warm-up included) so callers
    can cycle through fixed batches. ``first_step_s``, when given, receives
    the wall time of step 0 (compile time for torch.compile). With a budget,
    timing stops early (see :class:`Plan`); ``agree`` makes that decision
    collective. An exception from a step is raised as :class:`BenchStepError`
    (the original, its step and whether it was a warm-up one).
    """
    done = 0
    for i in range(plan.warmup):
        t0 = time.perf_counter()
        _run(step, i, warmup=True)
        synchronize(device)  # warm-up work must not leak into the first block
        if i == 0 and first_step_s is not None:
            first_step_s.append(time.perf_counter() - t0)
        done += 1
        if tick:
            tick(done, plan.total)
    samples: list[float] = []
    timed_s = 0.0
    i = plan.warmup
    with cuda_events(device) as events:
        for size in plan.blocks:
            synchronize(device)  # start the block with an empty CUDA queue
            t0 = time.perf_counter()
            if events is not None:
                events[0].record()
            for _ in range(size):
                _run(step, i, warmup=False)
                i += 1
            if events is not None:
                events[1].record()
                events[1].synchronize()  # sync point: read the GPU-side elapsed time
                samples.append(events[0].elapsed_time(events[1]) / 1e3 / size)
            else:
                samples.append((time.perf_counter() - t0) / size)
            timed_s += time.perf_counter() - t0
            done += size
            if tick:
                tick(done, plan.total)
            if plan.budget_s is not None and i - plan.warmup < plan.steps:
                over = timed_s >= plan.budget_s and len(samples) >= plan.min_samples
                # Outside the clock: with ``agree`` this is a collective (all ranks stop together).
                if agree(over) if agree is not None else over:
                    break
    if first_step_s is not None and plan.warmup == 0 and samples:
        first_step_s.append(samples[0])
    return Timing(tuple(samples), plan.block, samples_per_step, planned_steps=plan.steps,
                  timed_steps=i - plan.warmup, budget_s=plan.budget_s)


class BenchStepError(TrainingStepError):
    """Step ``step`` of a benchmark row raised ``original`` (a warm-up step when ``warmup``).

    The step runs as one piece (no phase); a row's reason still words the
    original error, with :attr:`at_step` ('at step 4', 'at step 0 (warm-up)').
    """

    def __init__(self, step: int, original: BaseException, *, warmup: bool) -> None:
        self.warmup = warmup
        super().__init__(None, step, original)

    @property
    def at_step(self) -> str:
        return f"at step {self.step}" + (" (warm-up)" if self.warmup else "")


def _run(step: StepFn, i: int, *, warmup: bool) -> None:
    try:
        step(i)
    except (BenchStepError, KeyboardInterrupt):
        raise  # a measure() inside this step already named its own step; Ctrl-C stops the row
    except BaseException as exc:  # SystemExit from the user's step too: this step's failure, named
        raise BenchStepError(i, exc, warmup=warmup) from exc


def where_failed(exc: BaseException) -> str:
    """'at step 4' / 'at step 0 (warm-up)' for an error raised by a timed step, else ''."""
    return exc.at_step if isinstance(exc, BenchStepError) else ""


def user_error(exc: BaseException) -> BaseException:
    """The exception the user's code raised: a timed step's original, else ``exc`` itself."""
    return exc.original if isinstance(exc, BenchStepError) else exc


def describe_failure(exc: BaseException) -> tuple[str, bool]:
    """A DDP rank's error in one line, 'RuntimeError: boom (at step 4)', and whether it is an OOM."""
    text, oom = describe_rank_failure(user_error(exc))
    where = where_failed(exc)
    return (f"{text} ({where})" if where else text), oom


@contextlib.contextmanager
def cuda_events(device: torch.device) -> Iterator[tuple[torch.cuda.Event, torch.cuda.Event] | None]:
    """A start/end CUDA event pair on CUDA devices, None on CPU (events raise there)."""
    if device.type != "cuda":
        yield None
        return
    with torch.cuda.device(device):
        yield (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
