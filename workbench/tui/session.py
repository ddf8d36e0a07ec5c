"""The TUI's handle on one session: a client of an engine host, fed by its messages.

The engine runs in a child process (``workbench.session.engine_host``); this
side only sends commands and keeps what the host publishes in a
``SessionState``: the module tree, step records, findings, the step in
progress, breakpoints. Screens read immutable ``EngineView`` s built from it.
A pump thread (no Textual worker: it lives as long as the session) reads the
host's messages and tells a ``SessionListener``, whose methods post small
messages to the UI; nothing here blocks on the user's code, and nothing here
imports Textual, so the whole path is testable without an app.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from workbench.engine.breakpoints import Breakpoint
from workbench.engine.records import Finding, Phase, StepRecord
from workbench.scenario import ScenarioSource
from workbench.session import engine_host as host
from workbench.session import protocol as P
from workbench.session.views import (  # noqa: F401 - the screens' names for them
    PHASE_LABEL,
    PHASES,
    EngineView,
    Histogram,
    InspectorData,
    ModuleNode,
    RunSummary,
    ScenarioSummary,
    format_error,
    inspector_data,
    module_rows,
)

if TYPE_CHECKING:
    from workbench.engine.engine import EngineConfig

HISTORY = 256  # records kept, as the engine's own ring (EngineConfig.history)
MAX_FINDINGS = 2000
# How often the pump looks for messages when none came (and whether the child is alive).
POLL_S = 0.05
TAIL_LINES = 20  # lines of the child's stderr kept to explain its death


class SessionListener(Protocol):
    """What the pump thread reports (called on that thread: post, never touch widgets)."""

    def loaded(self, view: EngineView) -> None: ...
    def load_failed(self, title: str, details: str) -> None: ...
    def updated(self, view: EngineView) -> None: ...
    def done(self, request: int, view: EngineView, summary: RunSummary | None, note: str | None,
             warning: bool) -> None: ...
    def failed(self, request: int | None, title: str, details: str, view: EngineView,
               failed_step: int | None) -> None: ...
    def sample(self, data: InspectorData) -> None: ...
    def output(self, line: str, stderr: bool) -> None: ...
    def lost(self, title: str, details: str) -> None: ...


class SessionState:
    """What a client knows of a session, from the host's messages alone."""

    def __init__(self) -> None:
        self.hello: P.Hello | None = None
        self.progress: P.Progress | None = None
        self.modules: tuple[ModuleNode, ...] = ()  # the Hello's tree as the model table's rows
        self.history: deque[StepRecord] = deque(maxlen=HISTORY)
        self.findings: deque[Finding] = deque(maxlen=MAX_FINDINGS)
        self._parsed: tuple[tuple[str, ...], tuple[Breakpoint, ...]] = ((), ())

    def apply(self, message: Any) -> None:
        if isinstance(message, P.Hello):
            self.hello = message
            self.modules = module_rows(message.modules)
        elif isinstance(message, P.Step):
            self.history.append(message.record)
        elif isinstance(message, P.Findings):
            if message.replace:
                self.findings.clear()
            self.findings.extend(message.findings)
        elif isinstance(message, P.Progress):
            if message.history_from is not None:
                kept = [r for r in self.history if r.step < message.history_from]
                self.history.clear()
                self.history.extend(kept)
            self.progress = message

    def breakpoints(self) -> tuple[Breakpoint, ...]:
        conditions = tuple(self.progress.breakpoints or ()) if self.progress is not None else ()
        if conditions != self._parsed[0]:
            self._parsed = (conditions, tuple(Breakpoint.parse(c) for c in conditions))
        return self._parsed[1]

    def view(self) -> EngineView | None:
        if self.hello is None or self.progress is None:
            return None
        p = self.progress
        current = p.current
        return EngineView(
            summary=self.hello.summary,
            step=p.step,
            next_phase=Phase(p.next_phase),
            current=current,
            last=self.history[-1] if self.history else None,
            history=tuple(self.history),
            findings=tuple(self.findings),
            pending_break=p.pending_break,
            breakpoints=self.breakpoints(),
            modules=self.modules,
            done_phases=tuple(current.phases_done) if current is not None else (),
        )


