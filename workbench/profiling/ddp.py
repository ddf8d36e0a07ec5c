"""Profiling DistributedDataParallel ranks.

Every rank wraps the scenario's model in DistributedDataParallel, trains on
its 1/N slice of each batch (the global batch stays the scenario's, as in
``workbench bench --variants ddp-N``), and writes its own worker file,
``<host>_rank<N>.<span>.pt.trace.json``, into the one run directory. The
gradient all-reduce shows up in each trace as communication, which the
analysis and TensorBoard's distributed view read per worker.

``profile_ddp`` spawns N local ranks (gloo on CPU, nccl on CUDA, one GPU per
rank). ``profile_rank`` is the per-rank piece; under torchrun the
``workbench profile`` command calls it in each process it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.distributed import Beat, Tick, join_group, leave_group, spawn_ranks
from workbench.errors import UsageError
from workbench.profiling.capture import (
    ProfileRun,
    ProgressCallback,
    SizeEstimate,
    TraceTooLargeError,
    data_type_of,
    estimate_trace_size,
    profile_scenario,
    redirect_stderr_fd,
    size_refusal,
)
from workbench.profiling.options import ProfileOptions
from workbench.profiling.sidecar import (
    check_logdir,
    check_run_name,
    default_run_name,
    drop_if_empty,
    write_metadata,
)
from workbench.scenario import Batch, Scenario, ScenarioError, ScenarioSource, replace, split_batch


def check_ddp_ranks(device: torch.device, gpus_needed: int) -> None:
    """Say before spawning anything why DDP ranks needing ``gpus_needed`` GPUs here cannot run."""
    import torch

    from workbench.distributed import ddp_unavailable

    found = torch.cuda.device_count() if device.type == "cuda" else 0
    reason = ddp_unavailable(device.type, gpus_needed, found)
    if reason is not None:
        hint = "; use --device cpu (gloo)" if device.type == "cuda" else ""
        raise UsageError(f"--ddp: {reason}{hint}.")


@dataclass(frozen=True)
class RankProfileJob:
    """Everything a rank needs; picklable for the spawn context."""

    source: ScenarioSource
    device: str  # "cpu" or "cuda"
    run_dir: str
    options: ProfileOptions
    timeout_s: float = 180.0  # collective timeout inside the ranks


def rank_slice(batch: Batch, rank: int, world_size: int) -> Batch:
    """Slice ``rank`` of ``batch`` cut along its batch dimension into ``world_size`` slices."""
    if batch.size < world_size:
        raise ScenarioError(
            f"a batch of {batch.size} samples cannot be split over {world_size} ranks; "
            f"use a batch size of at least {world_size} or fewer ranks (--ddp)."
        )
    return batch.split(world_size)[rank]  # bench ddp-N splits the same way


class RankShard:
    """``data`` with every batch cut along the batch dimension into ``world_size`` slices;
    yields slice ``rank`` in the structure the data yielded."""

    def __init__(self, data: Iterable[Any], rank: int, world_size: int, scenario: Scenario | None = None) -> None:
        self.data, self.rank, self.world_size, self.scenario = data, rank, world_size, scenario

    def __iter__(self) -> Iterator[Any]:
        for item in self.data:
            batch = self.scenario.make_batch(item) if self.scenario is not None else split_batch(item)
            yield rank_slice(batch, self.rank, self.world_size).structure


def rank_data(scenario: Scenario, rank: int, world_size: int) -> tuple[Any, Callable[[Batch], Batch] | None]:
    """What a rank profiles: its data and the ``shard`` the loop applies to each batch.

    Slicing is the workbench's work, not the data's, so it stays out of the ``dataloader``
    range: batches already in memory (a list, a tuple) are sliced here, before profiling
    (views, no copies); any other data (a DataLoader) is loaded as it is, and the loop
    slices each batch between the fetch and the copy to the device.
    """
    if isinstance(scenario.data, (list, tuple)):
        return list(RankShard(scenario.data, rank, world_size, scenario)), None
    return scenario.data, lambda batch: rank_slice(batch, rank, world_size)


def profile_rank(
    rank: int,
    world_size: int,
    job: RankProfileJob,
    device: torch.device,
    *,
    on_progress: ProgressCallback | None = None,
) -> tuple[Path, ...]:
    """In an initialised process group: build, wrap in DDP, profile, then wait for
    every rank (a barrier), so the run directory is complete when any rank returns."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    scenario = job.source.build(device)
    ddp = DistributedDataParallel(scenario.model, device_ids=[device.index] if device.type == "cuda" else None)
    try:
        data, shard = rank_data(scenario, rank, world_size)
        wrapped = replace(scenario, model=ddp, data=data)
        files = profile_scenario(wrapped, job.run_dir, job.options, rank=rank, on_progress=on_progress,
                                 shard=shard, data_type=data_type_of(scenario.data))
        dist.barrier()
        return files
    finally:
        del ddp  # before leave_group: a live reducer can abort the process at exit


