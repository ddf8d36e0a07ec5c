"""DataLoader settings: num_workers × pin_memory, input pipeline alone and full step."""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from workbench.bench.context import BenchContext
from workbench.bench.memory import track_peak
from workbench.bench.results import Hardware, VariantResult
from workbench.bench.steps import mean_loss, train_step_fn
from workbench.bench.timing import measure
from workbench.bench.variants.base import Variant
from workbench.scenario import Batch, Scenario


def rebuild_loader(data: DataLoader, workers: int, pin: bool) -> DataLoader:
    """The scenario's DataLoader with other worker/pin settings; same dataset, sampler, collate."""
    common: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=pin,
        collate_fn=data.collate_fn,
        worker_init_fn=data.worker_init_fn,
        # The loader draws its base seed from this generator before the sampler
        # shuffles: without it the shuffled order would differ from other rows.
        generator=data.generator,
        # Workers live only as long as one iterator: nothing outlives the row.
        persistent_workers=False,
    )
    if data.batch_size is None or data.batch_sampler is None:
        return DataLoader(data.dataset, batch_size=None, sampler=data.sampler, **common)
    if type(data.batch_sampler).__name__ != "BatchSampler":  # a custom batch sampler
        return DataLoader(data.dataset, batch_sampler=data.batch_sampler, **common)
    return DataLoader(data.dataset, batch_size=data.batch_size, sampler=data.sampler,
                      drop_last=data.drop_last, **common)


class Cycle:
    """Endless batches from a loader; a new epoch starts a new iterator.

    ``rng``: the CPU RNG state the bench's fixed batches were drawn from. The loader then
    draws from a stream of its own that every epoch starts from that state, so each pass
    yields the fixed batches in their order (its base seed, the sampler's shuffle and an
    augmentation in this process draw what they drew then; workers seed their own), and the
    training's randomness (dropout) stays the other rows'. The other rows repeat the fixed
    batches every epoch; so does this one.
    """

    def __init__(self, loader: DataLoader, rng: torch.Tensor | None = None) -> None:
        self.loader = loader
        self.rng = rng
        self.stream: torch.Tensor | None = None  # the loader's stream between draws
        self.it: Iterator[Any] | None = None
        self.epochs = 0

    def next(self) -> Any:
        if self.rng is None:
            return self._draw()
        # The streams swap around each draw: two 5 KB state copies a step, a few µs in the timing.
        training = torch.get_rng_state()
        try:
            if self.stream is not None:
                torch.set_rng_state(self.stream)
            return self._draw()
        finally:
            self.stream = torch.get_rng_state()
            torch.set_rng_state(training)

    def _draw(self) -> Any:
        for _ in range(2):
            if self.it is None:
                if self.rng is not None:
                    torch.set_rng_state(self.rng)  # every pass replays the fixed batches' draws
                self.it = iter(self.loader)
                self.epochs += 1
            try:
                return next(self.it)
            except StopIteration:
                self.it = None
        raise RuntimeError("the DataLoader yields no batches")

    def close(self) -> None:
        # Dropping the iterator shuts its worker processes down (persistent_workers=False).
        self.it = None
        gc.collect()


@dataclass(frozen=True)
class Loader(Variant):
    name: str = "loader-w0"
    description: str = "DataLoader num_workers=0"
    workers: int = 0
    pin: bool = False

    def applicable(self, scenario: Scenario, hardware: Hardware) -> str | None:
        if not isinstance(scenario.data, DataLoader):
            return f"data is a {type(scenario.data).__name__}, not a DataLoader: no loader settings to compare"
        if self.pin and scenario.device.type != "cuda":
            return "pin_memory only speeds host→CUDA copies; this bench runs on CPU"
        return None

    def run(self, ctx: BenchContext) -> VariantResult:
        before = {p.pid for p in multiprocessing.active_children()}
        where = f"{ctx.source.label}: data"
        # Input pipeline alone, on its own fresh build so the full-step run
        # below starts from a fresh loader too.
        pipe = Cycle(rebuild_loader(ctx.build().data, self.workers, self.pin), ctx.data_rng)  # type: ignore[arg-type]
        try:
            pipeline = measure(lambda i: pipe.next(), ctx.plan, ctx.device, samples_per_step=ctx.batch_size)
        finally:
            pipe.close()

        scenario = ctx.build()
        full = Cycle(rebuild_loader(scenario.data, self.workers, self.pin), ctx.data_rng)  # type: ignore[arg-type]
        # One slot per fixed batch, each refilled from the loader before its step: the step is
        # the other rows' (train_step_fn), with the same epochs for a per-epoch scheduler.
        slots: list[Batch] = [Batch((), torch.empty(0))] * len(ctx.batches)
        train = train_step_fn(scenario, slots)

        def step(i: int) -> object:
            batch = scenario.make_batch(full.next(), where)
            slots[i % len(slots)] = batch.to(ctx.device, non_blocking=self.pin)
            return train(i)

        try:
            with track_peak(ctx.device) as peak:
                timing = measure(step, ctx.plan, ctx.device, samples_per_step=ctx.batch_size, tick=ctx.tick)
        finally:
            full.close()
        left = [p.pid for p in multiprocessing.active_children() if p.pid not in before]
        warnings = [f"{len(left)} loader worker(s) still alive after the row"] if left else []
        return self.ok(
            timing=timing,
            speedup_basis="fp32 (batches preloaded)",
            peak_memory=peak.bytes,
            memory_method=peak.method,
            final_loss=mean_loss(scenario, ctx.batches),
            steps_trained=ctx.plan.warmup + timing.timed_steps,
            extras={
                "num_workers": self.workers,
                "pin_memory": self.pin,
                "pipeline_samples": list(pipeline.samples),
                "pipeline_samples_per_s": pipeline.throughput,
                "workers_left": len(left),
            },
            warnings=tuple(warnings),
        )
