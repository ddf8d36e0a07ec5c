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
from workbench.bench.timing import Plan, measure, where_failed
from workbench.scenario import Batch, ScenarioSource


@dataclass(frozen=True)
class DDPJob:
    """Everything a rank needs; picklable for the spawn context."""

    source: ScenarioSource
    device: str  # "cpu" or "cuda"
    plan: Plan
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


class RankFailed(RuntimeError):
    """A rank raised, died or timed out; the message names the rank and the error."""

    def __init__(self, message: str, oom: bool = False) -> None:
        super().__init__(message)
        self.oom = oom  # a rank ran out of memory: the runner reports it as OOM


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
    beat: Callable[[], None] | None = None,
) -> RankResult:
    """The life of one rank; ``tick`` reports timed-loop progress, ``beat`` that it is alive."""
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
    if beat is not None:
        beat()  # the rendezvous worked: the launcher's stall clock restarts here
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
            beat=lambda: out.put(("alive", rank)),
        )
        out.put(("ok", rank, asdict(result)))
    except BaseException as exc:  # report anything, including KeyboardInterrupt
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        where = where_failed(exc)
        oom = isinstance(exc, torch.OutOfMemoryError)
        out.put(("error", rank, f"{text} ({where})" if where else text, oom))
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

    Raises RankFailed when a rank raises, exits without a result, or no rank
    has reported anything (start-up, a step, a result) for ``timeout_s``;
    the other ranks are then terminated, so nothing hangs and no process
    is left behind. A stall timeout, not a total one: a long explicit
    ``--steps`` run is fine as long as the ranks keep stepping.
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
    oom = False
    heard = t0

    def handle(msg: tuple[Any, ...]) -> None:
        nonlocal heard, oom
        heard = time.perf_counter()
        kind, rank = msg[0], msg[1]
        if kind == "tick" and tick is not None:
            tick(msg[2], msg[3])
        elif kind == "ok":
            results[rank] = RankResult(**{**msg[2], "samples": tuple(msg[2]["samples"])})
        elif kind == "error":
            errors.append(f"rank {rank}: {' '.join(str(msg[2]).split())}")  # one line for the row
            oom = oom or bool(msg[3])

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
    try:
        while len(results) < world_size:
            drain(0.2)
            dead = [r for r, p in enumerate(procs) if r not in results and p.exitcode is not None]
            if errors or dead:
                if not errors:
                    drain(1.0)  # a dying rank's error (or late result) may still be in flight
                if errors or any(r not in results for r in dead):
                    failure = f"{explain()}; the other ranks were stopped (stall timeout {timeout_s:.0f} s)"
                    break
            if time.perf_counter() - heard > timeout_s:
                waiting = sorted(set(range(world_size)) - set(results))
                failure = (f"timed out: no word from the ranks for {timeout_s:.0f} s (the DDP stall "
                           f"timeout) while waiting for rank(s) {waiting}; all ranks were stopped")
                break
    finally:
        _reap(procs, graceful=failure is None)
        out.close()
        out.join_thread()
    if failure is not None:
        raise RankFailed(failure, oom=oom)
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