class Session:
    """One scenario in an engine host child, driven by commands; state from its messages."""

    def __init__(self, source: ScenarioSource, device: str, config: EngineConfig | None = None) -> None:
        self.source = source
        self.device = device
        # None: the TUI's default, made in the child (EngineConfig's module loads torch).
        self.config = config
        self.state = SessionState()
        # Set when a pause was asked of the run in progress (cleared when the next run starts).
        self.stop = threading.Event()
        self.host: host.HostProcess | None = None
        self._listener: SessionListener | None = None
        self._ids = itertools.count(1)
        self._failed: P.Error | None = None  # an Error waiting for the state that follows it
        self._sampling: str | None = None  # the module whose sample is on its way
        self._loaded = False
        self._closing = threading.Event()
        self._pump_thread: threading.Thread | None = None
        self.stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.doing: str | None = None  # the command in flight, in words (for a death notice)
        self.ended: P.Ended | None = None  # the host said it ended (and why)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def needs_fork_server(self) -> bool:
        """True when starting costs a torch import (the fork server is not up yet)."""
        return not host.HostProcess.fork_server_running()

    def open(self, listener: SessionListener, conditions: Sequence[str] = ()) -> None:
        """Start the host and the pump (blocks while the fork server starts: a worker calls it)."""
        self._listener = listener
        self.host = host.HostProcess(self.source, self.device, self.config, on_output=self._output)
        self.host.start()
        if conditions:
            self.set_breakpoints(conditions)
        self._pump_thread = threading.Thread(target=self._pump, name="workbench-session-pump", daemon=True)
        self._pump_thread.start()

    def close(self) -> bool:
        """End the host (bounded: well under a second); True when it had to be killed."""
        self._closing.set()
        return self.host.close() if self.host is not None else False

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    # -- commands (each returns its request id) -----------------------------------------------
    def advance(self) -> int:
        return self._send(lambda i: P.StepPhase(id=i), "the next phase")

    def step(self) -> int:
        return self._send(lambda i: P.StepPhase(id=i, whole_step=True), "a step")

    def run(self, steps: int | None = None) -> int:
        self.stop.clear()
        return self._send(lambda i: P.Continue(id=i, steps=steps), "a run")

    def skip(self) -> int:
        return self._send(lambda i: P.SkipStep(id=i), "skip step")

    def rewind(self, steps: int = 1) -> int:
        return self._send(lambda i: P.Rewind(steps, id=i), "rewind")

    def set_breakpoints(self, conditions: Iterable[str]) -> int:
        """Replace the host's breakpoints (ValueError, before sending, for a bad condition)."""
        conditions = tuple(conditions)
        for c in conditions:
            Breakpoint.parse(c)
        return self._send(lambda i: P.SetBreakpoints(conditions, id=i), None)

    def pause(self) -> None:
        """Ask the run in progress to stop after its phase (once per run)."""
        if not self.stop.is_set():
            self.stop.set()
            if self.host is not None:
                self.host.send(P.Pause())

    def request_sample(self, module: str) -> bool:
        """Ask for a module's histograms; False while one is on its way already."""
        if self._sampling is not None or self.host is None:
            return False
        self._sampling = module
        if not self.host.send(P.RequestSample(next(self._ids), module)):
            self._sampling = None
            return False
        return True

    def view(self) -> EngineView | None:
        return self.state.view()

    def _send(self, make: Any, doing: str | None) -> int:
        request = next(self._ids)
        if doing is not None:
            self.doing = doing
        if self.host is None or not self.host.send(make(request)):
            raise RuntimeError("the scenario's process is not running (R restarts it)")
        return request

    # -- the pump ---------------------------------------------------------------------------------
    def _pump(self) -> None:
        proc = self.host
        assert proc is not None
        while not self._closing.is_set():
            messages = proc.poll(POLL_S)
            for message in messages:
                self._apply(message)
            if messages or proc.alive():
                continue
            for message in proc.poll(0):  # sent just before it went
                self._apply(message)
            if not self._closing.is_set() and self.ended is None:  # it went without saying why
                self._lost(proc)
            return

    def _apply(self, message: Any) -> None:
        listener = self._listener
        assert listener is not None
        self.state.apply(message)
        if isinstance(message, P.Ended):
            self.ended = message
        elif isinstance(message, P.Error):
            if message.fatal:
                self._loaded = True  # nothing more will come
                listener.load_failed(message.message, message.traceback)
            else:
                self._failed = message
        elif isinstance(message, P.Sample):
            self._sampling = None
            listener.sample(inspector_data(message))
        elif isinstance(message, P.Progress):
            view = self.state.view()
            if view is None:
                return
            if not self._loaded:
                self._loaded = True
                listener.loaded(view)
                return
            failed, self._failed = self._failed, None
            if failed is not None:
                listener.failed(failed.reply_to, failed.message, failed.traceback, view, failed.step)
            if message.reply_to is not None:
                self.doing = None
                listener.done(message.reply_to, view, message.summary, message.note or None, message.warning)
            else:
                listener.updated(view)

    def _lost(self, proc: host.HostProcess) -> None:
        from workbench.isolation import describe_exit

        listener = self._listener
        assert listener is not None
        code = proc.exitcode
        what = describe_exit(code).replace(" without reporting a result", "")
        if self.doing:
            what += f" while running {self.doing}"
        view = self.state.view()
        if view is not None:
            what += f" (step {view.step}, next {PHASE_LABEL[view.next_phase]})"
        tail = "\n".join(self.stderr_tail)
        details = (f"The scenario's process {what}. Its code ended the process (os._exit, a crash, or a "
                   "signal), so the engine's state is gone; R rebuilds the scenario, s picks another.")
        if tail:
            details += f"\n\nLast lines it wrote to stderr:\n{tail}"
        self._loaded = True
        listener.lost(f"the scenario's process {what}", details)

    def _output(self, line: str, stderr: bool) -> None:
        if stderr:
            self.stderr_tail.append(line)
        if self._listener is not None:
            self._listener.output(line, stderr)


def group_grad_norms(params: Sequence[Any]) -> dict[str, float | None]:
    """Grad norm per owning module from the engine's per-parameter norms.

    The norm of a module's gradient is the root of the sum of its parameters'
    squared norms; parents get their children's parameters too.
    """
    sums: dict[str, float] = {}
    seen: set[str] = set()
    for p in params:
        if p.grad_norm is None:
            continue
        module = p.module or ""
        parts = module.split(".") if module else []
        prefixes = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]
        for prefix in prefixes:
            sums[prefix] = sums.get(prefix, 0.0) + float(p.grad_norm) ** 2
            seen.add(prefix)
    return {name: math.sqrt(v) if math.isfinite(v) else v for name, v in sums.items()}
