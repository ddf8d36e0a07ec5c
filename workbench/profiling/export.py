"""``workbench profile``'s orchestration: check the output, gate on the estimated size,
then profile in this process or in spawned DDP ranks, and write the sidecar.

The pieces live beside it: ``loop`` (the phase-ranged training loop),
``capture`` (options, size estimate and gate, one process's capture),
``sidecar`` (the run directory's own files), ``ddp`` (the ranks), ``errors`` (a failing
step: ProfileStepError).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import UsageError
from workbench.profiling.capture import (
    ProfileRun,
    ProgressCallback,
    SizeEstimate,
    TraceTooLargeError,
    estimate_trace_size,
    profile_scenario,
    redirect_stderr_fd,
    size_refusal,
)
from workbench.profiling.native_logs import quiet_native_logs
from workbench.profiling.options import ProfileOptions
from workbench.profiling.sidecar import (
    STDERR_LOG,
    check_logdir,
    check_run_name,
    default_run_name,
    drop_if_empty,
    write_metadata,
)

if TYPE_CHECKING:
    import torch

    from workbench.scenario import ScenarioSource

# Warn (and stop unless forced) when the estimated trace is bigger than this:
# TensorBoard's plugin and chrome://tracing get slow to unusable past a few hundred MB.
DEFAULT_MAX_TRACE_MB = 200


class ProfileInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during profiling; the profiler still wrote what it had."""

    def __init__(self, run_dir: Path, files: tuple[Path, ...]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.files = files


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
    # Imported here, after quiet_native_logs: these load torch, which reads the log levels once.
    from workbench.files import check_writable
    from workbench.profiling.ddp import check_ddp_ranks
    from workbench.profiling.runs import check_run_reuse
    from workbench.scenario import resolve_device

    dev = resolve_device(device)
    if ranks < 1:
        raise UsageError(f"--ddp must be >= 2 ranks (or left out), got {ranks}.")
    if ranks > 1:
        check_ddp_ranks(dev, ranks)
    logdir = check_logdir(logdir)
    run_name = check_run_name(run or default_run_name(source.label))
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
        refusal = size_refusal(size, max_trace_mb, force)
        if refusal is not None:
            raise TraceTooLargeError(refusal)
    capture = redirect_stderr_fd(log_path) if capture_stderr else contextlib.nullcontext(log_path)
    from workbench.profiling.errors import ProfileStepError, kept_traces
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
    except (ProfileStepError, ScenarioError) as exc:
        # Leaving the profiler context flushed the steps before the failing one: say so.
        partial = sorted(set(run_dir.glob("*.pt.trace.json*")) - kept)
        if not partial:
            raise
        if isinstance(exc, ProfileStepError):
            exc.keep_traces(partial, run_dir)
            raise
        raise ScenarioError(f"{exc} {kept_traces(partial, run_dir)}", path=exc.path, line=exc.line) from exc
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
