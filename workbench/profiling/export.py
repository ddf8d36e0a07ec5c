"""Running a scenario's training loop under torch.profiler and writing the trace.

The loop marks every step with ``prof.step()`` and each phase with a
``record_function`` range named exactly (the analysis relies on them):

``dataloader``      next batch from ``Scenario.data`` and its copy to the device
``forward``         ``scenario.call_model(batch)`` (under the scenario's autocast)
``loss``            ``scenario.compute_loss(outputs, batch)``; when the model computes the
                    loss itself (``loss_fn=None``) this only reads ``outputs.loss`` and the
                    loss's own time is inside ``forward``
``backward``        ``loss.backward()`` (through the GradScaler under fp16)
``optimizer_step``  clipping (``clip_grad``) and ``before_step`` inside it, then
                    ``optimizer.step()`` and the scheduler's step

Where the loss came from (``LossValue.source``: ``loss_fn``, ``outputs.loss``,
``outputs["loss"]``) is written into each trace's metadata (key
``LOSS_SOURCE_KEY``) and into the run's sidecar, so the analysis can say that
a ``forward`` range holds the loss and the ``loss`` range does not.

Files go where TensorBoard's PyTorch Profiler plugin looks for them:
``LOGDIR/<run>/<worker>.<span>.pt.trace.json[.gz]`` (tensorboard_trace_handler).
``profile_scenario`` is the piece a DDP rank calls with its own ``rank``, so
each rank writes its own worker file into the same run directory.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import UsageError
from workbench.profiling.native_logs import quiet_native_logs
from workbench.profiling.trace import LOSS_SOURCE_KEY, WORKER_PATTERN, trace_loss_source

if TYPE_CHECKING:
    import torch

    from workbench.scenario import Scenario, ScenarioSource

# Warn (and stop unless forced) when the estimated trace is bigger than this:
# TensorBoard's plugin and chrome://tracing get slow to unusable past a few hundred MB.
DEFAULT_MAX_TRACE_MB = 200
STDERR_LOG = "profiler-stderr.log"
METADATA_FILE = "workbench-profile.json"  # not matched by the plugin's file pattern

ProgressCallback = Callable[[int, int], None]  # (steps done, steps total)


class ProfileInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during profiling; the profiler still wrote what it had."""

    def __init__(self, run_dir: Path, files: tuple[Path, ...]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.files = files


class TraceTooLargeError(UsageError):
    """The estimated trace exceeds the size limit; raised before profiling (exit 2)."""


@dataclass(frozen=True)
class ProfileOptions:
    wait: int = 1
    warmup: int = 1
    active: int = 3
    memory: bool = False  # profile_memory: [memory] events, memory curve
    shapes: bool = False  # record_shapes: input shapes in the operator table
    stack: bool = False  # with_stack (+ with_modules): Python stacks, nn.Module ranges
    gzip: bool = False

    def __post_init__(self) -> None:
        if self.wait < 0 or self.warmup < 0:
            raise UsageError(f"--wait and --warmup must be >= 0, got {self.wait} and {self.warmup}.")
        if self.active < 1:
            raise UsageError(f"--active must be >= 1 (steps recorded in the trace), got {self.active}.")

    @property
    def steps(self) -> int:
        return self.wait + self.warmup + self.active


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


def default_run_name(label: str, now: datetime | None = None) -> str:
    """'<scenario label>-<YYYYmmdd-HHMMSS>', safe as a directory name."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{_safe(label)}-{stamp}"


def default_worker_name(rank: int = 0) -> str:
    """'<host>_rank<N>': unique per rank, stable across runs, no dots (the span separator)."""
    return f"{_safe(socket.gethostname())}_rank{rank}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "run"


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


@contextlib.contextmanager
def redirect_stderr_fd(log_path: Path) -> Iterator[Path]:
    """Send fd 2 (C++ log lines: profiler_start, CPUAllocator warnings) to a file.

    The profiler writes straight to the file descriptor, past sys.stderr, and
    would draw over a TUI. fd 2 is restored in finally, whatever happens.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 2)
        yield log_path
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def _activities(device: torch.device) -> list[Any]:
    from torch.profiler import ProfilerActivity

    acts = [ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    return acts


def train_steps(
    scenario: Scenario, steps: int, on_step: Callable[[int], None] | None = None,
    on_loss_source: Callable[[str], None] | None = None,
) -> None:
    """The training loop with the named phase ranges; ``on_step(i)`` after each step,
    ``on_loss_source(LossValue.source)`` once, after the first step's loss."""
    from torch.profiler import record_function

    from workbench.scenario import ScenarioError
    from workbench.scenario.step import (
        DataCycle,
        apply_update,
        backward,
        prepare_update,
        scheduler_after_update,
        scheduler_at_epoch,
    )

    device = scenario.device
    batches = DataCycle(scenario)  # re-iterated when exhausted, so --steps may exceed one epoch
    scaler = scenario.make_scaler()  # fp16 as the user trains it
    scenario.model.train()
    phase = "dataloader"
    try:
        for i in range(steps):
            phase = "dataloader"
            with record_function("dataloader"):
                # The copy to the device as the Batch makes it (non_blocking only from pinned
                # memory to a GPU), as in a plain training loop: that wait is part of what the
                # profile should show.
                batch = next(batches).to(device)
            if batches.epoch_started:
                scheduler_at_epoch(scenario, i, batches.epoch)
            scenario.optimizer.zero_grad(set_to_none=True)
            phase = "forward"
            with record_function("forward"), scenario.autocast():
                outputs = scenario.call_model(batch)
            phase = "loss"
            with record_function("loss"), scenario.autocast():
                value = scenario.compute_loss(outputs, batch)
            loss = value.total
            if i == 0 and on_loss_source is not None:
                on_loss_source(value.source)
            phase = "backward"
            with record_function("backward"):
                backward(loss, scaler)
            phase = "optimizer_step"
            with record_function("optimizer_step"):
                if scenario.clip_grad_norm is not None or scenario.before_step is not None:
                    with record_function("clip_grad+before_step"):
                        prepare_update(scenario, scaler)
                apply_update(scenario, scaler)
                scheduler_after_update(scenario, i + 1, batches.epoch, loss.detach())
            # No loss.item() here: it would add a host-device sync the real loop may not have.
            if on_step is not None:
                on_step(i)
    except ScenarioError:
        raise
    except Exception as exc:
        raise _step_error(scenario, phase, i, exc) from exc


def _step_error(scenario: Scenario, phase: str, step: int, exc: Exception) -> Exception:
    """The user's code raised inside a step: say where (file:line) and in which phase."""
    import traceback

    from workbench.scenario import ScenarioError

    source = scenario.source
    path = source.path if source is not None else None
    line = None
    if path is not None:
        for frame in traceback.extract_tb(exc.__traceback__):
            if Path(frame.filename).resolve() == Path(path).resolve():
                line = frame.lineno
    where = (source.where if source is not None else scenario.name or "scenario") + (f":{line}" if line else "")
    return ScenarioError(
        f"{where}: the {phase} phase of step {step} raised {type(exc).__name__}: {exc}. "
        "Fix the scenario (run with --verbose for the full traceback).",
        path=path,
        line=line,
    )


def profile_scenario(
    scenario: Scenario,
    run_dir: str | Path,
    options: ProfileOptions,
    *,
    rank: int = 0,
    worker_name: str | None = None,
    on_progress: ProgressCallback | None = None,
    on_loss_source: Callable[[str], None] | None = None,
) -> tuple[Path, ...]:
    """Profile ``options.steps`` steps of ``scenario`` and write this worker's trace
    into ``run_dir``. Returns the files written. Callable from a DDP rank.

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

        def loss_source(source: str) -> None:
            # Kineto keeps metadata only while it records: before the schedule's first
            # recorded step (a wait or warm-up step) it is preset, added when recording starts.
            value = trace_loss_source(source)
            if prof.current_action in (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE):
                prof.add_metadata(LOSS_SOURCE_KEY, value)
            else:
                prof.preset_metadata_json(LOSS_SOURCE_KEY, json.dumps(value))
            if on_loss_source is not None:
                on_loss_source(source)

        train_steps(scenario, options.steps, step_done, loss_source)
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


def run_profile(
    source: ScenarioSource,
    device: str | torch.device,
    logdir: str | Path,
    options: ProfileOptions,
    *,
    run: str | None = None,
    max_trace_mb: float = DEFAULT_MAX_TRACE_MB,
    force: bool = False,
    estimate: bool = True,
    capture_stderr: bool = True,
    on_progress: ProgressCallback | None = None,
    on_estimate: Callable[[SizeEstimate], None] | None = None,
    ranks: int = 1,
    rank_timeout_s: float = 180.0,
    append: bool = False,
) -> ProfileRun:
    """Build the scenario, check the output, estimate the size, profile, write.

    A ``run`` name whose directory already holds traces is refused (UsageError)
    unless ``append``; the sidecar then names this profile's files only, so the
    analysis reads them and not the earlier ones.

    ``ranks`` > 1 spawns that many local DDP ranks (workbench.profiling.ddp),
    each writing its own worker file into the run directory; a rank that
    fails, dies or is silent for ``rank_timeout_s`` raises RankFailed.

    Raises OutputPathError before any work when the run directory cannot be
    written, and TraceTooLargeError when the estimate exceeds ``max_trace_mb``
    (unless ``force``).

    ``capture_stderr=False`` is for Textual apps: Textual draws the screen on
    fd 2 (sys.__stderr__), so redirecting fd 2 would blank the UI, not protect
    it. There the environment variables of quiet_native_logs, set before
    torch is imported (workbench.tui does), keep the profiler quiet.
    """
    quiet_native_logs()
    from workbench.files import check_writable
    from workbench.scenario import resolve_device

    dev = resolve_device(device)
    if ranks < 1:
        raise UsageError(f"--ddp must be >= 2 ranks (or left out), got {ranks}.")
    if ranks > 1:
        check_ddp_ranks(dev, ranks)
    run_name = check_run_name(run or default_run_name(source.label))
    from workbench.profiling.runs import check_run_reuse

    check_run_reuse(Path(logdir) / run_name, append)  # before any work: a reused name is refused
    created = not (Path(logdir) / run_name).exists()
    run_dir = check_writable(Path(logdir) / run_name, directory=True)
    log_path = run_dir / STDERR_LOG
    try:
        return _profile_into(source, dev, Path(logdir), run_name, run_dir, options, max_trace_mb=max_trace_mb,
                             force=force, estimate=estimate, capture_stderr=capture_stderr,
                             on_progress=on_progress, on_estimate=on_estimate, ranks=ranks,
                             rank_timeout_s=rank_timeout_s)
    except BaseException:
        # Leave nothing behind but what is worth keeping: a non-empty log, a partial trace.
        # The profiler writes each trace to NAME.tmp and renames it: on a full disk the
        # rename never comes, and the .tmp is of no use to anyone.
        for tmp in run_dir.glob("*.pt.trace.json*.tmp"):
            tmp.unlink(missing_ok=True)
        drop_if_empty(log_path)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # fails, as it should, when anything is left inside
        raise


def _profile_into(
    source: ScenarioSource,
    dev: torch.device,
    logdir: Path,
    run_name: str,
    run_dir: Path,
    options: ProfileOptions,
    *,
    max_trace_mb: float,
    force: bool,
    estimate: bool,
    capture_stderr: bool,
    on_progress: ProgressCallback | None,
    on_estimate: Callable[[SizeEstimate], None] | None,
    ranks: int = 1,
    rank_timeout_s: float = 180.0,
) -> ProfileRun:
    log_path = run_dir / STDERR_LOG
    started = time.perf_counter()
    size: SizeEstimate | None = None
    capture = redirect_stderr_fd(log_path) if capture_stderr else contextlib.nullcontext(log_path)
    with capture:
        if estimate:
            size = estimate_trace_size(source.build(dev), options, workers=ranks)
    if size is not None:
        if on_estimate is not None:
            on_estimate(size)
        if size.total_bytes > max_trace_mb * 2**20 and not force:
            raise TraceTooLargeError(too_large_message(size, max_trace_mb))
    capture = redirect_stderr_fd(log_path) if capture_stderr else contextlib.nullcontext(log_path)
    from workbench.scenario import ScenarioError

    kept = set(run_dir.glob("*.pt.trace.json*"))
    # DDP ranks write it into their traces only; the analysis reads it from there.
    loss_sources: list[str] = []
    try:
        if ranks > 1:
            from workbench.profiling.ddp import RankProfileJob, profile_ddp

            job = RankProfileJob(source, dev.type, str(run_dir), options, timeout_s=rank_timeout_s)
            with capture:  # the spawned ranks inherit fd 2: their native log lines go to the log too
                files = profile_ddp(job, ranks, on_progress=on_progress)
        else:
            scenario = source.build(dev)
            with capture:
                files = profile_scenario(scenario, run_dir, options, on_progress=on_progress,
                                         on_loss_source=loss_sources.append)
    except KeyboardInterrupt as exc:
        # Leaving the profiler context flushed the steps recorded so far.
        raise ProfileInterrupted(run_dir, tuple(sorted(run_dir.glob("*.pt.trace.json*")))) from exc
    except ScenarioError as exc:
        # Leaving the profiler context flushed the steps before the failing one: say so.
        partial = sorted(set(run_dir.glob("*.pt.trace.json*")) - kept)
        if not partial:
            raise
        names = ", ".join(str(f) for f in partial)
        raise ScenarioError(f"{exc} The steps before it were traced and kept (the failing step's range "
                            f"ends at the error): {names} "
                            f"(workbench profile --analyze {run_dir}).", path=exc.path, line=exc.line) from exc
    write_metadata(run_dir, source, dev, options, ranks, files,
                   loss_source=loss_sources[0] if loss_sources else None)
    return ProfileRun(
        scenario=source.label,
        device=str(dev),
        logdir=logdir,
        run=run_name,
        run_dir=run_dir,
        files=files,
        estimate=size,
        stderr_log=None if drop_if_empty(log_path) else log_path,
        steps=options.steps,
        wall_s=time.perf_counter() - started,
        ranks=ranks,
    )


def check_run_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UsageError(f"--run {name!r}: expected a plain directory name.")
    return name


def write_metadata(run_dir: Path, source: ScenarioSource, dev: torch.device, options: ProfileOptions,
                   ranks: int, files: Sequence[Path], loss_source: str | None = None) -> None:
    """The sidecar `--analyze` reads back: what was profiled, where, how.

    ``loss_source`` is ``LossValue.source`` (``"loss_fn"``, ``"outputs.loss"`` ...);
    None (DDP ranks, where only the traces have it) writes ``null``."""
    import torch

    from workbench.files import atomic_write_json

    atomic_write_json(
        run_dir / METADATA_FILE,
        {
            "scenario": source.spec,
            "label": source.label,
            "device": str(dev),
            "options": asdict(options),
            "ranks": ranks,
            "torch": torch.__version__,
            "files": [f.name for f in files],
            "loss_source": loss_source,
            "loss_inside_model": None if loss_source is None else loss_source != "loss_fn",
        },
    )


def too_large_message(size: SizeEstimate, max_trace_mb: float) -> str:
    ranks = f" x {size.workers} ranks" if size.workers > 1 else ""
    return (
        f"the trace would be about {size.total_bytes / 2**20:.0f} MB "
        f"({size.bytes_per_step / 2**20:.1f} MB per step x {size.active_steps} active steps{ranks}, "
        f"measured on one probe step), over the {max_trace_mb:g} MB limit. Record fewer "
        "steps (--active), drop --stack/--shapes/--memory, add --gzip, or pass --force "
        "(or a larger --max-trace-mb) to write it anyway."
    )


def check_ddp_ranks(device: torch.device, gpus_needed: int) -> None:
    """Say before spawning anything why DDP ranks needing ``gpus_needed`` GPUs here cannot run."""
    import torch

    from workbench.distributed import ddp_unavailable

    found = torch.cuda.device_count() if device.type == "cuda" else 0
    reason = ddp_unavailable(device.type, gpus_needed, found)
    if reason is not None:
        hint = "; use --device cpu (gloo)" if device.type == "cuda" else ""
        raise UsageError(f"--ddp: {reason}{hint}.")


def drop_if_empty(path: Path) -> bool:
    """Remove an empty log; True when it was empty (or absent)."""
    try:
        if path.stat().st_size == 0:
            path.unlink()
            return True
        return False
    except FileNotFoundError:
        return True


def read_metadata(run_dir: str | Path) -> dict[str, Any]:
    """The sidecar written next to the traces ({} when absent or unreadable)."""
    import json

    try:
        data = json.loads((Path(run_dir) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
