"""The timing harness: warm-up, repeated timed blocks, CUDA-synchronised clocks.

One function, :func:`measure`, times any ``step(i)`` callable the same way
for every variant, so the rows of a comparison differ only in the step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from workbench.bench.results import Timing

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


@dataclass(frozen=True)
class Plan:
    """How many steps to warm up and time, and in blocks of how many."""

    warmup: int = 3
    steps: int = 15
    block: int = 1

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.steps < 1 or self.block < 1:
            raise ValueError(f"bad timing plan {self}: need warmup >= 0, steps >= 1, block >= 1")

    @property
    def total(self) -> int:
        return self.warmup + self.steps

    @property
    def blocks(self) -> list[int]:
        """Sizes of the timed blocks: steps split into blocks of ``block`` (last may be short)."""
        full, rest = divmod(self.steps, self.block)
        return [self.block] * full + ([rest] if rest else [])


def measure(
    step: StepFn,
    plan: Plan,
    device: torch.device,
    *,
    samples_per_step: int = 0,
    tick: Tick | None = None,
    first_step_s: list[float] | None = None,
) -> Timing:
    """Run ``plan.warmup`` untimed steps, then time ``plan.steps`` steps in blocks.

    ``step(i)`` receives the global step index (warm-up included) so callers
    can cycle through fixed batches. ``first_step_s``, when given, receives
    the wall time of step 0 (compile time for torch.compile).
    """
    done = 0
    for i in range(plan.warmup):
        t0 = time.perf_counter()
        step(i)
        synchronize(device)  # warm-up work must not leak into the first block
        if i == 0 and first_step_s is not None:
            first_step_s.append(time.perf_counter() - t0)
        done += 1
        if tick:
            tick(done, plan.total)
    samples = []
    i = plan.warmup
    with cuda_events(device) as events:
        for size in plan.blocks:
            synchronize(device)  # start the block with an empty CUDA queue
            t0 = time.perf_counter()
            if events is not None:
                events[0].record()
            for _ in range(size):
                step(i)
                i += 1
            if events is not None:
                events[1].record()
                events[1].synchronize()  # sync point: read the GPU-side elapsed time
                samples.append(events[0].elapsed_time(events[1]) / 1e3 / size)
            else:
                samples.append((time.perf_counter() - t0) / size)
            done += size
            if tick:
                tick(done, plan.total)
    if first_step_s is not None and plan.warmup == 0 and samples:
        first_step_s.append(samples[0])
    return Timing(tuple(samples), plan.block, samples_per_step)


@contextlib.contextmanager
def cuda_events(device: torch.device) -> Iterator[tuple[torch.cuda.Event, torch.cuda.Event] | None]:
    """A start/end CUDA event pair on CUDA devices, None on CPU (events raise there)."""
    if device.type != "cuda":
        yield None
        return
    with torch.cuda.device(device):
        yield (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