def _rank_entry(rank: int, world_size: int, init_method: str, job: RankProfileJob, tick: Tick,
                beat: Beat) -> tuple[Path, ...]:
    device = join_group(rank, world_size, job.device, init_method, timeout_s=job.timeout_s)
    beat()  # the rendezvous worked: the launcher's stall clock restarts here
    try:
        return profile_rank(rank, world_size, job, device, on_progress=tick if rank == 0 else None)
    finally:
        leave_group()


def profile_ddp(
    job: RankProfileJob,
    world_size: int,
    *,
    on_progress: ProgressCallback | None = None,
) -> tuple[Path, ...]:
    """Spawn ``world_size`` local ranks and profile each; the files written, rank by rank.

    Raises ``workbench.distributed.RankFailed`` naming the rank when one
    raises, dies or stalls for ``job.timeout_s``; the other ranks are stopped.
    """
    if world_size < 2:
        raise ValueError(f"profile_ddp needs at least 2 ranks, got {world_size}")
    per_rank, _ = spawn_ranks(_rank_entry, job, world_size, timeout_s=job.timeout_s, tick=on_progress)
    return tuple(f for files in per_rank for f in files)


def profile_torchrun(
    source: ScenarioSource,
    device: str,
    logdir: str | Path,
    options: ProfileOptions,
    *,
    run: str | None = None,
    max_trace_mb: float,
    force: bool = False,
    timeout_s: float = 300.0,
    on_progress: ProgressCallback | None = None,
    on_estimate: Callable[[SizeEstimate], None] | None = None,
) -> ProfileRun:
    """This process is one rank of a torchrun job (RANK, WORLD_SIZE, ... set): profile it.

    Rank 0 picks the run name (its clock) and measures the trace size; both are
    broadcast, so every rank writes into the same run directory and all stop
    together when the trace would be too large. Returns this rank's run; for
    rank 0 its ``files`` are every rank's files of this run (gathered after a
    barrier), and rank 0 writes the run's metadata; for the others their own.
    """
    import os
    import time

    import torch.distributed as dist

    from workbench.files import check_writable
    from workbench.scenario import resolve_device

    logdir = check_logdir(logdir)  # and the run name: both before the rendezvous, on every rank
    if run is not None:
        check_run_name(run)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    kind = resolve_device(device).type
    check_ddp_ranks(torch.device(kind), 1)  # under torchrun each process needs one GPU of its own
    started = time.perf_counter()
    dev = join_group(rank, world, kind, "env://", local_rank=local, timeout_s=timeout_s)
    try:
        size: SizeEstimate | None = None
        verdict: list[Any] = [check_run_name(run or default_run_name(source.label)), None, None]
        if rank == 0:
            size = estimate_trace_size(source.build(dev), options, workers=world)
            verdict[1] = size
            verdict[2] = size_refusal(size, max_trace_mb, force)
        dist.broadcast_object_list(verdict, src=0)  # the one collective before profiling
        run_name, size, refusal = verdict
        if on_estimate is not None and size is not None:
            on_estimate(size)
        if refusal is not None:
            raise TraceTooLargeError(refusal)
        run_dir = check_writable(Path(logdir) / run_name, directory=True)
        job = RankProfileJob(source, kind, str(run_dir), options, timeout_s=timeout_s)
        with redirect_stderr_fd(run_dir / f"profiler-stderr.rank{rank}.log") as log_path:
            files = profile_rank(rank, world, job, dev, on_progress=on_progress)
        # Every rank's file names to rank 0: this run's files only, not stale ones from an
        # earlier run of the same name. (On several nodes they are on each node's disk
        # unless the logdir is shared.)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, [str(f) for f in files])
    finally:
        leave_group()
    if rank == 0:
        files = tuple(sorted(Path(f) for names in gathered for f in names))
        write_metadata(run_dir, source, dev, options, world, files)
    return ProfileRun(
        scenario=source.label, device=str(dev), logdir=Path(logdir), run=run_name, run_dir=run_dir,
        files=files, estimate=size, stderr_log=None if drop_if_empty(log_path) else log_path,
        steps=options.steps, wall_s=time.perf_counter() - started, ranks=world,
    )
