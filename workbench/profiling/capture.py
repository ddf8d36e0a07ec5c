"""One process's profile: the options, the size estimate and its gate, the capture itself.

Files go where TensorBoard's PyTorch Profiler plugin looks for them:
``LOGDIR/<run>/<worker>.<span>.pt.trace.json[.gz]`` (tensorboard_trace_handler).
``profile_scenario`` is the piece a DDP rank calls with its own ``rank``, so
each rank writes its own worker file into the same run directory.

Where the loss came from (``LossValue.source``: ``loss_fn``, ``outputs.loss``,
``outputs["loss"]``) is written into each trace's metadata (key
``LOSS_SOURCE_KEY``) and into the run's sidecar, so the analysis can say that
a ``forward`` range holds the loss and the ``loss`` range does not. What the
data is (``DATA_TYPE_KEY``: "DataLoader", "list" ...) goes into the metadata too,
for the dataloader rule.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import UsageError
from workbench.profiling.loop import train_steps
from workbench.profiling.options import ProfileOptions
from workbench.profiling.sidecar import safe_name
from workbench.profiling.trace import (
    DATA_TYPE_KEY,
    LOADER_WORKERS_KEY,
    LOSS_SOURCE_KEY,
    WORKER_PATTERN,
    trace_loss_source,
)

if TYPE_CHECKING:
    import torch

    from workbench.scenario import Batch, Scenario

ProgressCallback = Callable[[int, int], None]  # (steps done, steps total)


class TraceTooLargeError(UsageError):
    """The estimated trace exceeds the size limit; raised before profiling (exit 2)."""


@dataclass(frozen=True)
class SizeEstimate:
    """Trace size projected from one profiled probe step."""

    bytes_per_step: int
    events_per_step: int
    active_steps: int
    gzip: bool
    workers: int = 1  # DDP ranks, one trace file each

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_step * self.active_steps * self.workers


@dataclass(frozen=True)
class ProfileRun:
    """What a profile wrote."""

    scenario: str
    device: str
    logdir: Path
    run: str
    run_dir: Path
    files: tuple[Path, ...]
    estimate: SizeEstimate | None
    stderr_log: Path | None  # the profiler's native log lines, when there were any
    steps: int
    wall_s: float
    ranks: int = 1  # DDP ranks (one worker file each); 1 for a plain run


def default_worker_name(rank: int = 0) -> str:
    """'<host>_rank<N>': unique per rank, stable across runs, no dots (the span separator)."""
    return f"{safe_name(socket.gethostname())}_rank{rank}"


_prepared = False


def prepare_profiler() -> None:
    """Start and stop an empty profile on the calling thread, once per process.

    Kineto wants its first initialisation on the thread that imported torch:
    a first profile from a worker thread prints "External init callback must
    run in same thread as registerClient" on fd 2, whatever the log level,
    and in a TUI that line lands on the screen. Call this on the main thread
    before profiling from a worker. The first call takes a moment (Kineto
    starts up); later calls return at once.
    """
    global _prepared
    if _prepared:
        return
    from torch.profiler import profile

    with profile():
        pass
    _prepared = True


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):  # a stream the scenario put there: its failure is not ours
        sys.stderr.flush()


@contextlib.contextmanager
def redirect_stderr_fd(log_path: Path) -> Iterator[Path]:
    """Send fd 2 (C++ log lines: profiler_start, CPUAllocator warnings) to a file.

    The profiler writes straight to the file descriptor, past sys.stderr, and
    would draw over a TUI. fd 2 is restored in finally, whatever happens: also when
    ``sys.stderr`` is by then an object of the scenario's whose flush raises.
    """
    _flush_stderr()
    saved = os.dup(2)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 2)
        yield log_path
    finally:
        _flush_stderr()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def data_type_of(data: Any) -> str:
    """What the dataloader rule needs to know of ``Scenario.data``: "DataLoader" for one (or a
    subclass), else its type's name ("list", "tuple", a class of the user's)."""
    from torch.utils.data import DataLoader

    return "DataLoader" if isinstance(data, DataLoader) else type(data).__name__


def _activities(device: torch.device) -> list[Any]:
    from torch.profiler import ProfilerActivity

    acts = [ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    return acts


def profile_scenario(
    scenario: Scenario,
    run_dir: str | Path,
    options: ProfileOptions,
    *,
    rank: int = 0,
    worker_name: str | None = None,
    on_progress: ProgressCallback | None = None,
    on_loss_source: Callable[[str], None] | None = None,
    shard: Callable[[Batch], Batch] | None = None,
    data_type: str | None = None,
) -> tuple[Path, ...]:
    """Profile ``options.steps`` steps of ``scenario`` and write this worker's trace
    into ``run_dir``. Returns the files written. Callable from a DDP rank, which passes
    its ``shard`` of each batch (see ``train_steps``) and the ``data_type`` of the data
    it sliced (default: ``data_type_of(scenario.data)``).

    The trace carries where the loss came from (``LOSS_SOURCE_KEY``), and
    ``on_loss_source`` hears it too (for the run's sidecar)."""
    import json

    import torch
    from torch.profiler import ProfilerAction, profile, schedule, tensorboard_trace_handler

    run_dir = Path(run_dir)
    worker = worker_name or default_worker_name(rank)
    if "." in worker or not WORKER_PATTERN.match(f"{worker}.1.pt.trace.json"):
        raise UsageError(f"worker name {worker!r} must not contain dots (they separate the span).")
    # This worker's files only: other DDP ranks write into the same directory meanwhile.
    pattern = f"{worker}.*.pt.trace.json*"
    before = set(run_dir.glob(pattern)) if run_dir.is_dir() else set()
    kind = data_type or data_type_of(scenario.data)
    torch.manual_seed(scenario.seed)
    with profile(
        activities=_activities(scenario.device),
        schedule=schedule(wait=options.wait, warmup=options.warmup, active=options.active, repeat=1),
        on_trace_ready=tensorboard_trace_handler(str(run_dir), worker_name=worker, use_gzip=options.gzip),
        record_shapes=options.shapes,
        profile_memory=options.memory,
        with_stack=options.stack,
        with_modules=options.stack,
    ) as prof:

        def step_done(i: int) -> None:
            prof.step()
            if on_progress is not None:
                on_progress(i + 1, options.steps)

        def add_metadata(key: str, value: str) -> None:
            # Kineto keeps metadata only while it records: before the schedule's first
            # recorded step (a wait or warm-up step) it is preset, added when recording starts.
            if prof.current_action in (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE):
                prof.add_metadata(key, value)
            else:
                prof.preset_metadata_json(key, json.dumps(value))

        def loss_source(source: str) -> None:
            add_metadata(LOSS_SOURCE_KEY, trace_loss_source(source))
            if on_loss_source is not None:
                on_loss_source(source)

        add_metadata(DATA_TYPE_KEY, kind)
        workers = getattr(scenario.data, "num_workers", None)
        if kind == "DataLoader" and isinstance(workers, int):
            add_metadata(LOADER_WORKERS_KEY, str(workers))  # the advice: more of them, or cheaper ones
        train_steps(scenario, options.steps, step_done, loss_source, shard)
    return tuple(sorted(set(run_dir.glob(pattern)) - before))


def estimate_trace_size(scenario: Scenario, options: ProfileOptions, workers: int = 1) -> SizeEstimate:
    """Profile one step with the same options into a temp file and measure it.

    The probe uses its own scenario (a fresh build), so the real run starts
    from the same state as without the probe. With DDP ``workers``, each rank
    writes a file of about that size (plus its all-reduce events).
    """
    import json

    from torch.profiler import profile

    with tempfile.TemporaryDirectory(prefix="workbench-probe-") as tmp:
        path = Path(tmp) / "probe.pt.trace.json"
        with profile(
            activities=_activities(scenario.device),
            record_shapes=options.shapes,
            profile_memory=options.memory,
            with_stack=options.stack,
            with_modules=options.stack,
        ) as prof:
            train_steps(scenario, 1)
        prof.export_chrome_trace(str(path))
        raw = path.read_bytes()
    size = len(gzip.compress(raw, compresslevel=6)) if options.gzip else len(raw)
    try:
        events = len(json.loads(raw).get("traceEvents", []))
    except ValueError:
        events = 0
    return SizeEstimate(size, events, options.active, options.gzip, workers)


def _mb(size: float) -> str:
    """A size in MB with the digits it needs: '391 KB' reads '0.38 MB', not '0 MB'."""
    mb = size / 2**20
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


def too_large_message(size: SizeEstimate, max_trace_mb: float) -> str:
    ranks = f" x {size.workers} ranks" if size.workers > 1 else ""
    return (
        f"the trace would be about {_mb(size.total_bytes)} "
        f"({_mb(size.bytes_per_step)} per step x {size.active_steps} active steps{ranks}, "
        f"measured on one probe step), over the {max_trace_mb:g} MB limit. Record fewer "
        "steps (--active), drop --stack/--shapes/--memory, add --gzip, or pass --force "
        "(or a larger --max-trace-mb) to write it anyway."
    )


def size_refusal(size: SizeEstimate, max_trace_mb: float, force: bool) -> str | None:
    """Why a trace of the estimated ``size`` is not written (None when it may be): the one
    size gate of single-process, spawned-DDP and torchrun profiles."""
    if force or size.total_bytes <= max_trace_mb * 2**20:
        return None
    return too_large_message(size, max_trace_mb)
