"""Ranks of a torch.distributed job: joining a process group, leaving it, and a
local launcher that spawns N ranks on 127.0.0.1.

Used by ``workbench bench --variants ddp-N`` and ``workbench profile --ddp N``.
The same per-rank functions run under torchrun, which sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT (init_method ``env://``).

``spawn_ranks`` is the launcher: each child runs ``entry(rank, world_size,
init_method, payload, tick, beat)`` and its return value (picklable) comes
back. A rank that raises, dies or stalls fails the whole job with
``RankFailed`` naming the rank; the other ranks are stopped, so nothing hangs
and no process is left behind.
"""

from __future__ import annotations

import datetime
import gc
import os
import queue as queue_mod
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

Tick = Callable[[int, int], None]  # (steps done, steps total), from rank 0
Beat = Callable[[], None]  # "still alive": restarts the launcher's stall clock
# entry(rank, world_size, init_method, payload, tick, beat) -> a picklable result
RankEntry = Callable[[int, int, str, Any, Tick, Beat], Any]

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankFailed(RuntimeError):
    """A rank raised, died or timed out; the message names the rank and the error."""

    def __init__(self, message: str, oom: bool = False) -> None:
        super().__init__(message)
        self.oom = oom  # a rank ran out of memory: callers report it as OOM


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def ddp_unavailable(device_type: str, gpus_needed: int, gpus_found: int) -> str | None:
    """Why DDP cannot run here (no torch.distributed, no backend, too few GPUs), or None."""
    import torch.distributed as dist

    if not dist.is_available():
        return f"torch {torch.__version__} was built without torch.distributed"
    if device_type == "cuda":
        if not dist.is_nccl_available():
            return "this torch build has no NCCL backend"
        if gpus_found < gpus_needed:
            return f"needs {gpus_needed} CUDA devices (one per rank), found {gpus_found}"
    elif not dist.is_gloo_available():
        return "this torch build has no gloo backend"
    return None


def under_torchrun() -> bool:
    """True when a launcher (torchrun, or any env:// launcher) set up this process as a rank."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def join_group(rank: int, world_size: int, device: str, init_method: str, *,
               local_rank: int | None = None, timeout_s: float = 120.0) -> torch.device:
    """Pick this rank's device, then init_process_group (nccl on CUDA, gloo on CPU).

    On CPU the N ranks share the cores: one intra-op thread each, so they do
    not oversubscribe. On CUDA each rank takes the GPU of its local rank.
    """
    import torch.distributed as dist

    if device.startswith("cuda"):
        dev = torch.device("cuda", local_rank if local_rank is not None else rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=timeout_s)
    if init_method.startswith(LOOPBACK_INIT):
        # A local spawn: the store (rank 0's TCP server, unauthenticated) must listen on
        # loopback only; given just an address, c10d's TCPStore binds every interface.
        port = int(init_method.removeprefix(LOOPBACK_INIT))
        store = loopback_store(port, world_size, rank == 0, timeout)
        dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=world_size, timeout=timeout)
    else:
        dist.init_process_group(backend_for(device), init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timeout)
    return dev


LOOPBACK_INIT = "tcp://127.0.0.1:"


def loopback_store(port: int, world_size: int, is_master: bool, timeout: datetime.timedelta) -> Any:
    """A c10d TCPStore whose server socket is bound to 127.0.0.1 (not 0.0.0.0 / ::).

    The master binds the socket itself and hands the listening descriptor over
    (``master_listen_fd``); the other ranks connect to 127.0.0.1:port.
    """
    import torch.distributed as dist

    if not is_master:
        return dist.TCPStore("127.0.0.1", port, world_size, False, timeout)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(max(world_size, 16))
    except BaseException:
        sock.close()
        raise
    fd = sock.detach()  # the store owns the descriptor from here
    return dist.TCPStore("127.0.0.1", port, world_size, True, timeout, wait_for_workers=False,
                         master_listen_fd=fd)


def _loopback_interface() -> str | None:
    """The loopback interface's name (lo on Linux, lo0 on macOS), or None."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


def leave_group() -> None:
    """destroy_process_group after a gc pass.

    The caller drops its DDP wrapper first: a live DDP reducer during
    destroy_process_group can abort the process at exit ("terminate called
    without an active exception").
    """
    import torch.distributed as dist

    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


# -- the local launcher ---------------------------------------------------------------


def describe_failure(exc: BaseException) -> tuple[str, bool]:
    """A rank's error as one line ('RuntimeError: boom') and whether it ran out of memory."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text, isinstance(exc, torch.OutOfMemoryError)


# A rank's exception -> (one line for the report, out of memory?); a front end that wraps the
# user's error (the bench's StepError) says it in the user's words.
Describe = Callable[[BaseException], tuple[str, bool]]


def _spawn_entry(rank: int, world_size: int, port: int, entry: RankEntry, payload: Any,
                 describe: Describe, out: Any) -> None:
    """Child process body: set torchrun-style env, run the rank, report back."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    loopback = _loopback_interface()
    if loopback is not None:  # the backends' own sockets (gloo pairs, NCCL bootstrap) on loopback too
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
    try:
        result = entry(rank, world_size, f"{LOOPBACK_INIT}{port}", payload,
                       lambda done, total: out.put(("tick", rank, done, total)),
                       lambda: out.put(("alive", rank)))
        out.put(("ok", rank, result))
    except BaseException as exc:  # report anything, including KeyboardInterrupt
        text, oom = describe(exc)
        out.put(("error", rank, text, oom))
        raise SystemExit(1) from None


def spawn_ranks(
    entry: RankEntry,
    payload: Any,
    world_size: int,
    *,
    timeout_s: float = 180.0,
    tick: Tick | None = None,
    describe: Describe = describe_failure,
) -> tuple[list[Any], float]:
    """Spawn ``world_size`` ranks running ``entry``; (results by rank, wall seconds).

    ``entry``, ``payload`` and ``describe`` (which words a rank's error in one
    line, e.g. 'RuntimeError: boom (at step 4)') must be picklable: module-level functions and
    frozen dataclasses. Raises RankFailed when a rank raises, exits without a
    result, or no rank has reported anything (start-up, a step, a result) for
    ``timeout_s``. A stall timeout, not a total one: a long run is fine as
    long as the ranks keep stepping.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    # Not daemonic: a rank may start processes of its own (DataLoader workers), which
    # daemonic processes may not. The finally below stops every rank however this ends.
    procs = [ctx.Process(target=_spawn_entry, args=(r, world_size, port, entry, payload, describe, out))
             for r in range(world_size)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
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
            results[rank] = msg[2]
        elif kind == "error":
            errors.append(f"rank {rank}: {' '.join(str(msg[2]).split())}")  # one line for a table row
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
    finished = False  # the loop ended by itself; not by Ctrl-C / SIGTERM escaping it
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
        finished = True
    finally:
        # Interrupted: stop the ranks now (terminate, then kill), not after a 10 s grace each.
        _reap(procs, graceful=finished and failure is None)
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
