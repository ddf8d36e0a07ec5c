"""The profile screen: profile the current scenario in a child process, then show the analysis.

Shows the mean step as a stacked bar (one colour per category, the same
colours as `workbench profile`), the per-step breakdown, the top operators,
the recommendations and where the trace files went. ``r`` profiles again,
Escape returns to the main screen, ``q`` quits; either stops a profile still running.

The scenario is profiled, and the trace analysed, in a child process
(``jobs.ChildJob``): the user's code can end or hang only that process.
"""

from __future__ import annotations

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
from workbench.profiling.capture import ProfileRun
from workbench.profiling.options import ProfileOptions
from workbench.profiling.runs import RunAnalysis
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
from workbench.tui.jobs import ChildJob, JobError, ProfileStep, profile_child
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
        Binding("q", "app.quit", "quit"),
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
        self.job: ChildJob | None = None  # the child of the profile in progress (or of the last one)
        self._doing: str | None = None  # what it was doing last (worker thread), for a failure

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
        self.stop()
        self.app.pop_screen()

    def on_unmount(self) -> None:
        self.stop()  # however the screen goes (q quits the app), its child goes with it

    def stop(self) -> None:
        """Stop a profile still running (its child process, at once)."""
        if self.running and self.job is not None:
            self.job.cancel()
            self.running = False

    def action_rerun(self) -> None:
        if self.running:
            self.notify("a profile is already running", severity="warning")
            return
        self.running = True
        self.query_one(ErrorPanel).hide()
        progress = self.query_one(ProgressPanel)
        progress.display = True
        progress.set_progress(0, self.options.steps, "building the scenario and estimating the trace size")
        self.job = ChildJob()
        self._profile(self.job)

    # -- the worker ------------------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="profile")
    def _profile(self, job: ChildJob) -> None:
        def progress(step: ProfileStep) -> None:
            self._doing = f"profiling, {step.status} at its last report"
            self.post_message(ProfileProgress(step.done, step.total, step.status))

        self._doing = "building the scenario"
        outcome = job.run(profile_child, self.source, self.device, self.logdir, self.options, self.findings,
                          on_progress=progress)
        stderr = job.hand_output(getattr(self.app, "capture_output", None))  # to the log (l), if any
        if job.cancelled:  # stopped from the screen: nothing to say
            return
        if not outcome.returned:
            self.post_message(JobFailed(*job.lost("profile", self._doing, outcome, stderr)))
        elif isinstance(outcome.value, JobError):
            self.post_message(JobFailed(outcome.value.title, outcome.value.details))
        else:
            result, analysis = outcome.value
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


