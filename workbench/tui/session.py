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
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from workbench.engine.breakpoints import Breakpoint
from workbench.engine.records import BreakHit, Finding, ParamStats, Phase, StepRecord
from workbench.scenario import ScenarioSource
from workbench.session import engine_host as host
from workbench.session import protocol as P
from workbench.session.views import (  # noqa: F401 - the screens' names for them
    PHASE_LABEL,
    EngineView,
    Histogram,
    InspectorData,
    ModuleRow,
    RunSummary,
    ScenarioSummary,
    format_error,
    inspector_data,
    module_rows,
)

if TYPE_CHECKING:
    from workbench.engine.engine import EngineConfig
    from workbench.session.transport import ClientConnection, ReplayConnection

HISTORY = 256  # records kept, as the engine's own ring (EngineConfig.history)
MAX_FINDINGS = 2000
# How often the pump looks for messages when none came (and whether the child is alive).
POLL_S = 0.05
# A command with no news from the host this long: the screen is told where the host's main
# thread is (its stack, read every BUSY_STACK_S), each second while it stays quiet.
BUSY_NOTICE_S = 5.0
BUSY_STACK_S = 10.0
# Records (and findings) a run sent after its last Progress reach the screen once the host has
# been quiet this long (a step that hangs after steps that finished fast).
RECORDS_QUIET_S = 0.5
# An attached script publishes every step: its screen is redrawn at most this often (the latest
# state then; a fast loop would otherwise redraw, and ask for a sample, once per step).
ATTACHED_UPDATE_S = 0.2
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
    def busy(self, doing: str, seconds: float, where: str | None) -> None: ...
    def ended(self, text: str) -> None: ...


class SessionState:
    """What a client knows of a session, from the host's messages alone."""

    def __init__(self) -> None:
        self.hello: P.Hello | None = None
        self.progress: P.Progress | None = None
        self.modules: tuple[ModuleRow, ...] = ()  # the Hello's tree as the model table's rows
        # A host that does not echo its breakpoints in Progress (a watch): the ones sent last.
        self.sent_conditions: tuple[str, ...] | None = None
        self.last_hit: BreakHit | None = None  # the newest BreakHit message (a watch's breakpoints)
        self.history: deque[StepRecord] = deque(maxlen=HISTORY)
        self.findings: deque[Finding] = deque(maxlen=MAX_FINDINGS)
        self._parsed: tuple[tuple[str, ...], tuple[Breakpoint, ...]] = ((), ())

    def apply(self, message: P.Message) -> None:
        if isinstance(message, P.Hello):
            self.hello = message
            self.modules = module_rows(message.modules)
        elif isinstance(message, P.Step):
            self.history.append(message.record)
        elif isinstance(message, BreakHit):
            self.last_hit = message
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

    def conditions(self) -> tuple[str, ...]:
        """The breakpoint conditions in force, as the host last said (or as last sent to it)."""
        if self.progress is not None and self.progress.breakpoints is not None:
            return tuple(self.progress.breakpoints)
        if self.sent_conditions is not None:
            return self.sent_conditions
        return tuple(self.hello.breakpoints) if self.hello is not None else ()

    def breakpoints(self) -> tuple[Breakpoint, ...]:
        conditions = self.conditions()
        if conditions != self._parsed[0]:
            self._parsed = (conditions, tuple(Breakpoint.parse(c) for c in conditions))
        return self._parsed[1]

    def view(self, without_progress: bool = False) -> EngineView | None:
        """The screen's view; None before Hello and the first Progress (``without_progress``:
        before Hello only: a watch says where its loop is once a step ends)."""
        if self.hello is None or (self.progress is None and not without_progress):
            return None
        p = self.progress
        if p is None:
            p = P.Progress(step=self.history[-1].step + 1 if self.history else 0, next_phase=Phase.FORWARD,
                           paused=False, busy=False)
        elif self.history and self.history[-1].step >= p.step and self.hello.host == host.HOST_KIND:
            # An engine host's run sends each record as its step ends, but where it is only every
            # PROGRESS_INTERVAL_S: a newer record says the run has moved on to the next step (steps
            # 0 and 1 done and step 2 hanging read as step 0, its forward, no step finished).
            p = P.Progress(step=self.history[-1].step + 1, next_phase=Phase.FORWARD, paused=False, busy=True)
        current = p.current
        pending = p.pending_break
        hit = self.last_hit
        if pending is None and p.paused and hit is not None and hit.step == p.step:
            pending = hit  # a watch holding its step at a wait breakpoint says so with BreakHit + Progress
        return EngineView(
            summary=self.hello.summary or _summary_of(self.hello),
            step=p.step,
            next_phase=Phase(p.next_phase),
            current=current,
            last=self.history[-1] if self.history else None,
            history=tuple(self.history),
            findings=tuple(self.findings),
            pending_break=pending,
            breakpoints=self.breakpoints(),
            modules=self.modules,
            done_phases=tuple(current.phases_done) if current is not None else (),
        )


