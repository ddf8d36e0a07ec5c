"""The stepping workbench: model table, phase bar, findings, charts, memory, inspector.

The scenario runs in a child process (workbench.session.engine_host); this
screen sends it commands through its Session and never waits on it. The
session's pump thread posts messages from workbench.tui.messages and the
handlers update widgets on the UI thread.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Static

from workbench.engine.records import FINDING_KINDS, Finding, ModuleStats
from workbench.scenario import ScenarioError, ScenarioSource, load_source
from workbench.session import protocol as P
from workbench.tui import messages as msg
from workbench.tui.session import PHASE_LABEL, EngineView, InspectorData, RunSummary, Session, format_error
from workbench.tui.widgets.common import ErrorPanel
from workbench.tui.widgets.findings import FindingsPanel, finding_detail
from workbench.tui.widgets.footer import KeyFooter
from workbench.tui.widgets.inspector import Inspector, inspector_title, render_inspector
from workbench.tui.widgets.model_table import ModelTable
from workbench.tui.widgets.panels import ChartsPanel, MemoryPanel, PhaseBar, TitleBar, ViewPanel

if TYPE_CHECKING:
    from workbench.session.transport import ClientConnection, ReplayConnection


class Workbench(Protocol):
    """What this screen asks of the app it runs in (the workbench app, which imports this
    module: named by what it does, so the screen does not import the app back)."""

    logbook: deque[str]

    def begin(self) -> None: ...

    def capture_output(self, line: str, stderr: bool) -> None: ...

    def action_pick_scenario(self) -> None: ...

NARROW_WIDTH = 100
SHORT_HEIGHT = 30


class Busy(str, enum.Enum):
    """What the screen waits for (``MainScreen.busy``; None: nothing): its scenario loading,
    or one command to the session's host."""

    LOADING = "loading"
    ADVANCE = "advance"  # one phase (f)
    STEP = "step"  # the rest of the step (n)
    SKIP = "skip"  # drop the pending optimizer step (x)
    REWIND = "rewind"  # (u)
    RUN = "run"  # to a breakpoint (r)
    STEPS = "steps"  # k steps (N)
    BREAKPOINTS = "breakpoints"  # a breakpoint update (B)

    def __str__(self) -> str:  # "run", not "Busy.RUN", in messages
        return self.value

    @property
    def running(self) -> bool:
        """A run of many steps, which only a pause (p) ends early."""
        return self in (Busy.RUN, Busy.STEPS)


# Stepping keys pressed while a phase runs wait here (in order) instead of being dropped.
QUEUE_LIMIT = 8
QUEUE_KEY = {Busy.ADVANCE: "f", Busy.STEP: "n", Busy.SKIP: "x", Busy.REWIND: "u", Busy.RUN: "r"}
# The command a stepping key sends, and what it does in words, for a host that lists the commands
# it honours (a watch steps no phase).
HOST_COMMAND: dict[Busy, tuple[type[P.Command], str]] = {
    Busy.ADVANCE: (P.StepPhase, "step one phase"),
    Busy.STEP: (P.StepPhase, "finish a step phase by phase"),
    Busy.SKIP: (P.SkipStep, "skip"),
    Busy.REWIND: (P.Rewind, "rewind"),
    Busy.RUN: (P.Continue, "run"),
    Busy.STEPS: (P.Continue, "steps"),
}


@dataclass(frozen=True)
class Action:
    key: str
    action: str
    title: str
    help: str
    footer: bool = True


# One table feeds the key bindings, the footer, the help screen and the
# command palette, so they cannot disagree.
ACTIONS = (
    Action("f", "next_phase", "phase", "run the next phase (forward, loss, backward, optimizer step)"),
    Action("n", "full_step", "step", "finish the current step"),
    Action("N", "step_k", "step ×k", "run k steps (asks for k); stops early at a breakpoint"),
    Action("r", "run", "run→break", "run until a breakpoint fires (p pauses)"),
    Action("p", "pause", "pause", "pause a run after the phase in progress"),
    Action("x", "skip", "skip step", "drop the pending optimizer step (grads zeroed, step counted as skipped)"),
    Action("u", "rewind", "rewind", "back to the start of this step, or the previous one (8 kept): model, "
           "optimizer and RNG restored; the steps replay on the same batches with full stats"),
    Action("B", "breakpoints", "breakpoints", "add or remove breakpoints"),
    Action("R", "reset", "reset", "rebuild the scenario from its file (keeps breakpoints)"),
    Action("s", "switch", "scenario", "pick another scenario"),
    Action("b", "bench", "bench", "benchmarks screen for this scenario"),
    Action("P", "profile", "profile", "profile screen for this scenario"),
    Action("i", "inspect", "inspect", "the tensor inspector as a full window"),
    Action("l", "log", "log", "captured output of the scenario (print, stdout, stderr), warnings and logs"),
    Action("question_mark", "help", "help", "this list of keys"),
    Action("q", "quit", "quit", "quit the workbench"),
)


