"""The bench and profile screens' child processes: where the user's code runs, never in the TUI's.

A scenario that calls ``os._exit``, crashes or loops forever ends or hangs only its child, and
the screen says what it did and where. :func:`bench_child` and :func:`profile_child` are the
children's entry points (module-level, so they pickle); :class:`ChildJob` is a child seen from
its screen: run from a thread worker, stopped from the UI thread with whatever it started.
No textual here: a child imports this module, and the fork server preloads it.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import exception_text, message_of
from workbench.isolation import ChildOutcome, describe_exit, report_progress, run_isolated

if TYPE_CHECKING:
    from workbench.bench.results import BenchRun
    from workbench.bench.runner import BenchProgress
    from workbench.bench.timing import Plan
    from workbench.engine.records import Finding
    from workbench.profiling.capture import ProfileRun
    from workbench.profiling.options import ProfileOptions
    from workbench.profiling.runs import RunAnalysis
    from workbench.scenario import ScenarioSource

PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress messages a second
OUTPUT_TAIL_LINES = 20  # of what a child wrote, in a failure's details
# What a bench or profile child imports (the fork server's, when a child of ours starts it).
CHILD_PRELOAD = ("workbench.bench.runner", "workbench.profiling.export", "workbench.profiling.runs",
                 "workbench.tui.jobs")


def failure_text(what: str, exc: BaseException) -> tuple[str, str]:
    """(title, details) for an ErrorPanel when a screen's job raised: "profiling mlp failed: the
    message", then the user's own frames (the workbench's are no help to them).

    A step error (the engine's, the profiled loop's, the bench's) is told by its headline and
    hint, not its CLI message (which points at ``--verbose``, a flag the TUI does not have).
    """
    errors = sys.modules.get("workbench.engine.errors")  # loaded with torch; a step error needs it
    step_error = getattr(errors, "TrainingStepError", None)
    if step_error is not None and isinstance(exc, step_error):
        original: BaseException = exc.original
        lines = [f"step {exc.step}, {exc.stage}"]
        where = [w for w in (exc.call, f"module {exc.module}" if exc.module else None) if w]
        if where:
            lines.append(f"in {', inside '.join(where)}")
        if exc.advice:
            lines.append(f"hint: {exc.advice}")
        kept = getattr(exc, "kept", "").strip()  # a profile keeps the traces of the steps before
        if kept:
            lines.append(kept)
        frames = exc.user_traceback
        message = exception_text(original)
    else:
        from workbench.errors import user_frames

        original = exc.__cause__ or exc
        lines = []
        mine = user_frames(original)
        frames = "".join(traceback.format_list(mine)) if mine else "".join(traceback.format_tb(original.__traceback__))
        message = message_of(original) or type(original).__name__
        if type(original).__name__ not in message:
            message = f"{type(original).__name__}: {message}"
    first, _, rest = message.partition("\n")
    title = f"{what} failed: {first}"
    details = "\n".join([*([rest.strip()] if rest.strip() else []), *lines])
    if frames:
        details += ("\n\n" if details else "") + "Traceback (your code):\n" + frames.rstrip()
    return title, details





@dataclass(frozen=True)
class ChildStarted:
    """A child's first progress value: its pid, which is also its process group's id."""

    pid: int


@dataclass(frozen=True)
class JobError:
    """What a child returns when the bench or profile raised: the error panel's title and text."""

    title: str
    details: str


def enter_child(stdout_path: str, stderr_path: str) -> None:
    """First thing in a bench or profile child: a process group of its own (so stopping it
    stops what it started: DataLoader workers, DDP ranks), stdin from /dev/null and
    stdout/stderr to files (the terminal is Textual's: a line there draws over the screen),
    then the pid to the parent. (An ``os._exit`` names its caller: isolation reports it.)"""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        target = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    report_progress(ChildStarted(os.getpid()))


def bench_child(stdout_path: str, stderr_path: str, source: ScenarioSource, names: list[str], device: str,
                plan: Plan) -> BenchRun | JobError:
    """The bench screen's child: run_bench, each finished row sent at once, ticks ~10 a second."""
    from workbench.bench.runner import run_bench

    enter_child(stdout_path, stderr_path)
    last = 0.0

    def progress(p: BenchProgress) -> None:
        nonlocal last
        now = time.monotonic()
        if p.result is not None or now - last >= PROGRESS_INTERVAL_S:
            last = now
            report_progress(p)

    try:
        return run_bench(source, names, device=device, plan=plan, progress=progress)
    except Exception as exc:  # the user's scenario or a bad name: the screen shows it
        return JobError(*failure_text(f"benchmarks of {source.label}", exc))


class ChildJob:
    """One bench or profile child as its screen sees it: run it (from a worker thread), stop it
    (from the UI thread, at once, never blocking), and what it wrote.

    ``run_isolated`` cannot be stopped from another thread, so the child reports its pid first
    (:func:`enter_child`) and :meth:`cancel` kills its process group; run_isolated then sees
    the death and returns. The group goes too when the child ends by itself, taking what it
    left running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pid: int | None = None
        self.cancelled = False
        self._finished = False
        self.paths: list[str] = []
        for name in ("stdout", "stderr"):
            handle, path = tempfile.mkstemp(prefix=f"workbench-child-{name}-", suffix=".txt")
            os.close(handle)
            self.paths.append(path)

    def run(self, fn: Callable[..., Any], *args: Any, on_progress: Callable[[Any], None]) -> ChildOutcome:
        """``fn(stdout_path, stderr_path, *args)`` in a child (``fn`` calls enter_child first)."""
        def progress(value: Any) -> None:
            if isinstance(value, ChildStarted):
                with self._lock:
                    self.pid = value.pid
                    if self.cancelled:  # stopped before it could be: now
                        self._kill()
            elif not self.cancelled:
                on_progress(value)

        from workbench.session.engine_host import ENGINE_HOST_PRELOAD

        try:
            # The preload counts only when this starts the fork server (the engine host usually has,
            # with its own list): building a scenario imports torch._dynamo (seconds) otherwise.
            return run_isolated(fn, *self.paths, *args, on_progress=progress,
                                preload=(*ENGINE_HOST_PRELOAD, *CHILD_PRELOAD))
        finally:
            with self._lock:
                self._kill()  # what the child started and left running (its group outlives it)
                self._finished = True

    def cancel(self) -> None:
        """Stop the child now (SIGKILL to its group); the worker's run() returns soon after."""
        with self._lock:
            self.cancelled = True
            if not self._finished:
                self._kill()

    def _kill(self) -> None:
        if self.pid is None:
            return
        try:
            if hasattr(os, "killpg"):
                os.killpg(self.pid, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGTERM)
        except OSError:  # gone already, group and all
            pass

    def hand_output(self, capture: Callable[[str, bool], None] | None) -> list[str]:
        """Each line the child wrote to ``capture(line, stderr)`` (the app's log), then the files
        are removed; what it wrote to stderr, for a failure's details."""
        texts: list[list[str]] = []
        for path in self.paths:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read().splitlines())
                os.unlink(path)
            except OSError:
                texts.append([])
        if capture is not None:
            for lines, stderr in zip(texts, (False, True), strict=True):
                for line in lines:
                    capture(line, stderr)
        return texts[1]

    def lost(self, what: str, doing: str | None, outcome: ChildOutcome, stderr: list[str]) -> tuple[str, str]:
        """The error panel's title and details for a child that gave no result."""
        first, _, rest = (outcome.failure or "gave no result").partition("\n")
        first = first.replace(" without reporting a result", "")
        where = outcome.stuck_at
        title = f"the {what}'s process {first}" + (f" at {where}" if where else "")
        how = "" if first.startswith("called os._exit") else f" ({describe_exit(outcome.exitcode)})"
        parts = [f"{title}{f', while {doing}' if doing else ''}.",
                 f"The TUI runs the {what} in a child process of its own{how}: only that process ended. "
                 f"Fix the scenario, then r runs the {what} again."]
        if rest:
            parts.append(rest)
        if outcome.stack:
            parts.append(f"Its main thread then (innermost frame first):\n{outcome.stack}")
        if stderr:
            parts.append("Last lines it wrote to stderr:\n" + "\n".join(stderr[-OUTPUT_TAIL_LINES:]))
        return title, "\n\n".join(parts)


