"""DistributedDataParallel: the per-rank work and a local launcher.

``run_rank`` is the whole life of one rank (init, train, measure, teardown).
``launch_local`` spawns N ranks on 127.0.0.1 (``workbench.distributed``); the
same ``run_rank`` runs under torchrun through ``python -m workbench.bench.ddp_worker``.

Each rank trains on its slice of the same global batches the other rows
use (global batch / N per rank), so the effective batch, and with it the
final loss, compares with fp32. The bench ships its own fixed batches to the
ranks (a shuffled DataLoader drawn again in a rank would shuffle anew); under
torchrun each rank draws them from its fresh build as the bench does: right
after ``build()``, before any reseed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from workbench.bench.context import collect
from workbench.bench.memory import track_peak
from workbench.bench.steps import EpochClock, mean_loss
from workbench.bench.timing import Plan, describe_failure, measure
from workbench.distributed import Beat, Tick, backend_for, join_group, leave_group, spawn_ranks
from workbench.scenario import Batch, ScenarioSource
from workbench.scenario.step import (
    apply_update,
    backward,
    forward_loss,
    prepare_update,
    scheduler_after_update,
)


@dataclass(frozen=True)
class DDPJob:
    """Everything a rank needs; picklable for the spawn context."""

    source: ScenarioSource
    device: str  # "cpu" or "cuda"
    plan: Plan
    batches: tuple[Batch, ...] | None = None  # the bench's fixed global batches (None: draw them)
    comm_steps: int = 4  # fwd+bwd steps timed with and without gradient sync
    timeout_s: float = 120.0  # collective timeout inside the ranks


@dataclass(frozen=True)
class RankResult:
    rank: int
    world_size: int
    backend: str
    samples: tuple[float, ...]  # seconds per step, one per timed block
    timed_steps: int  # fewer than the plan's steps when its time budget ran out
    shard_size: int
    synced_s: float  # median fwd+bwd with gradient all-reduce
    local_s: float  # median fwd+bwd under no_sync()
    final_loss: float | None  # rank 0 only
    param_digest: str
    peak_memory: int | None
    memory_method: str
    init_s: float


def param_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_rank(
    rank: int,
    world_size: int,
    job: DDPJob,
    init_method: str,
    local_rank: int | None = None,
    tick: Callable[[int, int], None] | None = None,
    beat: Callable[[], None] | None = None,
) -> RankResult:
    """The life of one rank; ``tick`` reports timed-loop progress, ``beat`` that it is alive."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    backend = backend_for(job.device)
    t0 = time.perf_counter()
    device = join_group(rank, world_size, job.device, init_method, local_rank=local_rank, timeout_s=job.timeout_s)
    init_s = time.perf_counter() - t0
    if beat is not None:
        beat()  # the rendezvous worked: the launcher's stall clock restarts here
    ddp = None
    try:
        scenario = job.source.build(device)
        global_batches = job.batches if job.batches is not None else collect(scenario, job.plan.total)[0]
        torch.manual_seed(scenario.seed + rank)  # the step's own randomness (dropout) per rank
        summed = scenario.loss_is_summed
        shards: list[tuple[Batch, float]] = []
        for batch in global_batches:
            shard = batch.split(world_size)[rank].to(device)  # along the scenario's batch_dim
            # DDP averages gradients over ranks; weighting each shard's mean loss
            # by N * shard/batch makes that average the full batch's gradient.
            weight = 1.0 if summed else world_size * shard.size / batch.size
            shards.append((shard, weight))
        with track_peak(device) as peak:
            ddp = DDP(scenario.model, device_ids=[device.index] if device.type == "cuda" else None)

            def fwd_bwd(i: int) -> torch.Tensor:
                shard, weight = shards[i % len(shards)]
                _, value = forward_loss(scenario, shard, ddp, autocast=None)
                loss = value.total * weight
                backward(loss)
                return loss

            plateau = (scenario.scheduler_step is None
                       and isinstance(scenario.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))

            def whole_batch(loss: torch.Tensor) -> torch.Tensor:
                """The global batch's loss from this rank's weighted shard loss, for a scheduler that
                reads it: a rank's own would give each rank its own learning rate, and the replicas
                would part."""
                if not plateau:
                    return loss  # no scheduler reads it: no collective
                # A collective inside the timed step, as the host sync ReduceLROnPlateau makes anyway.
                total = loss.detach().clone()
                dist.all_reduce(total)
                return total if summed else total / world_size

            clock = EpochClock(scenario, len(shards), reduce=whole_batch)

            def step(i: int) -> torch.Tensor:
                clock.before(i)
                loss = fwd_bwd(i)
                prepare_update(scenario)  # clipping sees the all-reduced gradients
                apply_update(scenario)
                if scenario.scheduler_interval != "epoch":  # else the clock steps it, once an epoch
                    scheduler_after_update(scenario, i + 1, clock.epoch(i), whole_batch(loss.detach()))
                return clock.after(loss)

            flag = torch.zeros(1, device=device)

            def agree(stop: bool) -> bool:
                # A collective between timed blocks (outside the clock): a rank that left
                # the loop alone would leave its peers waiting in the next all-reduce.
                flag.fill_(1.0 if stop else 0.0)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                return bool(flag.item())  # .item(): host-device sync, once per block

            timing = measure(step, job.plan, device, tick=tick if rank == 0 else None, agree=agree)
        if beat is not None:
            beat()
        final = mean_loss(scenario, global_batches) if rank == 0 else None
        digest = param_digest(scenario.model)

        # Exposed communication: fwd+bwd with the all-reduce vs under no_sync().
        # No optimizer step here, so the trained weights above stay as they are.
        comm_plan = Plan(warmup=1, steps=job.comm_steps)

        def zeroed(fn: Callable[[int], torch.Tensor]) -> Callable[[int], None]:
            def run(i: int) -> None:
                fn(i)
                scenario.optimizer.zero_grad(set_to_none=True)
            return run

        synced = measure(zeroed(fwd_bwd), comm_plan, device)
        if beat is not None:
            beat()

        def local(i: int) -> None:
            with ddp.no_sync():
                fwd_bwd(i)
            scenario.optimizer.zero_grad(set_to_none=True)

        unsynced = measure(local, comm_plan, device)
        return RankResult(
            rank=rank,
            world_size=world_size,
            backend=backend,
            samples=timing.samples,
            timed_steps=timing.timed_steps,
            shard_size=shards[0][0].size,
            synced_s=synced.median,
            local_s=unsynced.median,
            final_loss=final,
            param_digest=digest,
            peak_memory=peak.bytes,
            memory_method=peak.method + " per rank",
            init_s=init_s,
        )
    finally:
        # Teardown order matters: a live DDP reducer during destroy_process_group
        # can abort the process at exit ("terminate called without an active exception").
        del ddp
        leave_group()


# -- the local launcher ---------------------------------------------------------------


def _rank_entry(rank: int, world_size: int, init_method: str, job: DDPJob, tick: Tick, beat: Beat) -> RankResult:
    return run_rank(rank, world_size, job, init_method, tick=tick, beat=beat)


def launch_local(
    source: ScenarioSource,
    world_size: int,
    device: str,
    plan: Plan,
    *,
    batches: tuple[Batch, ...] | None = None,
    timeout_s: float = 180.0,
    tick: Tick | None = None,
) -> tuple[list[RankResult], float]:
    """Spawn ``world_size`` ranks on 127.0.0.1 and wait for all results; (results by
    rank, wall seconds). ``batches``: the global batches every rank trains on and rank 0
    scores on (None: each rank draws them from its build). Raises RankFailed as
    ``spawn_ranks`` does."""
    job = DDPJob(source, device, plan, batches, timeout_s=timeout_s)
    return spawn_ranks(_rank_entry, job, world_size, timeout_s=timeout_s, tick=tick, describe=describe_failure)