# When the key line is too narrow, these keys lose their words first (the key stays).
FOOTER_STRIP_ORDER = ("l", "i", "P", "b", "s", "R", "B", "u", "x", "N", "p", "r", "n", "f")


class MainScreen(Screen[None]):
    BINDINGS = [
        # The KeyFooter draws them (fitted to the width), not Textual's Footer.
        *(Binding(a.key, a.action, a.title, show=False) for a in ACTIONS),
        Binding("escape", "hide_error", "hide error", show=False),
    ]

    def __init__(self, device: str = "auto", show_volatile: bool = True) -> None:
        super().__init__()
        self.device = device
        self.show_volatile = show_volatile
        self.session: Session | None = None
        self.view: EngineView | None = None
        self.busy: Busy | None = None
        self.conditions: tuple[str, ...] = ()
        self.loading_label = ""
        self.status = "no scenario"
        self._stuck = ""  # HostBusy: what the host has been busy with, with no news, and where
        self._run_started: tuple[float, int] | None = None
        self._inspect_timer: Timer | None = None
        self.failed_step: int | None = None  # the step whose phase raised, while its error shows
        self.starting = False  # the first frame is drawn, the app has not opened its scenario yet
        self.queue: deque[Busy] = deque()  # stepping commands waiting for the one in progress
        self.doing = ""  # what is running, in the user's words ("forward", "step 3", "loading torch")
        self.request: int | None = None  # the session's id of the command the screen waits for
        self.stopped_running_code = False  # a quit had to kill the scenario's process mid-phase
        # What R does after a load failed (the session is gone then): load the same scenario again.
        self._retry_load: Callable[[], None] | None = None

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """A toast; never read as markup: this screen's carry the user's text (an exception's message,
        a finding, a note), where "[/data/x]" is a path, not a closing tag."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    @property
    def workbench(self) -> Workbench:
        """The app, typed: this screen is the workbench app's default screen."""
        return cast(Workbench, self.app)

    # -- layout ------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        vol = self.show_volatile
        yield TitleBar(id="title")
        with Horizontal(id="body"):
            yield ModelTable(id="model")
            with Vertical(id="side"):
                yield FindingsPanel(id="findings")
                yield Static("", id="finding-detail")  # the highlighted finding, whole
                yield ChartsPanel(id="charts", show_volatile=vol)
                yield MemoryPanel(id="memory", show_volatile=vol)
        yield Inspector(id="inspector")
        yield ErrorPanel(hint="R reset · s switch scenario · esc hide", id="error")
        yield PhaseBar(id="phase", show_volatile=vol)
        yield KeyFooter([(_key_label(a.key), a.title) for a in ACTIONS if a.footer], FOOTER_STRIP_ORDER,
                        id="keys")

    def on_mount(self) -> None:
        titles = {"#model": "Model", "#findings": "Findings", "#charts": "Loss · ∇‖ · layer ∇ heat",
                  "#memory": "Memory", "#inspector": "Inspector", "#phase": "Phase"}
        for selector, title in titles.items():
            self.query_one(selector).border_title = title
        self.query_one(Inspector).show(None)
        self._set_narrow(self.size.width, self.size.height)
        # Keys pressed before the app opens its scenario wait for the load too.
        self.starting = True
        self._refresh_all()

        def started() -> None:
            self.starting = False
            self.workbench.begin()
            self._refresh_all()

        self.call_after_refresh(started)  # the first frame is drawn before anything loads

    def on_resize(self, event: events.Resize) -> None:
        self._set_narrow(self.size.width, self.size.height)

    def _set_narrow(self, width: int, height: int) -> None:
        # At 80 columns the side panels fold under the table and the
        # inspector becomes a modal (i); under 30 rows borders are trimmed.
        self.set_class(width < NARROW_WIDTH, "narrow")
        self.set_class(0 < height < SHORT_HEIGHT, "short")

    # -- loading -----------------------------------------------------------------
    def load_spec(self, spec: str) -> None:
        try:
            source = load_source(spec)
        except ScenarioError as exc:
            self._show_error(*format_error(exc))
            self._retry_load = lambda: self.load_spec(spec)  # R: the file may exist by now
            return
        self.load(source)

    def load(self, source: ScenarioSource) -> None:
        old = self.session
        if old is not None:  # R or s: keys meant for the old one (or its load) step nothing here
            self._drop_queue(f"{source.label} is loading afresh")
        self._retry_load = None
        self.session = Session(source, self.device)
        self.request = None
        self.view = None
        self.busy = Busy.LOADING
        self.loading_label = source.label
        self.doing = "loading torch" if self.session.needs_fork_server else "building the scenario"
        self.status = f"{self.doing}… ({source.label})"
        self._hide_error()
        self._refresh_all()
        self._load_worker(old, self.session, _Poster(self, self.session), self.conditions)

    def attach(self, target: str, token: str | None = None,
               connection: ClientConnection | ReplayConnection | None = None) -> None:
        """Show the session another process hosts (``workbench attach``): the same screen, fed
        by that session's messages instead of an engine child's."""
        old = self.session
        if old is not None:
            self._drop_queue(f"attaching to {target} afresh")
        self._retry_load = None
        self.session = Session.attach(target, token, connection)
        self.request = None
        self.view = None
        self.busy = Busy.LOADING
        self.loading_label = target
        self.doing = "attaching"
        self.status = f"attaching… ({target})"
        self._hide_error()
        self._refresh_all()
        self._load_worker(old, self.session, _Poster(self, self.session), ())

    @work(thread=True, exclusive=True, exit_on_error=False, group="engine")
    def _load_worker(self, old: Session | None, session: Session, poster: _Poster,
                     conditions: tuple[str, ...]) -> None:
        if old is not None:
            old.close()  # bounded: Stop, then terminate, then kill
        label = session.label
        try:
            if session.needs_fork_server:
                # The first frame is already drawn; the fork server imports torch (≈1-2 s) meanwhile.
                self.post_message(msg.ScenarioLoading(label, "loading torch"))
            self.post_message(msg.ScenarioLoading(label, "building the scenario"))
            # Returns once the child runs; ScenarioLoaded comes from the pump when it has built.
            session.open(poster, conditions)
        except Exception as exc:  # starting the process failed: show it, never die
            self.post_message(msg.ScenarioFailed(label, *format_error(exc)))

    @on(msg.ScenarioLoading)
    def scenario_loading(self, message: msg.ScenarioLoading) -> None:
        if self.busy is not Busy.LOADING or message.label != self.loading_label:
            return  # a stage of a load that was replaced
        self.doing = message.stage
        self.status = f"{message.stage}… ({message.label})"
        self._refresh_all()

    @on(msg.ScenarioLoaded)
    def scenario_loaded(self, message: msg.ScenarioLoaded) -> None:
        if self.busy is not Busy.LOADING:
            return  # a load replaced by another (R, s) or given up on
        self.busy = None
        self.view = message.view
        self.status = "ready · f next phase · n step · r run"
        if self.session is not None and self.session.attached:
            self.conditions = self.session.state.conditions()
            self.status = self.session.status_line()
        self._refresh_all()
        table = self.query_one(ModelTable)
        table.focus()
        self._request_inspect()
        self._next_queued()

    @on(msg.ScenarioFailed)
    def scenario_failed(self, message: msg.ScenarioFailed) -> None:
        self.busy = None
        self._drop_queue("the scenario failed to load")
        failed = self.session
        if failed is not None:
            failed.close()  # it has exited already; this reaps it
            # R (which the panel offers) builds the same scenario again, once the file is fixed.
            source = failed.source
            if source is not None:
                self._retry_load = lambda: self.load(source)
            else:  # attached: connect again
                self._retry_load = lambda: self.attach(failed.label)
        self.session = None
        self.view = None
        self.status = f"{message.label} failed to load"
        self._show_error(message.title, message.details)
        self._refresh_all()

    # -- stepping ------------------------------------------------------------------
    def _start(self, action: Busy, steps: int | None = None, queued: bool = False) -> None:
        if self.starting or (self.session is not None and self.busy is Busy.LOADING):
            self._enqueue(action)  # `workbench tui x.py` then f f f: they run once it has loaded
            return
        refusal = self._refusal(action)
        if refusal is not None:
            self.notify(refusal, severity="warning")
            return
        assert self.session is not None and self.view is not None  # _refusal said so
        if self.busy is not None or (self.queue and not queued):  # keys keep their order
            self._enqueue(action)
            return
        session = self.session
        # The session's call for each stepping command (bound now: a reload replaces the session).
        send: dict[Busy, Callable[[], int]] = {
            Busy.ADVANCE: session.advance, Busy.STEP: session.step, Busy.SKIP: session.skip,
            Busy.REWIND: session.rewind, Busy.RUN: session.run, Busy.STEPS: lambda: session.run(steps),
        }
        self.busy = action
        self.doing = self._describe(action, self.view)
        self._hide_error()
        self._run_started = (time.monotonic(), self.view.step)
        if action.running:
            self.status = "running… (p pauses)"
            self._refresh_title()
        try:
            self.request = send[action]()
        except RuntimeError as exc:  # the scenario's process is gone: say so, change nothing
            self.busy = None
            self.doing = ""
            self.status = str(exc)
            self._refresh_title()
            self.notify(str(exc), severity="error")

    def _refusal(self, action: Busy) -> str | None:
        """Why ``action`` cannot start with what is loaded now (None: it can)."""
        if self.session is None or self.view is None:
            return "no scenario loaded: press s to pick one"
        # A watch host cannot step a phase or rewind; a finished run takes nothing.
        return self.session.refusal(*HOST_COMMAND[action])

    def _enqueue(self, action: Busy) -> None:
        """Keep a stepping key pressed while something runs; refuse the rest with the reason."""
        doing = f"still {self._doing_words()}"
        if self.busy is not None and self.busy.running:
            self.notify(f"{doing}: p pauses it first", severity="warning")
            return
        if action not in QUEUE_KEY:
            if self.starting or self.busy is Busy.LOADING:
                what, keys = self._loading_words()
                self.notify(f"{what} is in progress: wait for it, or {keys}", severity="warning")
            else:
                self.notify(f"{doing}: wait for it to finish", severity="warning")
            return
        if len(self.queue) >= QUEUE_LIMIT:
            self.notify(f"{doing}; {QUEUE_LIMIT} keys are queued already (esc clears them)",
                        severity="warning")
            return
        self.queue.append(action)
        self._refresh_title()

    def _next_queued(self) -> None:
        if self.queue and self.busy is None:
            self._start(self.queue.popleft(), queued=True)

    def _drop_queue(self, why: str) -> None:
        if self.queue:
            keys = " ".join(QUEUE_KEY[a] for a in self.queue)
            self.queue.clear()
            self.notify(f"queued keys dropped ({keys}): {why}", severity="warning")

    def _loading_words(self) -> tuple[str, str]:
        """While a scenario loads: (what is in progress, what the keys can do meanwhile); a
        build() that hangs never ends by itself."""
        if self.starting:
            return "the workbench's start", "q quits"
        label = f" ({self.loading_label})" if self.loading_label else ""
        return f"{self.doing}{label}", "R restarts it · s picks another scenario · q quits"

    def _doing_words(self) -> str:
        if self.starting:
            return "starting…"
        if self.busy is Busy.LOADING:
            return f"{self.doing}…"
        return f"running {self.doing}…" if self.doing else "busy…"

    @staticmethod
    def _describe(action: Busy, view: EngineView) -> str:
        """The work an action starts, as the status line names it."""
        if action is Busy.ADVANCE:
            return PHASE_LABEL[view.next_phase]
        if action is Busy.STEP:
            return f"the rest of step {view.step}"
        return {Busy.SKIP: "skip step", Busy.RUN: "to a breakpoint",
                Busy.BREAKPOINTS: "breakpoint update"}.get(action, action.value)

    @on(msg.EngineUpdated)
    def engine_updated(self, message: msg.EngineUpdated) -> None:
        if self.busy is not None and self.busy.running and self._run_started is not None:
            t0, step0 = self._run_started
            rate = (message.view.step - step0) / max(time.monotonic() - t0, 1e-9)
            self.status = f"running… {rate:.1f} steps/s (p pauses)"
        self.view = message.view
        if self.session is not None and self.session.attached:
            self.status = self.session.status_line()
        self._refresh_all()
        if self.session is not None and self.session.attached:
            self._request_inspect()  # an attached script steps by itself: the inspector follows it
        if self.busy is not None and self.busy.running:
            # The inspector's module is read again at the run's throttled pace, so its
            # histograms follow the run (the host answers between phases).
            name = self.inspect_target
            if name is not None and self.session is not None:
                self.session.request_sample(name)

    @on(msg.WorkDone)
    def work_done(self, message: msg.WorkDone) -> None:
        if message.request is not None and message.request != self.request:
            if message.view is not None:  # a reply nobody waits on (breakpoints sent with a load)
                self.view = message.view
                self._refresh_all()
            return
        self.busy = None
        self.doing = ""
        self.request = None
        if message.view is not None:
            self.view = message.view
        if message.note:
            self.notify(message.note, title=self._note_title(message),
                        severity="warning" if message.warning else "information")
        view = self.view
        if message.summary is not None:
            self.status = message.summary.reason + self._run_rate(view)
            if message.summary.stopped_by == "breakpoint":
                self.notify(message.summary.reason, title="breakpoint", severity="warning")
                hit = view.pending_break if view is not None else None
                if hit is not None and hit.finding is not None:
                    self.query_one(ModelTable).select_module(hit.finding.module)
        elif view is not None and view.pending_break is not None:
            self.status = f"paused before optimizer step: {view.pending_break.reason}"
        elif view is not None and not self.query_one(ErrorPanel).shown:
            self.status = f"next: {PHASE_LABEL[view.next_phase]}"
        if self.session is not None and self.session.attached:
            self.status = self.session.status_line()
        self._refresh_all()
        self._request_inspect()
        if self.query_one(ErrorPanel).shown:
            self._drop_queue("the scenario raised")
        else:
            self._next_queued()

    def _run_rate(self, view: EngineView | None) -> str:
        """Appended to a finished run's status: how many steps, how fast ("" when none ran)."""
        if view is None or self._run_started is None:
            return ""
        t0, step0 = self._run_started
        steps = view.step - step0
        if steps <= 0:
            return ""
        text = f" · {steps} step{'s' if steps != 1 else ''}"
        if not self.show_volatile:  # snapshots and tests: no timings
            return text
        seconds = max(time.monotonic() - t0, 1e-9)
        return f"{text} in {seconds:.1f} s ({steps / seconds:.1f} steps/s)"

    @staticmethod
    def _note_title(message: msg.WorkDone) -> str:
        return "rewind" if message.note and message.note.startswith(("rewound", "cannot rewind")) else "workbench"

    @on(msg.HostLost)
    def host_lost(self, message: msg.HostLost) -> None:
        self.busy = None
        self.doing = ""
        self.request = None
        self._drop_queue("the scenario's process ended")
        self.status = "the scenario's process ended: R restarts it · s picks another"
        self._show_error(message.title, message.details)
        self._refresh_all()

    @on(msg.HostBusy)
    def host_busy(self, message: msg.HostBusy) -> None:
        """A step that seems stuck (a forward that loops): how long, where, and what can be done."""
        if self.busy is None:
            return
        where = f" · at {message.where}" if message.where else ""
        step = f"step {self.view.step}" if self.view is not None else message.doing
        self._stuck = f"{step} busy for {message.seconds:.0f} s with no news{where} · p pauses · R restarts"
        self._refresh_title()

    @on(msg.HostEnded)
    def host_ended(self, message: msg.HostEnded) -> None:
        if self.session is None or self.session is not message.session:
            return
        self.busy = None
        self.doing = ""
        self.request = None
        self._drop_queue("the run ended")
        self.status = message.text
        self.notify(message.text, title="session")
        self._refresh_all()

    @on(msg.StepFailed)
    def step_failed(self, message: msg.StepFailed) -> None:
        self.failed_step = message.failed_step
        nxt = f"step {message.view.step}" if message.view is not None else "a fresh step"
        self.status = f"the scenario raised: R reset · s switch · f/n start {nxt}"
        self._show_error(message.title, message.details)

    # -- actions -------------------------------------------------------------------
    def action_next_phase(self) -> None:
        self._start(Busy.ADVANCE)

    def action_full_step(self) -> None:
        self._start(Busy.STEP)

    def action_run(self) -> None:
        self._start(Busy.RUN)

    def action_skip(self) -> None:
        if self.view is not None and self.view.next_phase.value != "optimizer_step":
            self.notify("no optimizer step is pending: step to it first (f) or stop at a breakpoint",
                        severity="warning")
            return
        self._start(Busy.SKIP)

    def action_rewind(self) -> None:
        self._start(Busy.REWIND)

    def action_step_k(self) -> None:
        from workbench.tui.screens.dialogs import StepsPrompt

        # Ask for k only when k steps can run (a load in progress takes them after it).
        refusal = None if self.starting or self.busy is Busy.LOADING else self._refusal(Busy.STEPS)
        if refusal is not None:
            self.notify(refusal, severity="warning")
            return

        def chosen(steps: int | None) -> None:
            if steps:
                self._start(Busy.STEPS, steps)

        self.app.push_screen(StepsPrompt(), chosen)

    def action_pause(self) -> None:
        if self.session is not None and self.session.attached:
            refusal = self.session.refusal(P.Pause, "pause")
            if refusal is not None:
                self.notify(refusal, severity="warning")
                return
            try:
                self.session.pause()  # the script's loop holds at its next step boundary
            except RuntimeError as exc:
                self.notify(str(exc), severity="error")
                return
            self.status = "pausing the script at its next step…"
            self._refresh_title()
            return
        if self.session is not None and self.busy is not None and self.busy.running:
            self.session.pause()  # the host reads it between phases
            self.status = "pausing…"
            self._refresh_title()
        elif self.starting or self.busy is Busy.LOADING:
            doing, keys = self._loading_words()
            self.notify(f"{doing} is in progress and cannot be paused: {keys}", severity="warning")
        else:
            self.notify("nothing is running", severity="information")

    def action_reset(self) -> None:
        if self.session is None:
            if self._retry_load is not None and self.busy is None:
                self._retry_load()
            else:
                self.action_switch()
            return
        if self.session.source is None:  # attached: connect again (a finished run reopens its log)
            self.notify(f"connecting to {self.session.label} again", severity="information")
            self.attach(self.session.label)
            return
        self.load(self.session.source)

    def action_switch(self) -> None:
        self.workbench.action_pick_scenario()

    def action_breakpoints(self) -> None:
        if self.busy is not None:
            hint = "pause first (p)" if self.busy.running else f"wait for {self.busy} to finish"
            self.notify(f"{hint}, then edit breakpoints", severity="warning")
            return
        from workbench.tui.screens.dialogs import BreakpointsScreen

        view = self.view
        modules = [m.name for m in view.modules] if view is not None else []
        # Parameter names are known once a step measured them (none before the first backward).
        measured = view.last_measured if view is not None else None
        parameters = [p.name for p in measured.params] if measured is not None else []

        def saved(conditions: tuple[str, ...] | None) -> None:
            if conditions is None:
                return
            self.conditions = conditions
            what = ", ".join(conditions) if conditions else "none"
            # A glob that matches nothing is kept (modules may appear later), and said: a typo never fires.
            notes = [note for note in (_glob_note(c, modules, parameters) for c in conditions) if note]
            self.notify(f"breakpoints saved: {what}" + ("" if self.view is not None else
                        " (they apply once a scenario is loaded)") + "".join(f"\n{n}" for n in notes),
                        title="breakpoints", severity="warning" if notes else "information")
            if self.session is not None and self.view is not None:
                self.busy = Busy.BREAKPOINTS
                self.doing = "breakpoint update"
                try:
                    self.request = self.session.set_breakpoints(conditions)
                except (ValueError, RuntimeError) as exc:
                    self.busy = None
                    self.doing = ""
                    self._show_error(*format_error(exc))
                    self._refresh_all()

        self.app.push_screen(BreakpointsScreen(self.conditions, FINDING_KINDS, modules, parameters), saved)

    def action_bench(self) -> None:
        from workbench.tui.screens.bench import BenchScreen

        source = self._tool_source("benchmarks")
        if source is not None and self.session is not None:
            # The device the loaded scenario runs on ("auto" resolved, as the title bar says): the
            # bench's child would resolve it the same way, and its rows can say what skips there.
            device = self.view.summary.device if self.view is not None else self.session.device
            self.app.push_screen(BenchScreen(source, device))

    def action_profile(self) -> None:
        from workbench.tui.screens.profile import ProfileScreen

        source = self._tool_source("profile")
        if source is not None and self.session is not None:
            # The debugger's findings so far join the trace's recommendations ("ours").
            findings = tuple(self.view.findings) if self.view is not None else ()
            self.app.push_screen(ProfileScreen(source, self.session.device, findings=findings))

    def _tool_source(self, what: str) -> ScenarioSource | None:
        """The scenario file the bench or profile screen runs (None: there is none, and why is said)."""
        if self.session is None:
            self.notify("load a scenario first (s)", severity="warning")
            return None
        if self.session.source is None:
            self.notify(f"the {what} screen runs a scenario file; an attached script has none (s picks one)",
                        severity="warning")
        return self.session.source

    def action_inspect(self) -> None:
        from workbench.tui.screens.dialogs import InspectorScreen

        data = self._inspected
        stats, fresh = self._stats_of(data.module if data is not None else None)
        # Title and numbers both come from the module that was read, never a mix.
        self.app.push_screen(InspectorScreen(inspector_title(data), render_inspector(data, stats, fresh)))

    def action_log(self) -> None:
        from workbench.tui.screens.dialogs import LogScreen

        self.app.push_screen(LogScreen(list(self.workbench.logbook)))

    def action_help(self) -> None:
        from workbench.tui.screens.dialogs import HelpScreen

        keys = [(_key_label(a.key), a.help) for a in ACTIONS]
        keys += [("space / ← →", "fold or unfold the module under the cursor"),
                 ("enter (findings)", "jump to the finding's module"),
                 ("esc", "hide the error panel"), ("ctrl+p", "command palette")]
        self.app.push_screen(HelpScreen(keys))

    def action_quit(self) -> None:
        self.end_session()
        self.app.exit()

    def end_session(self) -> None:
        """End the scenario's process now (bounded well under a second, whatever its code does)."""
        session, self.session = self.session, None
        if session is not None and not session.closed:
            busy = self.busy is not None
            if session.close() and busy:
                self.stopped_running_code = True

    def action_hide_error(self) -> None:
        if self.queue:  # esc first forgets the queued keys, then hides the error
            self.queue.clear()
            self.notify("queued keys cleared")
            self._refresh_title()
            return
        self._hide_error()

    def _hide_error(self) -> None:
        self.query_one(ErrorPanel).hide()
        self.failed_step = None
        self.remove_class("error-shown")
        self._refresh_title()

    # -- findings, selection and the inspector ------------------------------------
    @on(FindingsPanel.Highlighted)
    def finding_highlighted(self, message: FindingsPanel.Highlighted) -> None:
        self._show_finding_detail(message.finding)

    def _show_finding_detail(self, finding: Finding | None) -> None:
        detail = self.query_one("#finding-detail", Static)
        detail.set_class(finding is not None, "shown")
        detail.update(finding_detail(finding) if finding is not None else "")

    @on(FindingsPanel.JumpToModule)
    def jump(self, message: FindingsPanel.JumpToModule) -> None:
        table = self.query_one(ModelTable)
        table.select_module(message.module)
        table.focus()
        if message.text:
            self.notify(message.text, title="finding", timeout=10)

    @on(ModelTable.ModuleSelected)
    def module_selected(self, message: ModelTable.ModuleSelected) -> None:
        self.query_one(MemoryPanel).selected = message.name
        self.query_one(MemoryPanel).view = self.view
        self.inspect_target = message.name
        if self._inspected is not None and self._inspected.module != message.name:
            # The title follows the cursor at once; the histograms follow when read.
            self._show_inspector(None, reading=message.name)
        if self._inspect_timer is not None:
            self._inspect_timer.stop()
        # Debounced: holding an arrow key does not queue a worker per row.
        self._inspect_timer = self.set_timer(0.15, self._request_inspect)

    _inspected = None
    inspect_target: str | None = None  # the module the inspector shows (read by a run's worker)

    def _stats_of(self, name: str | None) -> tuple[ModuleStats | None, bool]:
        """(the module's activation stats, measured in the step in progress?)."""
        if self.view is None or name is None:
            return None, False
        return self.view.module_stats().get(name), name in self.view.fresh_modules()

    def _show_inspector(self, data: InspectorData | None, reading: str | None = None) -> None:
        inspector = self.query_one(Inspector)
        if data is None and reading is not None:
            stats, fresh = self._stats_of(reading)
            inspector.show_reading(reading, stats, fresh)
            return
        stats, fresh = self._stats_of(data.module if data is not None else None)
        inspector.show(data, stats, fresh)

    def _request_inspect(self) -> None:
        name = self.query_one(ModelTable).selected
        if self.session is None or self.view is None or self.busy is not None or name is None:
            return  # a run asks at its progress pace; a phase, when it is done
        self.session.request_sample(name)  # one at a time: the answer asks again if the cursor moved

    @on(msg.InspectorReady)
    def inspector_ready(self, message: msg.InspectorReady) -> None:
        if message.data.module != self.query_one(ModelTable).selected:
            self._request_inspect()  # read for a row the cursor has left: read the new row
            return
        self._inspected = message.data
        self._show_inspector(message.data)

    # -- drawing -------------------------------------------------------------------
    def _show_error(self, title: str, details: str) -> None:
        self.query_one(ErrorPanel).show_error(title, details)
        # The panel takes the inspector's rows, not the findings' (see the stylesheet).
        self.add_class("error-shown")

    def _refresh_title(self) -> None:
        view = self.view
        if self.busy is not None and self.busy.running:
            state = self.status.split(" (")[0]
        elif self.busy is Busy.LOADING:
            state = f"{self.doing}…"
        elif self.starting:
            state = "starting…"
        elif self.busy is not None and view is not None:
            state = f"step {view.step} · {self._doing_words()}"
        elif view is None:
            state = "no scenario"
        elif view.pending_break is not None:
            state = f"step {view.step} · paused before optimizer step"
        elif self.query_one(ErrorPanel).shown and self.failed_step is not None:
            # The engine has moved on to the next step; the one that raised is the one to name.
            state = f"step {self.failed_step} raised · next: step {view.step}"
        elif self.query_one(ErrorPanel).shown:
            state = f"step {view.step} · error"
        elif self.session is not None and self.session.attached:
            # The script steps by itself: no "next forward" to offer, but whether it runs at all.
            state = f"step {view.step} · {self.session.title_state()}"
        else:
            state = f"step {view.step} · next {PHASE_LABEL[view.next_phase]}"
        if self.queue:
            state += f" · queued: {' '.join(QUEUE_KEY[a] for a in self.queue)}"
        self.query_one(TitleBar).show(view, state, self.loading_label)
        status = self.status
        if self.busy is not None and not self.busy.running and self.busy is not Busy.LOADING:
            status = self._doing_words()
        if self.busy is not None and self._stuck:  # no news for a while: how long, and where
            status = self._stuck
        if self.queue:
            status += f"  · queued: {' '.join(QUEUE_KEY[a] for a in self.queue)} (esc clears)"
        self.query_one(PhaseBar).status = status
        placeholder = (f"{self.doing}… ({self.loading_label})" if self.busy is Busy.LOADING
                       else "starting…" if self.starting else "")
        for panel in self.query(ViewPanel):
            panel.placeholder = placeholder

    def _refresh_all(self) -> None:
        self._stuck = ""  # news came: whatever the host was stuck on, it moved
        view = self.view
        with self.app.batch_update():
            self._refresh_title()
            # Flash what a phase changed; during a run everything changes ten times a second.
            self.query_one(ModelTable).show(view, flash=self.busy is None or not self.busy.running)
            findings = self.query_one(FindingsPanel)
            findings.show(view)
            # The detail follows the list as redrawn: a reset, rewind or another scenario
            # leaves no finding of the old list in it (a cleared list posts no highlight).
            self._show_finding_detail(findings.highlighted_finding)
            self.query_one(PhaseBar).failed_step = self.failed_step
            for panel in (self.query_one(PhaseBar), self.query_one(ChartsPanel), self.query_one(MemoryPanel)):
                panel.view = view