@dataclass(frozen=True)
class ProfileStep:
    """Profiled steps so far, from the child (~10 a second, and the last)."""

    done: int
    total: int
    status: str


def profile_child(stdout_path: str, stderr_path: str, source: ScenarioSource, device: str, logdir: Path,
                  options: ProfileOptions, findings: tuple[Finding, ...]) -> tuple[ProfileRun, RunAnalysis] | JobError:
    """The profile screen's child: profile, then analyse the trace (its own CPU, not the TUI's)."""
    from workbench.profiling.capture import prepare_profiler
    from workbench.profiling.export import run_profile
    from workbench.profiling.runs import analyze_path

    enter_child(stdout_path, stderr_path)
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= PROGRESS_INTERVAL_S:
            last = now
            phase = "warming up" if done <= options.wait + options.warmup else "recording"
            report_progress(ProfileStep(done, total, f"step {done}/{total} ({phase})"))

    try:
        prepare_profiler()  # the child's main thread: Kineto's first start belongs there
        # fd 2 is this child's own (a file, see enter_child): the profiler's native lines go to the run's log.
        result = run_profile(source, device, logdir, options, capture_stderr=True, on_progress=progress)
        report_progress(ProfileStep(options.steps, options.steps, "analysing the trace"))
        analysis = analyze_path(result.run_dir, findings=findings)
    except Exception as exc:  # the user's code or a bad path: shown, never fatal
        return JobError(*failure_text(f"profiling {source.label}", exc))
    return result, analysis
