"""The stepping workbench: model table, phase bar, findings, charts, memory, inspector.

Torch work happens only in the thread workers below; they post messages
from workbench.tui.messages and the handlers update widgets on the UI thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from workbench.scenario import ScenarioError, ScenarioSource, load_source
from workbench.tui import messages as msg
from workbench.tui.session import PHASE_LABEL, EngineView, Session, format_error
from workbench.tui.widgets.common import ErrorPanel
from workbench.tui.widgets.findings import FindingsPanel
from workbench.tui.widgets.inspector import Inspector, render_inspector
from workbench.tui.widgets.model_table import ModelTable
from workbench.tui.widgets.panels import ChartsPanel, MemoryPanel, PhaseBar, TitleBar

NARROW_WIDTH = 100


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
           "optimizer and RNG restored; the steps replay on the same batches with full stats", False),
    Action("B", "breakpoints", "breakpoints", "add or remove breakpoints"),
    Action("R", "reset", "reset", "rebuild the scenario from its file (keeps breakpoints)", False),
    Action("s", "switch", "scenario", "pick another scenario"),
    Action("b", "bench", "bench", "benchmarks screen for this scenario", False),
    Action("P", "profile", "profile", "profile screen for this scenario", False),
    Action("i", "inspect", "inspect", "the tensor inspector as a full window", False),
    Action("l", "log", "log", "captured warnings and logs", False),
    Action("question_mark", "help", "help", "this list of keys"),
    Action("q", "quit", "quit", "quit the workbench"),
)


class MainScreen(Screen[None]):
    BINDINGS = [
        *(Binding(a.key, a.action, a.title, show=a.footer) for a in ACTIONS),
        Binding("escape", "hide_error", "hide error", show=False),
    ]

    def __init__(self, device: str = "auto", show_volatile: bool = True) -> None:
        super().__init__()
        self.device = device
        self.show_volatile = show_volatile
        self.session: Session | None = None
        self.view: EngineView | None = None
        self.busy: str | None = None
        self.conditions: tuple[str, ...] = ()
        self.loading_label = ""
        self.status = "no scenario"
        self._run_started: tuple[float, int] | None = None
        self._inspect_timer = None

    # -- layout ------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        vol = self.show_volatile
        yield TitleBar(id="title")
        with Horizontal(id="body"):
            yield ModelTable(id="model")
            with Vertical(id="side"):
                yield FindingsPanel(id="findings")
                yield ChartsPanel(id="charts", show_volatile=vol)
                yield MemoryPanel(id="memory", show_volatile=vol)
        yield Inspector(id="inspector")
        yield ErrorPanel(id="error")
        yield PhaseBar(id="phase", show_volatile=vol)
        yield Footer()

    def on_mount(self) -> None:
        titles = {"#model": "Model", "#findings": "Findings", "#charts": "Loss · ∇‖ · layer ∇ heat",
                  "#memory": "Memory", "#inspector": "Inspector", "#phase": "Phase"}
        for selector, title in titles.items():
            self.query_one(selector).border_title = title
        self.query_one(Inspector).show(None)
        self._set_narrow(self.size.width)
        self._refresh_all()
        begin = getattr(self.app, "begin", None)
        if begin is not None:
            self.call_after_refresh(begin)

    def on_resize(self, event: object) -> None:
        self._set_narrow(self.size.width)

    def _set_narrow(self, width: int) -> None:
        # At 80 columns the side panels fold under the table and the
        # inspector becomes a modal (i).
        self.set_class(width < NARROW_WIDTH, "narrow")

    # -- loading -----------------------------------------------------------------
    def load_spec(self, spec: str) -> None:
        try:
            source = load_source(spec)
        except ScenarioError as exc:
            self._show_error(*format_error(exc))
            return
        self.load(source)

    def load(self, source: ScenarioSource) -> None:
        old = self.session
        if old is not None:
            old.stop.set()  # a run in progress stops at its next phase
        self.session = Session(source, self.device)
        self.view = None
        self.busy = "loading"
        self.loading_label = source.label
        self.status = f"loading {source.label}…"
        self.query_one(ErrorPanel).hide()
        self._refresh_all()
        self._load_worker(old, self.session, self.conditions)

    @work(thread=True, exclusive=True, exit_on_error=False, group="engine")
    def _load_worker(self, old: Session | None, session: Session, conditions: tuple[str, ...]) -> None:
        if old is not None:
            old.close()
        try:
            view = session.open()
            if conditions:
                view = session.set_breakpoints(conditions)
        except Exception as exc:  # the user's scenario: show it, never die
            self.post_message(msg.ScenarioFailed(session.source.label, *format_error(exc)))
            return
        self.post_message(msg.ScenarioLoaded(view))

    @on(msg.ScenarioLoaded)
    def scenario_loaded(self, message: msg.ScenarioLoaded) -> None:
        self.busy = None
        self.view = message.view
        self.status = "ready · f next phase · n step · r run"
        self._refresh_all()
        table = self.query_one(ModelTable)
        table.focus()
        self._request_inspect()

    @on(msg.ScenarioFailed)
    def scenario_failed(self, message: msg.ScenarioFailed) -> None:
        self.busy = None
        self.session = None
        self.view = None
        self.status = f"{message.label} failed to load"
        self._show_error(message.title, message.details)
        self._refresh_all()

    # -- stepping ------------------------------------------------------------------
    def _start(self, action: str, steps: int | None = None) -> None:
        if self.session is None or self.view is None:
            self.notify("no scenario loaded: press s to pick one", severity="warning")
            return
        if self.busy is not None:
            hint = "; p pauses it" if self.busy in ("run", "steps") else ""
            self.notify(f"busy ({self.busy}){hint}", severity="warning")
            return
        self.busy = action
        self.query_one(ErrorPanel).hide()
        self._run_started = (time.monotonic(), self.view.step)
        if action in ("run", "steps"):
            self.status = "running… (p pauses)"
            self._refresh_title()
        self._drive(self.session, action, steps)

    @work(thread=True, exclusive=True, exit_on_error=False, group="engine")
    def _drive(self, session: Session, action: str, steps: int | None) -> None:
        summary = None
        try:
            if action == "advance":
                view = session.advance()
            elif action == "step":
                view = session.step()
            elif action == "skip":
                view = session.skip()
            elif action == "rewind":
                try:
                    view, note = session.rewind()
                except ValueError as exc:  # nothing to rewind to: say why, change nothing
                    self.app.call_from_thread(self.notify, str(exc), title="rewind", severity="warning")
                    view = session.view()
                else:
                    self.app.call_from_thread(self.notify, note, title="rewind")
            else:
                view, summary = session.run(
                    steps, lambda v: self.post_message(msg.EngineUpdated(v)))
        except Exception as exc:  # user code raised in a phase: show it, keep going
            title, details = format_error(exc)
            try:
                view = session.view()
            except Exception:
                view = None
            self.post_message(msg.StepFailed(title, details, view))
            self.post_message(msg.WorkDone(view))
            return
        self.post_message(msg.WorkDone(view, summary))

    @on(msg.EngineUpdated)
    def engine_updated(self, message: msg.EngineUpdated) -> None:
        if self.busy in ("run", "steps") and self._run_started is not None:
            t0, step0 = self._run_started
            rate = (message.view.step - step0) / max(time.monotonic() - t0, 1e-9)
            self.status = f"running… {rate:.1f} steps/s (p pauses)"
        self.view = message.view
        self._refresh_all()

    @on(msg.WorkDone)
    def work_done(self, message: msg.WorkDone) -> None:
        self.busy = None
        if message.view is not None:
            self.view = message.view
        view = self.view
        if message.summary is not None:
            self.status = message.summary.reason + self._run_rate(view)
            if message.summary.stopped_by == "breakpoint":
                self.notify(message.summary.reason, title="breakpoint", severity="warning")
                hit = view.pending_break if view is not None else None
                module = getattr(getattr(hit, "finding", None), "module", None)
                if module is not None:
                    self.query_one(ModelTable).select_module(module)
        elif view is not None and view.pending_break is not None:
            self.status = f"paused before optimizer step: {view.pending_break.reason}"
        elif view is not None and not self.query_one(ErrorPanel).shown:
            self.status = f"next: {PHASE_LABEL[view.next_phase]}"
        self._refresh_all()
        self._request_inspect()

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

    @on(msg.StepFailed)
    def step_failed(self, message: msg.StepFailed) -> None:
        self.status = "the scenario raised: R reset · s switch · f/n start a fresh step"
        self._show_error(message.title, message.details)

    # -- actions -------------------------------------------------------------------
    def action_next_phase(self) -> None:
        self._start("advance")

    def action_full_step(self) -> None:
        self._start("step")

    def action_run(self) -> None:
        self._start("run")

    def action_skip(self) -> None:
        if self.view is not None and self.view.next_phase.value != "optimizer_step":
            self.notify("no optimizer step is pending: step to it first (f) or stop at a breakpoint",
                        severity="warning")
            return
        self._start("skip")

    def action_rewind(self) -> None:
        self._start("rewind")

    def action_step_k(self) -> None:
        from workbench.tui.screens.dialogs import StepsPrompt

        def chosen(steps: int | None) -> None:
            if steps:
                self._start("steps", steps)

        self.app.push_screen(StepsPrompt(), chosen)

    def action_pause(self) -> None:
        if self.session is not None and self.busy in ("run", "steps"):
            self.session.stop.set()  # polled by the engine between phases
            self.status = "pausing…"
            self._refresh_title()
        else:
            self.notify("nothing is running", severity="information")

    def action_reset(self) -> None:
        if self.session is None:
            self.action_switch()
            return
        self.load(self.session.source)

    def action_switch(self) -> None:
        self.app.action_pick_scenario()  # type: ignore[attr-defined]

    def action_breakpoints(self) -> None:
        if self.busy is not None:
            hint = "pause first (p)" if self.busy in ("run", "steps") else f"wait for {self.busy} to finish"
            self.notify(f"{hint}, then edit breakpoints", severity="warning")
            return
        from workbench.tui.screens.dialogs import BreakpointsScreen

        def saved(conditions: tuple[str, ...] | None) -> None:
            if conditions is None:
                return
            self.conditions = conditions
            if self.session is not None and self.view is not None:
                self.busy = "breakpoints"
                self._set_breakpoints(self.session, conditions)

        self.app.push_screen(BreakpointsScreen(self.conditions, _finding_kinds()), saved)

    @work(thread=True, exclusive=True, exit_on_error=False, group="engine")
    def _set_breakpoints(self, session: Session, conditions: tuple[str, ...]) -> None:
        try:
            view = session.set_breakpoints(conditions)
        except Exception as exc:
            self.post_message(msg.StepFailed(*format_error(exc), None))
            self.post_message(msg.WorkDone(None))
            return
        self.post_message(msg.WorkDone(view))

    def action_bench(self) -> None:
        self._push_tool("bench", "BenchScreen", "benchmarks")

    def action_profile(self) -> None:
        # The debugger's findings so far join the trace's recommendations ("ours").
        findings = tuple(self.view.findings) if self.view is not None else ()
        self._push_tool("profile", "ProfileScreen", "profile", findings=findings)

    def _push_tool(self, module: str, cls: str, what: str, **extra: Any) -> None:
        if self.session is None:
            self.notify("load a scenario first (s)", severity="warning")
            return
        import importlib

        name = f"workbench.tui.screens.{module}"
        try:
            screen_cls = getattr(importlib.import_module(name), cls)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            self.notify(f"{what} screen not available yet", severity="warning")
            return
        self.app.push_screen(screen_cls(self.session.source, self.session.device, **extra))

    def action_inspect(self) -> None:
        from workbench.tui.screens.dialogs import InspectorScreen

        inspector = self.query_one(Inspector)
        self.app.push_screen(InspectorScreen(str(inspector.border_title or "Inspector"),
                                             render_inspector(self._inspected, self._selected_stats())))

    def action_log(self) -> None:
        from workbench.tui.screens.dialogs import LogScreen

        self.app.push_screen(LogScreen(list(getattr(self.app, "logbook", []))))

    def action_help(self) -> None:
        from workbench.tui.screens.dialogs import HelpScreen

        keys = [(_key_label(a.key), a.help) for a in ACTIONS]
        keys += [("space / ← →", "fold or unfold the module under the cursor"),
                 ("enter (findings)", "jump to the finding's module"),
                 ("esc", "hide the error panel"), ("ctrl+p", "command palette")]
        self.app.push_screen(HelpScreen(keys))

    def action_quit(self) -> None:
        if self.session is not None:
            self.session.stop.set()
        self.app.exit()

    def action_hide_error(self) -> None:
        self.query_one(ErrorPanel).hide()

    # -- findings, selection and the inspector ------------------------------------
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
        if self._inspect_timer is not None:
            self._inspect_timer.stop()
        # Debounced: holding an arrow key does not queue a worker per row.
        self._inspect_timer = self.set_timer(0.15, self._request_inspect)

    _inspected = None

    def _selected_stats(self) -> object | None:
        name = self.query_one(ModelTable).selected
        if self.view is None or name is None:
            return None
        return self.view.module_stats().get(name)

    def _request_inspect(self) -> None:
        name = self.query_one(ModelTable).selected
        if self.session is None or self.view is None or self.busy is not None or name is None:
            return
        self._inspect_worker(self.session, name)

    @work(thread=True, exclusive=True, exit_on_error=False, group="inspect")
    def _inspect_worker(self, session: Session, name: str) -> None:
        try:
            data = session.inspect(name)
        except Exception as exc:  # inspection must never take the app down
            self.post_message(msg.LogLine(f"inspector: {type(exc).__name__}: {exc}"))
            return
        self.post_message(msg.InspectorReady(data))

    @on(msg.InspectorReady)
    def inspector_ready(self, message: msg.InspectorReady) -> None:
        self._inspected = message.data
        self.query_one(Inspector).show(message.data, self._selected_stats())

    # -- drawing -------------------------------------------------------------------
    def _show_error(self, title: str, details: str) -> None:
        self.query_one(ErrorPanel).show_error(title, details)

    def _refresh_title(self) -> None:
        view = self.view
        if self.busy in ("run", "steps"):
            state = self.status.split(" (")[0]
        elif self.busy == "loading":
            state = "loading…"
        elif view is None:
            state = "no scenario"
        elif view.pending_break is not None:
            state = f"step {view.step} · paused before optimizer step"
        elif self.query_one(ErrorPanel).shown:
            state = f"step {view.step} · error"
        else:
            state = f"step {view.step} · next {PHASE_LABEL[view.next_phase]}"
        self.query_one(TitleBar).show(view, state, self.loading_label)
        self.query_one(PhaseBar).status = self.status

    def _refresh_all(self) -> None:
        view = self.view
        with self.app.batch_update():
            self._refresh_title()
            # Flash what a phase changed; during a run everything changes ten times a second.
            self.query_one(ModelTable).show(view, flash=self.busy not in ("run", "steps"))
            self.query_one(FindingsPanel).show(view)
            for panel in (self.query_one(PhaseBar), self.query_one(ChartsPanel), self.query_one(MemoryPanel)):
                panel.view = view


def _key_label(key: str) -> str:
    return {"question_mark": "?"}.get(key, key)


def _finding_kinds() -> tuple[str, ...]:
    """The finding kinds the engine's health rules raise, when it lists them."""
    try:
        from workbench.engine import breakpoints
    except ImportError:
        return ()
    kinds = getattr(breakpoints, "FINDING_KINDS", None)
    return tuple(kinds) if kinds else ()
