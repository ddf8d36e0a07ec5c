"""The profile screen: profile the current scenario in a worker, then show the analysis.

Shows the mean step as a stacked bar (one colour per category, the same
colours as `workbench profile`), the per-step breakdown, the top operators,
the recommendations and where the trace files went. ``r`` profiles again,
Escape returns to the main screen.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from rich.console import Group, RenderableType
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from workbench.engine.records import Finding
from workbench.profiling.analysis import TraceAnalysis, top_operators
from workbench.profiling.capture import ProfileRun, prepare_profiler
from workbench.profiling.export import run_profile
from workbench.profiling.options import ProfileOptions
from workbench.profiling.runs import RunAnalysis, analyze_path
from workbench.profiling.tensorboard import tensorboard_command
from workbench.report.profile import (
    bar_legend,
    breakdown_table,
    loss_source_line,
    ran_on_gpu,
    recommendations_view,
    stacked_bar,
)
from workbench.scenario import ScenarioSource
from workbench.tui import theme
from workbench.tui.messages import JobFailed, ProfileProgress, ProfileReady
from workbench.tui.widgets.common import ErrorPanel, ProgressPanel

# Profiling in the TUI records memory (for the peak) but not stacks: --stack
# slows Python several-fold and the screen has no module view to show for it.
TUI_OPTIONS = ProfileOptions(wait=1, warmup=1, active=3, memory=True, shapes=False, stack=False)
PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress messages a second
TOP_OPS = 12


# -- the screen ------------------------------------------------------------------------------


class ProfileScreen(Screen[None]):
    DEFAULT_CSS = """
    ProfileScreen > VerticalScroll { height: 1fr; padding: 0 1; }
    ProfileScreen #profile-title { text-style: bold; padding: 0 1; }
    ProfileScreen #ops { height: auto; max-height: 16; }
    ProfileScreen #breakdown, ProfileScreen #recs, ProfileScreen #files { height: auto; margin: 1 0 0 0; }
    """

    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("r", "rerun", "profile again"),
    ]

    def __init__(
        self,
        source: ScenarioSource,
        device: str,
        logdir: str | Path = "runs/profile",
        options: ProfileOptions = TUI_OPTIONS,
        findings: tuple[Finding, ...] = (),
    ) -> None:
        super().__init__()
        self.findings = findings  # the debugger's health findings: recommendations of our own
        self.source = source
        self.device = str(device)
        self.logdir = Path(logdir).resolve()  # shown to the user: absolute, whatever the cwd later
        self.options = options
        self.result: ProfileRun | None = None
        self.analysis: RunAnalysis | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        yield Label(f"Profile · {self.source.label} on {self.device}", id="profile-title")
        yield ProgressPanel("Profiling", id="progress")
        yield ErrorPanel(id="error")
        with VerticalScroll(id="profile-body"):
            yield Static("", id="files")  # where the trace went and how to view it: above the fold
            yield Static("", id="breakdown")
            yield DataTable(id="ops", zebra_stripes=True, cursor_type="row")
            yield Static("", id="recs")
        yield Footer()

    def on_mount(self) -> None:
        # The page scrolls (arrows, page keys) from the start: the ops table inside it would
        # otherwise take focus and the keys, and the page moved only after Tab.
        self.query_one("#ops", DataTable).can_focus = False
        self.query_one("#profile-body", VerticalScroll).focus()
        self.action_rerun()

    # -- actions ------------------------------------------------------------------------
    def action_back(self) -> None:
        error = self.query_one(ErrorPanel)
        if error.shown:
            error.hide()
            return
        self.app.pop_screen()

    def action_rerun(self) -> None:
        if self.running:
            self.notify("a profile is already running", severity="warning")
            return
        self.running = True
        self.query_one(ErrorPanel).hide()
        progress = self.query_one(ProgressPanel)
        progress.display = True
        progress.set_progress(0, self.options.steps, "starting the profiler")
        # Draw the panel first: the first prepare_profiler() blocks the UI thread briefly.
        self.call_after_refresh(self._start)

    def _start(self) -> None:
        try:
            prepare_profiler()  # on the UI (main) thread, or Kineto prints over the screen
        except Exception as exc:  # a torch build without Kineto: the worker will say more
            self.app.log(f"prepare_profiler: {exc}")
        self.query_one(ProgressPanel).set_progress(
            0, self.options.steps, "building the scenario and estimating the trace size")
        self._profile(self.source, self.device, self.logdir, self.options)

    # -- the worker ------------------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="profile")
    def _profile(self, source: ScenarioSource, device: str, logdir: Path, options: ProfileOptions) -> None:
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done == total or now - last >= PROGRESS_INTERVAL_S:
                last = now
                phase = "warming up" if done <= options.wait + options.warmup else "recording"
                self.post_message(ProfileProgress(done, total, f"step {done}/{total} ({phase})"))

        try:
            # Textual draws on fd 2, so no fd redirect here: workbench.tui set the
            # quiet log levels before torch was imported.
            result = run_profile(source, device, logdir, options, capture_stderr=False, on_progress=progress)
            self.post_message(ProfileProgress(options.steps, options.steps, "analysing the trace"))
            analysis = analyze_path(result.run_dir, findings=self.findings)
        except Exception as exc:  # the user's code or a bad path: shown, never fatal
            self.post_message(JobFailed(
                f"profiling {source.label} failed: {type(exc).__name__}",
                f"{exc}\n\n{''.join(traceback.format_exception(exc)[-3:])}",
            ))
            return
        self.post_message(ProfileReady(result, analysis))

    # -- handlers (UI thread) ---------------------------------------------------------------
    @on(ProfileProgress)
    def _progress(self, message: ProfileProgress) -> None:
        self.query_one(ProgressPanel).set_progress(message.done, message.total, message.status)

    @on(JobFailed)
    def _failed(self, message: JobFailed) -> None:
        self.running = False
        self.query_one(ProgressPanel).display = False
        self.query_one(ErrorPanel).show_error(message.title, message.details)

    @on(ProfileReady)
    def _ready(self, message: ProfileReady) -> None:
        self.running = False
        self.result, self.analysis = message.run, message.analysis
        self.query_one(ProgressPanel).display = False
        if not message.analysis.workers:
            self.query_one(ErrorPanel).show_error("no trace was written", str(message.run.run_dir))
            return
        worker = message.analysis.workers[0]
        with self.app.batch_update():
            self._show_breakdown(worker)
            self._show_ops(worker)
            self.query_one("#recs", Static).update(
                recommendations_view(message.analysis.recommendations, self.source.spec,
                                     on_gpu=ran_on_gpu(message.analysis)))
            self._show_files(message.run)

    def _show_breakdown(self, a: TraceAnalysis) -> None:
        head = Text(f"mean step {a.mean_step_us / 1e3:.2f} ms over {len(a.steps)} profiled steps", theme.ACCENT)
        if a.gpu_utilization is not None:
            head.append(f"  ·  GPU kernel-busy {a.gpu_utilization * 100:.1f}%", style="")
        parts: list[RenderableType] = [head, stacked_bar(a, width=72), bar_legend(a), breakdown_table(a)]
        loss_line = loss_source_line(a)  # the model computed the loss: say that forward holds it
        if loss_line is not None:
            parts.append(loss_line)
        self.query_one("#breakdown", Static).update(Group(*parts))

    def _show_ops(self, a: TraceAnalysis) -> None:
        table = self.query_one("#ops", DataTable)
        table.clear(columns=True)
        device = a.has_device_events
        columns = ["operator", "calls", "self CPU ms", "total CPU ms"]
        if device:
            columns += ["self device ms", "total device ms"]
        table.add_columns(*columns)
        for op in top_operators(a.operators, TOP_OPS):
            row = [op.name, str(op.calls), f"{op.self_cpu_us / 1e3:.2f}", f"{op.total_cpu_us / 1e3:.2f}"]
            if device:
                row += [f"{op.self_device_us / 1e3:.2f}", f"{op.total_device_us / 1e3:.2f}"]
            table.add_row(*row)
        table.border_title = "top operators"

    def _show_files(self, run: ProfileRun) -> None:
        text = Text()
        for f in run.files:
            text.append(f"trace: {f}\n")
        text.append(f"view: {tensorboard_command(run.logdir)}\n", theme.INFO)
        text.append(f"analyse again: workbench profile --analyze {run.run_dir}", theme.DIM)
        self.query_one("#files", Static).update(text)
