"""A watched loop's live side: what it publishes to attached clients, and their commands.

``Live`` owns the ``SessionServer`` of a ``workbench.watch`` host. The watch calls it
at step boundaries (never inside a forward): ``serve`` handles queued commands and
holds the loop while a client has paused it; ``wait_at_break`` holds a step at a
``wait`` breakpoint until a client continues or skips it. Publishing never blocks
the training thread (the server drops a client that falls behind).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from workbench.engine.records import BreakHit, Finding, Phase, StepProgress, StepRecord
from workbench.session import protocol

# The commands a watch host honours (said in Hello, so a client greys out the others).
HONOURED = ("pause", "continue", "skip_step", "set_breakpoints", "request_sample", "stop")


class Stopped(Exception):
    """A client sent Stop: the watch raises its Break with this hit."""

    def __init__(self, hit: BreakHit) -> None:
        super().__init__(hit.reason)
        self.hit = hit


class Live:
    """The session server of a watched loop, and the pause state clients control."""

    def __init__(self, server: Any, *, set_breakpoints: Callable[[Sequence[str]], None],
                 sample: Callable[[protocol.RequestSample], protocol.Sample]) -> None:
        self.server = server
        self._set_breakpoints = set_breakpoints
        self._sample = sample
        self.paused = False
        self._pause_at: int | None = None  # Continue(steps=N): pause again when this step starts

    @classmethod
    def open(cls, serve: bool | str, run_dir: str | os.PathLike[str] | None, hello: protocol.Hello,
             **callbacks: Any) -> Live:
        """Start serving at ``serve`` (True: a free loopback port) with the session files in
        ``run_dir`` (default ``runs/watch/<script>-<time>-<pid>``), and say Hello."""
        from workbench.session.transport import SessionServer

        if run_dir is None:
            stem = Path(hello.title).stem or "watch"
            run_dir = Path("runs") / "watch" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        bind = "127.0.0.1:0" if serve is True else str(serve)
        live = cls(SessionServer(Path(run_dir), bind=bind, host="watch", title=hello.title), **callbacks)
        live.publish(hello)
        return live

    @property
    def address(self) -> str:
        return str(getattr(self.server, "address", ""))

    # -- host -> clients --------------------------------------------------------------------
    def publish(self, msg: Any) -> None:
        self.server.publish(msg)

    def step(self, record: StepRecord, values: dict[str, float]) -> None:
        self.publish(protocol.Step(record))
        if values:
            self.publish(protocol.Log(step=record.step, values=dict(values)))

    def findings(self, findings: Sequence[Finding]) -> None:
        self.publish(protocol.Findings(tuple(findings)))

    def error(self, exc: BaseException, text: str, step: int) -> None:
        """The loop raised: say what and where (the innermost frame of the user's code)."""
        from workbench.errors import message_of, user_frames

        frames = user_frames(exc, installed=True) or user_frames(exc)
        where = frames[-1] if frames else None
        with contextlib.suppress(Exception):
            self.publish(protocol.Error(kind=type(exc).__name__, message=message_of(exc),
                                        file=where.filename if where else None,
                                        line=where.lineno if where else None, traceback=text, step=step))

    def close(self, reason: str, message: str = "") -> None:
        with contextlib.suppress(Exception):
            self.server.close(protocol.Ended(reason=reason, message=message))

    # -- clients -> host --------------------------------------------------------------------
    def serve(self, step: int) -> None:
        """Between steps: what clients asked for; while paused, wait here for continue."""
        for command in self.server.commands():
            self._handle(command, step)
        if self._pause_at is not None and step >= self._pause_at:
            self.paused, self._pause_at = True, None
        if not self.paused:
            # Where the loop is, for a client's status line (a late one gets the latest only).
            self._progress(step, Phase.FORWARD, paused=False)
            return
        self._progress(step, Phase.FORWARD, paused=True, note="paused by a client")
        while self.paused:
            command = self.server.wait_command(0.5)  # short waits: Ctrl-C in the user's terminal is seen
            if command is not None:
                self._handle(command, step)
            elif not self._anyone_attached():
                self.paused = False  # nobody is left to say continue: the loop goes on by itself
        self._progress(step, Phase.FORWARD, paused=False)

    def _anyone_attached(self) -> bool:
        return bool(self.server.clients)

    def wait_at_break(self, hit: BreakHit, skip: Callable[[], None], current: StepProgress | None = None,
                      note: str = "") -> None:
        """Hold the step at a ``wait`` breakpoint until a client continues, or skips it
        (``skip`` makes the coming optimizer step change nothing). ``current``: the held step as
        far as it got (its module stats, loss and findings), for the clients' screens.

        A hold outlasts its clients: it waits for one to say continue or skip, so a client that
        leaves (the TUI quit) leaves the step held for the next one (unlike a client's pause,
        which nobody would be left to end). While nobody is attached, stderr says so, once per
        time the last one leaves.
        """
        note = note or f"waiting at {hit.breakpoint}: a client continues or skips the step"
        self._progress(hit.step, Phase.OPTIMIZER_STEP, paused=True, note=note, current=current)
        attached = self._anyone_attached()
        if not attached:
            self._say_held(hit, "")
        while True:
            command = self.server.wait_command(0.5)  # short waits: Ctrl-C in the user's terminal is seen
            if command is None:
                now = self._anyone_attached()
                if attached and not now:
                    self._say_held(hit, "its client left; ")
                attached = now
                continue
            attached = True
            if isinstance(command, protocol.Continue):
                break
            if isinstance(command, protocol.SkipStep):
                skip()
                break
            if isinstance(command, protocol.Stop):
                raise Stopped(BreakHit(hit.step, hit.phase, "stop", None, "a client stopped the run"))
            self._handle(command, hit.step)
        self._progress(hit.step, Phase.OPTIMIZER_STEP, paused=False, current=current)

    def _say_held(self, hit: BreakHit, why: str) -> None:
        """One line for the user's terminal: a held script looks hung without it."""
        target = getattr(self.server, "run_dir", None) or self.address
        # A finding's reason goes on with its whole message: its kind and where say enough here.
        what = hit.reason.split(": ", 1)[0] if hit.finding is not None else hit.reason
        with contextlib.suppress(Exception):  # a closed stderr must not end the training
            print(f"workbench: step {hit.step} is held at breakpoint {hit.breakpoint} ({what}); {why}"
                  f"attach to continue or skip it: workbench attach {target}", file=sys.stderr, flush=True)

    def _progress(self, step: int, phase: Phase, *, paused: bool, note: str = "",
                  current: StepProgress | None = None) -> None:
        self.publish(protocol.Progress(step=step, next_phase=phase, paused=paused, busy=not paused, note=note,
                                       current=current))

    def _handle(self, command: Any, step: int) -> None:
        if isinstance(command, protocol.Pause):
            self.paused = True
        elif isinstance(command, (protocol.Continue, protocol.SkipStep)):
            self.paused = False
            steps = getattr(command, "steps", None)
            self._pause_at = None if steps is None else step + max(int(steps), 1)
        elif isinstance(command, protocol.SetBreakpoints):
            try:
                self._set_breakpoints(command.conditions)
            except ValueError as exc:
                self.publish(protocol.Error(kind="ValueError", message=str(exc), file=None, line=None,
                                            traceback="", step=step))
        elif isinstance(command, protocol.RequestSample):
            self.publish(self._sample(command))
        elif isinstance(command, protocol.Stop):
            self.paused = False
            raise Stopped(BreakHit(step, Phase.FORWARD, "stop", None, "a client stopped the run"))


def sample_message(request: protocol.RequestSample, values: torch.Tensor, step: int,
                   bins: int = 32) -> protocol.Sample:
    """A Sample answer: histogram and summary of ``values`` (a CPU float tensor)."""
    finite = values[torch.isfinite(values)]
    nan = int(torch.isnan(values).sum())
    inf = int(torch.isinf(values).sum())
    if finite.numel():
        lo, hi = float(finite.min()), float(finite.max())
        counts = torch.histc(finite, bins=bins, min=lo, max=hi if hi > lo else lo + 1.0)
        edges = torch.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        stats: tuple[float | None, ...] = (float(finite.mean()), float(finite.std()) if finite.numel() > 1 else 0.0,
                                           lo, hi)
    else:
        counts, edges, stats = torch.zeros(0), torch.zeros(0), (None, None, None, None)
    bad = (~torch.isfinite(values)).nonzero().flatten()[:16].tolist()
    return protocol.Sample(id=request.id, module=request.module, kind=request.kind, step=step,
                           shape=tuple(values.shape), dtype=str(values.dtype).replace("torch.", ""),
                           counts=tuple(int(c) for c in counts.tolist()), edges=tuple(edges.tolist()),
                           nan_count=nan, inf_count=inf, nan_positions=tuple((i,) for i in bad),
                           mean=stats[0], std=stats[1], min=stats[2], max=stats[3])