def _summary_of(hello: P.Hello) -> ScenarioSummary:
    """The title bar's line for a host that sent no summary (a watch names its script only)."""
    params = sum(n.own_params for n in hello.modules)
    root = next((n for n in hello.modules if n.name == ""), None)
    return ScenarioSummary(label=hello.title, name=hello.title, description=f"{hello.host} host, pid {hello.pid}",
                           model_class=root.type_name if root is not None else "", parameters=params,
                           device=hello.device, threads=0, optimizer="")


class Channel(Protocol):
    """The client's side of a session's wire: what a Session sends through and reads from
    (an engine host child's ``HostProcess``, or an ``AttachChannel``)."""

    def start(self) -> None: ...
    def send(self, command: P.Command) -> bool: ...
    def poll(self, timeout: float = 0.0) -> list[P.Message]: ...
    def alive(self) -> bool: ...
    def close(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def exitcode(self) -> int | None: ...


class AttachChannel:
    """A session another process hosts (``workbench.watch(..., serve=...)``), over the session
    transport: ``connect(target)`` for a RUN_DIR, HOST:PORT or unix:PATH. A finished run's
    directory opens read-only from its log."""

    def __init__(self, target: str, token: str | None = None,
                 connection: ClientConnection | ReplayConnection | None = None) -> None:
        self.target = target
        self.token = token
        self._conn = connection
        self.read_only = connection is not None and connection.read_only

    def start(self) -> None:
        """Connect (SessionError says why not), unless given an open connection."""
        if self._conn is None:
            from workbench.session.transport import connect

            self._conn = connect(self.target, self.token, client="workbench attach")
            self.read_only = bool(self._conn.read_only)

    def send(self, command: P.Command) -> bool:
        from workbench.session.transport import SessionError

        if self._conn is None or self.read_only:
            return False
        try:
            self._conn.send(command)
            return True
        except (SessionError, OSError):
            return False

    def poll(self, timeout: float = 0.0) -> list[P.Message]:
        from workbench.session.transport import SessionError

        if self._conn is None:
            return []
        try:
            out = self._conn.poll(timeout)
        except SessionError as exc:  # refused mid-session: end it with the reason
            return [P.Ended(reason="refused", message=str(exc))]
        if not out and timeout and self.read_only:
            time.sleep(timeout)  # a log has nothing more to say: do not spin
        return out

    def alive(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def close(self) -> bool:
        if self._conn is not None:
            self._conn.close()
        return False

    @property
    def pid(self) -> int | None:
        hello = self._conn.hello if self._conn is not None else None
        return hello.pid if hello is not None else None

    exitcode = None


class Session:
    """One session, driven by commands; state from its messages: a scenario in an engine host
    child (``Session(source, device)``), or a running script's watch (``Session.attach``)."""

    def __init__(self, source: ScenarioSource | None, device: str, config: EngineConfig | None = None,
                 channel: AttachChannel | None = None) -> None:
        self.source = source
        self.device = device
        # None: the TUI's default, made in the child (EngineConfig's module loads torch).
        self.config = config
        self.state = SessionState()
        # Set when a pause was asked of the run in progress (cleared when the next run starts).
        self.stop = threading.Event()
        self.host: Channel | None = None  # the engine child (host.HostProcess) or a watch's AttachChannel
        self._channel = channel  # attached: the session another process hosts
        self._listener: SessionListener | None = None
        self._ids = itertools.count(1)
        self._failed: P.Error | None = None  # an Error waiting for the state that follows it
        self._sampling: str | None = None  # the module whose sample is on its way
        # Attached: what the last sample asked for was read at (module and where the script was);
        # the screen asks again after every update, and an unchanged state needs no new one.
        self._sample_key: tuple[object, ...] | None = None
        self._send_lock = threading.Lock()  # the UI thread and the pump (a stale sample) both send
        self._dirty = False  # attached: messages changed the state since the screen's last view
        self._last_update = 0.0
        self._loaded = False
        self._closing = threading.Event()
        self._pump_thread: threading.Thread | None = None
        self._news_at = time.monotonic()  # the last message from the host (or command sent)
        self._busy_said = 0.0  # when the screen was last told the host is busy, and where
        self._busy_stack_at = 0.0
        self._busy_where: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.doing: str | None = None  # the command in flight, in words (for a death notice)
        self.ended: P.Ended | None = None  # the host said it ended (and why)
        self._ended_pending = False
        self._unshown = False  # records or findings came after the last Progress (engine host)

    @classmethod
    def attach(cls, target: str, token: str | None = None,
               connection: ClientConnection | ReplayConnection | None = None) -> Session:
        """A client of the session at ``target`` (RUN_DIR, HOST:PORT, unix:PATH)."""
        return cls(None, "", channel=AttachChannel(target, token, connection))

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Another process hosts this session (a watch): commands are sent, not waited on."""
        return self._channel is not None

    @property
    def read_only(self) -> bool:
        return self._channel is not None and self._channel.read_only

    @property
    def label(self) -> str:
        if self.source is not None:
            return self.source.label
        assert self._channel is not None
        return self._channel.target

    @property
    def needs_fork_server(self) -> bool:
        """True when starting costs a torch import (the fork server is not up yet)."""
        return self._channel is None and not host.HostProcess.fork_server_running()

    def refusal(self, command: type[P.Command] | None = None, what: str = "") -> str | None:
        """Why ``command`` (``what`` it does, in words) cannot go to this host (None: it can): a
        finished run, or a command the host's Hello does not list (a user's loop cannot step one
        phase or rewind)."""
        if self._channel is None:
            return None
        if self.read_only:
            ended = f" ({self.ended.reason})" if self.ended is not None else ""
            return f"this run has ended{ended}: {self.label} is open read-only from its log"
        hello = self.state.hello
        if command is not None and hello is not None and not hello.accepts(command):
            return f"a {hello.host} host cannot {what}: the script's own loop drives its steps"
        return None

    def open(self, listener: SessionListener, conditions: Sequence[str] = ()) -> None:
        """Start the host and the pump (blocks while the fork server starts: a worker calls it)."""
        self._listener = listener
        if self._channel is not None:
            self.host = self._channel
        else:
            assert self.source is not None
            self.host = host.HostProcess(self.source, self.device, self.config, on_output=self._output)
        self.host.start()
        if conditions and self._channel is None:
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
        if self._channel is not None:
            self.state.sent_conditions = conditions
        return self._send(lambda i: P.SetBreakpoints(conditions, id=i), None)

    def pause(self) -> None:
        """Ask the run in progress to stop after its phase (once per run)."""
        if self._channel is not None:  # a watch pauses its loop at the next step boundary
            self._send(lambda i: P.Pause(id=i), None)
            return
        if not self.stop.is_set():
            self.stop.set()
            if self.host is not None:
                self.host.send(P.Pause())

    def request_sample(self, module: str) -> bool:
        """Ask for a module's histograms; False while one is on its way already, or (attached)
        when the last one was read for this module where the script still is."""
        if self._sampling is not None or self.host is None:
            return False
        key = self._where(module) if self._channel is not None else None
        if key is not None and key == self._sample_key:
            return False  # a script held or paused: the answer would be the same again
        self._sampling = module
        with self._send_lock:
            sent = self.host.send(P.RequestSample(next(self._ids), module))
        if not sent:
            self._sampling = None
            return False
        self._sample_key = key
        return True

    def _where(self, module: str) -> tuple[object, ...]:
        """What an attached script's answer for ``module`` depends on: the step, and whether it
        holds before its optimizer step (its forward's outputs are then this step's)."""
        p = self.state.progress
        steps = self.state.history[-1].step if self.state.history else -1
        if p is None:
            return (module, steps)
        return (module, steps, p.step, p.next_phase, p.paused)

    def view(self) -> EngineView | None:
        return self.state.view()

    def _send(self, make: Callable[[int], P.Command], doing: str | None) -> int:
        request = next(self._ids)
        self._news_at, self._busy_stack_at, self._busy_where = time.monotonic(), 0.0, None
        if doing is not None:
            self.doing = doing
        with self._send_lock:
            sent = self.host is not None and self.host.send(make(request))
        if not sent:
            if self._channel is not None:
                raise RuntimeError(self.refusal() or f"{self.label}: the session is not reachable any more")
            raise RuntimeError("the scenario's process is not running (R restarts it)")
        if self._channel is not None and self._listener is not None:
            # A watch answers no command with a reply: the command is done once sent; what it
            # changes arrives as the loop's own messages.
            self.doing = None
            view = self.state.view(without_progress=True)
            if view is not None:
                self._listener.done(request, view, None, None, False)
        return request

    # -- the pump ---------------------------------------------------------------------------------
    def _pump(self) -> None:
        proc = self.host
        assert proc is not None
        while not self._closing.is_set():
            messages = proc.poll(POLL_S)
            for message in messages:
                self._apply(message)
            if messages:
                self._news_at = time.monotonic()
            elif self._channel is None and self.doing is not None:
                self._show_unshown()
                self._say_where_busy(proc)
            if self._channel is not None:
                self._attached_batch(messages)
            if messages or proc.alive():
                continue
            for message in proc.poll(0):  # sent just before it went
                self._apply(message)
            if not self._closing.is_set() and self.ended is None:  # it went without saying why
                self._lost(proc)
            return

    def _show_unshown(self) -> None:
        """Records a quiet host sent after its last Progress: the screen is shown them (a run's
        Progress is throttled; a step that hangs next would hide the steps that finished)."""
        listener = self._listener
        if not self._unshown or not self._loaded or listener is None:
            return
        if time.monotonic() - self._news_at < RECORDS_QUIET_S:
            return
        self._unshown = False
        view = self.state.view()
        if view is not None:
            listener.updated(view)

    def _say_where_busy(self, proc: Channel) -> None:
        """A command has had no news for BUSY_NOTICE_S (a forward that loops, a slow step): tell
        the screen how long, and where the host's main thread is (its stack, every BUSY_STACK_S)."""
        now = time.monotonic()
        quiet = now - self._news_at
        if quiet < BUSY_NOTICE_S or now - self._busy_said < 1.0:
            return
        if now - self._busy_stack_at >= BUSY_STACK_S:
            self._busy_stack_at = now
            stacks = getattr(proc, "stacks", None)  # an engine host child can say; nothing else is asked
            self._busy_where = stacks()[0] if stacks is not None else None
        self._busy_said = time.monotonic()
        doing, listener = self.doing, self._listener
        if doing is not None and listener is not None:
            listener.busy(doing, quiet, self._busy_where)

    def _apply(self, message: P.Message) -> None:
        listener = self._listener
        assert listener is not None
        self.state.apply(message)
        if isinstance(message, P.Ended):
            self.ended = message
            if self._channel is not None:
                self._ended_pending = True  # said after the batch's view (a log replays in one batch)
        elif self._channel is not None and isinstance(message, P.Sample):
            self._sample_arrived(message)
        elif self._channel is not None and isinstance(message, (P.Progress, P.Error)):
            if isinstance(message, P.Error) and not message.fatal:
                where = f" ({message.file}:{message.line})" if message.file else ""
                step = f" at step {message.step}" if message.step is not None else ""
                title = f"{message.kind}{step}: {message.message}{where}"
                view = self.state.view(without_progress=True)
                if view is not None:
                    listener.failed(None, title, message.traceback or title, view, message.step)
            return  # a batch is shown at once (_attached_update)
        elif isinstance(message, P.Error):
            if message.fatal:
                self._loaded = True  # nothing more will come
                listener.load_failed(message.message, message.traceback)
            else:
                self._failed = message
        elif isinstance(message, P.Sample):
            self._sampling = None
            listener.sample(inspector_data(message))
        elif isinstance(message, (P.Step, P.Findings)):
            self._unshown = True
        elif isinstance(message, P.Progress):
            self._unshown = False  # the view it makes holds them
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

    def _attached_batch(self, messages: Sequence[P.Message]) -> None:
        """After a poll of an attached host: one view for the screen, when the batch changed the
        state and the last view is ``ATTACHED_UPDATE_S`` old (or the first, or the end's).

        A batch holding only the answer to a sample changes nothing the screen shows: telling it
        ``updated`` would make it ask for the sample again, whose answer would start it over (a
        script held at a breakpoint kept a core busy and its session.jsonl growing that way).
        """
        if any(not isinstance(m, P.Sample) for m in messages):
            self._dirty = True
        now = time.monotonic()
        due = not self._loaded or self._ended_pending or now - self._last_update >= ATTACHED_UPDATE_S
        if self._dirty and due:
            self._dirty = False
            self._last_update = now
            self._attached_update()
        if self._ended_pending and self.ended is not None:
            self._ended_pending = False
            assert self._listener is not None
            self._listener.ended(self._ended_text(self.ended))

    def _attached_update(self) -> None:
        """One view of an attached host's state for the screen."""
        listener = self._listener
        assert listener is not None
        view = self.state.view(without_progress=True)
        if view is None:
            return
        if not self._loaded:
            self._loaded = True
            listener.loaded(view)
        else:
            listener.updated(view)

    def _sample_arrived(self, sample: P.Sample) -> None:
        """An attached script's answer: shown, and asked again when the script moved on while it
        was on its way (no update may come to ask: a script that holds sends nothing more)."""
        asked = self._sample_key
        self._sampling = None
        assert self._listener is not None
        self._listener.sample(inspector_data(sample))
        if asked is not None and asked != self._where(sample.module) and not self._closing.is_set():
            self.request_sample(sample.module)

    def status_line(self) -> str:
        """The status bar of an attached session: where the script is, and what the keys do here."""
        view = self.state.view(without_progress=True)
        if self.read_only:
            reason = f" ({self.ended.reason})" if self.ended is not None else ""
            return f"read-only: this run has ended{reason}; what it logged is shown"
        if self.ended is not None:
            return self._ended_text(self.ended)
        if view is None:
            return f"attached to {self.label}"
        hit = view.pending_break
        if hit is not None:
            return (f"step {hit.step} waits at {hit.breakpoint}: {hit.reason} · r continues · x skips its "
                    "optimizer step")
        p = self.state.progress
        if p is not None and p.paused:
            return f"{p.note or 'paused'} · r continues · N runs k steps"
        hello = self.state.hello
        who = f"{hello.host} pid {hello.pid}" if hello is not None else self.label
        return f"attached to {who} · step {view.step} · p pauses · B sets breakpoints"

    def title_state(self) -> str:
        """An attached session's state for the title: ended, paused or live (the keys are in the status)."""
        if self.read_only or self.ended is not None:
            return "ended" + (f" ({self.ended.reason})" if self.ended is not None and self.ended.reason else "")
        p = self.state.progress
        if p is not None and p.paused:
            return "paused"
        return "live"

    def _ended_text(self, ended: P.Ended) -> str:
        how = f" (exit code {ended.exit_code})" if ended.exit_code not in (None, 0) else ""
        what = f"the run ended: {ended.reason}{how}"
        if ended.message and ended.message != ended.reason:  # "interrupted · interrupted" says it twice
            what += f" · {ended.message}"
        if self.read_only:
            what = f"read-only, from its log · {what}"
        return what

    def _lost(self, proc: Channel) -> None:
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


def group_grad_norms(params: Sequence[ParamStats]) -> dict[str, float]:
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