def _glob_note(condition: str, modules: list[str], parameters: list[str]) -> str:
    """``unmatched_glob_note`` of a saved condition ("" for one that does not parse: the host says why)."""
    from workbench.engine.breakpoints import Breakpoint
    from workbench.tui.screens.dialogs import unmatched_glob_note

    try:
        return unmatched_glob_note(Breakpoint.parse(condition), modules, parameters)
    except ValueError:
        return ""


def _key_label(key: str) -> str:
    return {"question_mark": "?"}.get(key, key)


class _Poster:
    """The session's listener: turns what its pump reports into messages for this screen.

    Called on the pump thread; ``post_message`` is thread-safe. A session the
    screen has replaced (R, s) posts nothing more.
    """

    def __init__(self, screen: MainScreen, session: Session) -> None:
        self.screen = screen
        self.session = session
        self.app = screen.workbench  # read here, on the UI thread (the pump has no active app)

    def _post(self, message: Message) -> None:
        if self.screen.session is self.session:
            self.screen.post_message(message)

    def loaded(self, view: EngineView) -> None:
        self._post(msg.ScenarioLoaded(view))

    def load_failed(self, title: str, details: str) -> None:
        self._post(msg.ScenarioFailed(self.session.label, title, details))

    def updated(self, view: EngineView) -> None:
        self._post(msg.EngineUpdated(view))

    def done(self, request: int, view: EngineView, summary: RunSummary | None, note: str | None,
             warning: bool) -> None:
        self._post(msg.WorkDone(view, summary, request, note, warning))

    def failed(self, request: int | None, title: str, details: str, view: EngineView,
               failed_step: int | None) -> None:
        self._post(msg.StepFailed(title, details, view, failed_step))

    def sample(self, data: InspectorData) -> None:
        self._post(msg.InspectorReady(data))

    def output(self, line: str, stderr: bool) -> None:
        if self.screen.session is self.session:
            self.app.capture_output(line, stderr)

    def lost(self, title: str, details: str) -> None:
        self._post(msg.HostLost(title, details))

    def busy(self, doing: str, seconds: float, where: str | None) -> None:
        self._post(msg.HostBusy(doing, seconds, where))

    def ended(self, text: str) -> None:
        self._post(msg.HostEnded(self.session, text))
