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
    """Endless batches from a loader; a new epoch starts a new iterator."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.it: Iterator[Any] | None = None
        self.epochs = 0

    def next(self) -> Any:
        for _ in range(2):
            if self.it is None:
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
        # below sees the same shuffled order as every other row.
        pipe = Cycle(rebuild_loader(ctx.build().data, self.workers, self.pin))  # type: ignore[arg-type]
        try:
            pipeline = measure(lambda i: pipe.next(), ctx.plan, ctx.device, samples_per_step=ctx.batch_size)
        finally:
            pipe.close()

        scenario = ctx.build()
        full = Cycle(rebuild_loader(scenario.data, self.workers, self.pin))  # type: ignore[arg-type]
        batches: list[Batch] = [Batch((), torch.empty(0))]  # one slot, refilled per step
        train = train_step_fn(scenario, batches)

        def step(i: int) -> object:
            batch = scenario.make_batch(full.next(), where)
            batches[0] = batch.to(ctx.device, non_blocking=self.pin)
            return train(0)

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
