"""Peak RSS of an isolated run: one variant's steps in a fresh process (CPU).

In-process, a row's memory is the rise of the RSS high-water mark
(bench/memory.py), a lower bound: memory the allocator cached in earlier rows
is reused and not counted again. ``isolated_peak`` runs the same variant, on
the same scenario and batches, in a spawned process and reports that
process's peak RSS: what a training process doing only this would reach,
torch runtime included. It costs a torch import per row (2-5 s here), so
``workbench bench --isolate-memory`` asks for it; the default stays in-process.
"""

from __future__ import annotations

import gc
import resource
from dataclasses import dataclass

import torch

from workbench.bench.context import BenchContext, collect
from workbench.bench.hardware import detect
from workbench.bench.memory import proc_status_bytes
from workbench.bench.timing import Plan
from workbench.bench.variants.base import Variant
from workbench.distributed import Beat, Tick, spawn_ranks
from workbench.scenario import ScenarioSource

ISOLATED_METHOD = "peak RSS of an isolated process ({steps} steps, torch runtime included)"
# Enough steps for every lazily allocated buffer (optimizer state, autograd graph,
# allocator pools) to exist; the peak does not grow after the first few steps.
ISOLATED_PLAN = Plan(warmup=1, steps=3, block=1)


@dataclass(frozen=True)
class IsolatedJob:
    source: ScenarioSource
    variant: Variant
    threads: int
    plan: Plan = ISOLATED_PLAN


@dataclass(frozen=True)
class IsolatedPeak:
    peak_bytes: int  # the process's RSS high-water mark
    start_bytes: int  # its RSS after importing torch, before building the scenario
    method: str


def _peak_rss() -> int:
    hwm = proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _entry(rank: int, world: int, init_method: str, job: IsolatedJob, tick: Tick, beat: Beat) -> IsolatedPeak:
    torch.set_num_threads(job.threads)
    start = proc_status_bytes("VmRSS") or 0
    device = torch.device("cpu")
    probe = job.source.build(device)
    data_rng = torch.get_rng_state()  # as the bench collects them (bench/runner.py)
    batches, eval_batches = collect(probe, job.plan.total)
    # Only the batches stay, as in a process that trains this row alone: the probe's
    # model, optimizer and dataset would otherwise count twice in the peak.
    del probe
    gc.collect()
    ctx = BenchContext(job.source, device, job.plan, batches, eval_batches, detect(), data_rng=data_rng)
    result = job.variant.run(ctx)
    if not result.ok:
        raise RuntimeError(f"the isolated {job.variant.name} run did not finish: {result.reason}")
    return IsolatedPeak(_peak_rss(), start, ISOLATED_METHOD.format(steps=job.plan.total))


def isolated_peak(source: ScenarioSource, variant: Variant, threads: int, *, timeout_s: float = 300.0) -> IsolatedPeak:
    """Run ``variant`` for a few steps in a spawned process; its peak RSS.

    Raises ``workbench.distributed.RankFailed`` when the process fails or stalls.
    """
    (peak,), _ = spawn_ranks(_entry, IsolatedJob(source, variant, threads), 1, timeout_s=timeout_s)
    return peak
