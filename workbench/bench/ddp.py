"""DistributedDataParallel: the per-rank work and a local launcher.

``run_rank`` is the whole life of one rank (init, train, measure, teardown).
The local launcher spawns N ranks on 127.0.0.1 with a free port; the same
``run_rank`` runs under torchrun through ``python -m workbench.bench.ddp_worker``.

Each rank trains on its slice of the same global batches the other rows
use (global batch / N per rank), so the effective batch, and with it the
final loss, compares with fp32.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import os
import queue as queue_mod
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from workbench.bench.context import collect
from workbench.bench.memory import track_peak
from workbench.bench.steps import call, loss_is_summed, mean_loss, split_micro
from workbench.bench.timing import Plan, measure
from workbench.scenario import Batch, ScenarioSource


@dataclass(frozen=True)
class DDPJob:
    """Everything a rank needs; picklable for the spawn context."""

    source: ScenarioSource
    device: str  # "cpu" or "cuda"
    plan: Plan
    comm_steps: int = 4  # fwd+bwd steps timed with and without gradient sync
    timeout_s: float = 120.0


@dataclass(frozen=True)
class RankResult:
    rank: int
    world_size: int
    backend: str
    samples: tuple[float, ...]  # seconds per step, one per timed block
    shard_size: int
    synced_s: float  # median fwd+bwd with gradient all-reduce
    local_s: float  # median fwd+bwd under no_sync()
    final_loss: float | None  # rank 0 only
    param_digest: str
    peak_memory: int | None
    memory_method: str
    init_s: float


class RankFailed(RuntimeError):
    """A rank raised, died or timed out; the message names the rank and the error."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


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
) -> RankResult:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    backend = backend_for(job.device)
    if job.device.startswith("cuda"):
        device = torch.device("cuda", local_rank if local_rank is not None else rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # N ranks share the cores: one thread each, so ranks do not oversubscribe.
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=job.timeout_s),
    )
    init_s = time.perf_counter() - t0
    ddp = None
    try:
        scenario = job.source.build(device)
        torch.manual_seed(scenario.seed + rank)
        global_batches, _ = collect(scenario, job.plan.total)
        summed = loss_is_summed(scenario)
        shards: list[tuple[Batch, float]] = []
        for batch in global_batches:
            shard = split_micro(batch, world_size)[rank].to(device)
            # DDP averages gradients over ranks; weighting each shard's mean loss
            # by N * shard/batch makes that average the full batch's gradient.
            weight = 1.0 if summed else world_size * shard.size / batch.size
            shards.append((shard, weight))
        with track_peak(device) as peak:
            ddp = DDP(scenario.model, device_ids=[device.index] if device.type == "cuda" else None)

            def fwd_bwd(i: int) -> torch.Tensor:
                shard, weight = shards[i % len(shards)]
                loss = scenario.loss_fn(call(scenario, ddp, shard.inputs), shard.targets) * weight
                loss.backward()
                return loss

            def step(i: int) -> torch.Tensor:
                loss = fwd_bwd(i)
                scenario.optimizer.step()
                scenario.optimizer.zero_grad(set_to_none=True)
                if scenario.scheduler is not None:
                    scenario.scheduler.step()
                return loss

            timing = measure(step, job.plan, device, tick=tick if rank == 0 else None)
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
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


# -- the local launcher ---------------------------------------------------------------


def _spawn_entry(rank: int, world_size: int, port: int, job: DDPJob, out: Any) -> None:
    """Child process body: set torchrun-style env, run the rank, report back."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        result = run_rank(
            rank, world_size, job, f"tcp://127.0.0.1:{port}",
            tick=lambda done, total: out.put(("tick", rank, done, total)),
        )
        out.put(("ok", rank, asdict(result)))
    except BaseException as exc:  # report anything, including KeyboardInterrupt
        lines = traceback.format_exception_only(type(exc), exc)
        out.put(("error", rank, "".join(lines).strip()))
        raise SystemExit(1) from None


def launch_local(
    source: ScenarioSource,
    world_size: int,
    device: str,
    plan: Plan,
    *,
    timeout_s: float = 180.0,
    tick: Callable[[int, int], None] | None = None,
) -> tuple[list[RankResult], float]:
    """Spawn ``world_size`` ranks, wait for all results; (results by rank, wall seconds).

    Raises RankFailed when a rank raises, exits without a result, or the
    whole run passes ``timeout_s``; the other ranks are then terminated,
    so nothing hangs and no process is left behind.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    job = DDPJob(source, device, plan, timeout_s=timeout_s)
    procs = [ctx.Process(target=_spawn_entry, args=(r, world_size, port, job, out), daemon=True)
             for r in range(world_size)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results: dict[int, RankResult] = {}
    errors: list[str] = []

    def handle(msg: tuple[Any, ...]) -> None:
        kind, rank = msg[0], msg[1]
        if kind == "tick" and tick is not None:
            tick(msg[2], msg[3])
        elif kind == "ok":
            results[rank] = RankResult(**{**msg[2], "samples": tuple(msg[2]["samples"])})
        elif kind == "error":
            errors.append(f"rank {rank}: {msg[2]}")

    def drain(wait: float) -> None:
        for _ in range(1000):  # bounded, so deaths and the deadline are still checked
            try:
                handle(out.get(timeout=wait))
            except queue_mod.Empty:
                return

    def explain() -> str:
        # A rank that dies makes its peers fail in the collective ("Read error",
        # "Connection closed"); name the dead rank first, it is the cause.
        drain(0.5)
        reported = {int(e.split(":", 1)[0].split()[1]) for e in errors}
        dead = [r for r, p in enumerate(procs)
                if p.exitcode not in (None, 0) and r not in results and r not in reported]
        parts = [f"rank {r} died with exit code {procs[r].exitcode} before reporting a result" for r in dead]
        return "; then ".join([*parts, *errors]) or "a rank exited without reporting a result"

    failure: str | None = None
    deadline = t0 + timeout_s
    try:
        while len(results) < world_size:
            drain(0.2)
            dead = [r for r, p in enumerate(procs) if r not in results and p.exitcode is not None]
            if errors or dead:
                if not errors:
                    drain(1.0)  # a dying rank's error (or late result) may still be in flight
                if errors or any(r not in results for r in dead):
                    failure = explain()
                    break
            if time.perf_counter() > deadline:
                waiting = sorted(set(range(world_size)) - set(results))
                failure = f"timed out after {timeout_s:.0f} s waiting for rank(s) {waiting}"
                break
    finally:
        _reap(procs, graceful=failure is None)
        out.close()
        out.join_thread()
    if failure is not None:
        raise RankFailed(failure)
    return [results[r] for r in range(world_size)], time.perf_counter() - t0


def _reap(procs: list[Any], graceful: bool) -> None:
    """Join ranks that finished; terminate, then kill, those that did not."""
    for p in procs:
        p.join(timeout=10.0 if graceful else 0.5)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout=3.0)
        if p.is_alive():
            p.kill()
            p.join(timeout=3.0)
