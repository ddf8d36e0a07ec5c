"""The bench screen: pick variants, run them in a child process, watch the table fill in.

``r`` (or the Run button) benchmarks the checked variants on identical
batches, exactly like ``workbench bench``; rows appear as they finish and a
bar chart of speedups follows. Escape returns, ``q`` quits; either stops a
benchmark still running.

The user's code runs in a child process of its own (``workbench.isolation``),
never in the TUI's: a scenario that calls ``os._exit``, crashes or loops forever
ends or hangs only its child, and the screen says what it did and where.
``workbench.tui.jobs.ChildJob`` is that child seen from the screen (shared with the profile
screen): it can be stopped from the UI thread, with whatever it started.
"""

from __future__ import annotations


from rich.segment import Segment
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.strip import Strip
from textual.widgets import Button, DataTable, Footer, Label, SelectionList, Static

from workbench.bench.results import BenchRun, VariantResult
from workbench.bench.runner import BenchProgress
from workbench.bench.timing import DEFAULT_PLAN, Plan
from workbench.bench.variants import DEFAULT
from workbench.report.bench import hardware_line, is_inference, notes, quality, speedup_bars
from workbench.report.numbers import fmt_ms, human_bytes, human_count
from workbench.scenario import ScenarioSource
from workbench.tui import theme
from workbench.tui.jobs import ChildJob, JobError, bench_child
from workbench.tui.messages import BenchFinished, BenchRowDone, BenchTick, JobFailed
from workbench.tui.widgets.common import ErrorPanel, ProgressPanel

# What the checklist offers; compile is unchecked by default (≈20 s per model on a small CPU).
CHOICES: tuple[tuple[str, bool], ...] = (
    ("fp32", True), ("amp", True), ("amp-bf16", True), ("accum-4", True), ("channels-last", True),
    ("dataparallel", True), ("ddp-2", True), ("int8-dynamic", True), ("dataloader", True),
    ("compile", False),
)
assert all(name in DEFAULT or name == "compile" for name, _ in CHOICES)
# Rows that only run on CUDA: on another device they can only skip, so there they start unchecked
# and say why (checked anyway, the row's reason says it again).
NEEDS_CUDA = {"amp-bf16": "needs CUDA", "dataparallel": "needs CUDA"}


def choices(device: str) -> list[tuple[Text, str, bool]]:
    """The checklist's (prompt, variant, checked) rows for a bench on ``device`` ("auto": not
    resolved yet, so nothing is known to skip)."""
    elsewhere = device != "auto" and not device.startswith("cuda")
    rows = []
    for name, checked in CHOICES:
        why = NEEDS_CUDA.get(name) if elsewhere else None
        prompt = Text(name)
        if why is not None:
            prompt.append(f" ({why})", theme.DIM)
        rows.append((prompt, name, checked and why is None))
    return rows


class VariantChecklist(SelectionList[str]):
    """A SelectionList whose box shows the state by its glyph, not only its colour.

    Textual draws ``X`` in both states (only the colour differs), which reads as
    "all checked" on a monochrome or colour-blind screen: checked is ✔, unchecked blank.
    """

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        segments = list(strip)
        index = self.scroll_offset.y + y
        if len(segments) < 3 or not 0 <= index < self.option_count:
            return strip
        checked = self.get_option_at_index(index).value in self.selected
        inner = segments[1]
        segments[1] = Segment("✔" if checked else " ", inner.style, inner.control)
        return Strip(segments, strip.cell_length)


class BenchScreen(Screen[None]):
    DEFAULT_CSS = """
    BenchScreen #bench-title { text-style: bold; margin: 0 1; }
    BenchScreen #picker { width: 34; height: auto; }  /* "dataparallel (needs CUDA)" whole */
    BenchScreen SelectionList { height: auto; max-height: 14; }
    BenchScreen #results { width: 1fr; }
    BenchScreen #bars, BenchScreen #hardware { height: auto; margin: 1 0 0 0; }
    """

    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("r", "run", "run the checked variants"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, source: ScenarioSource, device: str, plan: Plan = DEFAULT_PLAN) -> None:
        super().__init__()
        self.source = source
        self.device = str(device)
        self.plan = plan
        self.running = False
        self.run_result: BenchRun | None = None
        self.job: ChildJob | None = None  # the child of the run in progress (or of the last one)
        self._doing: str | None = None  # what it was doing last (worker thread), for a failure

    def compose(self) -> ComposeResult:
        yield Label(f"Bench · {self.source.label} on {self.device}", id="bench-title")
        with Horizontal():
            with Vertical(id="picker"):
                yield VariantChecklist(*choices(self.device), id="variants")
                yield Button("Run (r)", id="run", variant="primary")
            with VerticalScroll(id="results"):
                yield ProgressPanel("Benchmark", id="progress")
                yield ErrorPanel(id="error")
                yield Static("", id="hardware")
                yield DataTable(id="table", zebra_stripes=True, cursor_type="row")
                yield Static("", id="detail")  # the highlighted row in full: notes run off wide tables
                yield Static("", id="bars")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("variant", "status", "median", "IQR", "samples/s", "speedup", "peak mem",
                          "quality", "notes")
        self.query_one(ProgressPanel).display = False

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
        """Stop a benchmark still running (its child process, at once)."""
        if self.running and self.job is not None:
            self.job.cancel()
            self.running = False

    @on(Button.Pressed, "#run")
    def action_run(self) -> None:
        if self.running:
            self.notify("a benchmark is already running", severity="warning")
            return
        names = list(self.query_one(SelectionList).selected)
        if not names:
            self.notify("check at least one variant", severity="warning")
            return
        self.running = True
        self.query_one(ErrorPanel).hide()
        self.query_one(DataTable).clear()
        self.query_one("#bars", Static).update("")
        progress = self.query_one(ProgressPanel)
        progress.display = True
        progress.set_progress(0, None, "building the scenario")
        self.job = ChildJob()
        self._bench(self.job, names)

    # -- the worker ---------------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False)
    def _bench(self, job: ChildJob, names: list[str]) -> None:
        def progress(p: BenchProgress) -> None:
            self._doing = f"running {p.variant} (row {p.index + 1}/{p.count}; step {p.done}/{p.total} at its last report)"
            if p.result is not None:
                self.post_message(BenchRowDone(p.result, p.index, p.count))
            else:  # the child sends ~10 a second
                self.post_message(BenchTick(p))

        self._doing = "building the scenario"
        outcome = job.run(bench_child, self.source, names, self.device, self.plan, on_progress=progress)
        stderr = job.hand_output(getattr(self.app, "capture_output", None))  # to the log (l), if any
        if job.cancelled:  # stopped from the screen: nothing to say
            return
        if not outcome.returned:
            self.post_message(JobFailed(*job.lost("benchmark", self._doing, outcome, stderr)))
        elif isinstance(outcome.value, JobError):
            self.post_message(JobFailed(outcome.value.title, outcome.value.details))
        else:
            self.post_message(BenchFinished(outcome.value))

    # -- handlers (UI thread) ------------------------------------------------------------
    def on_bench_tick(self, message: BenchTick) -> None:
        p = message.progress
        total = p.count * p.total
        self.query_one(ProgressPanel).set_progress(
            p.index * p.total + p.done, total, f"{p.variant}: step {p.done}/{p.total} (row {p.index + 1}/{p.count})")

    def on_bench_row_done(self, message: BenchRowDone) -> None:
        self.query_one(DataTable).add_row(*row_cells(message.result), key=message.result.name)

    def on_bench_finished(self, message: BenchFinished) -> None:
        self.running = False
        self.run_result = message.run
        self.query_one(ProgressPanel).display = False
        self.query_one("#hardware", Static).update(hardware_line(message.run))
        table = self.query_one(DataTable)
        with self.app.batch_update():
            table.clear()  # rows again, now with speedups against fp32
            for r in message.run.results:
                table.add_row(*row_cells(r, message.run.get("fp32")), key=r.name)
        self.query_one("#bars", Static).update(speedup_bars(message.run))

    @on(DataTable.RowHighlighted, "#table")
    def show_detail(self, event: DataTable.RowHighlighted) -> None:
        name = event.row_key.value if event.row_key is not None else None
        run = self.run_result
        result = run.get(name) if run is not None and name else None
        if result is None:
            cells = event.data_table.get_row(event.row_key) if event.row_key is not None else []
            text = "  ".join(str(c) for c in cells if str(c))
        else:
            assert run is not None  # a result came from it
            text = row_detail(result, run.get("fp32"))
        self.query_one("#detail", Static).update(text)

    def on_job_failed(self, message: JobFailed) -> None:
        self.running = False
        self.query_one(ProgressPanel).display = False
        self.query_one(ErrorPanel).show_error(message.title, message.details)


def row_detail(r: VariantResult, baseline: VariantResult | None = None) -> str:
    """One row in words, unclipped: status, reason or quality, and every note."""
    if not r.ok or r.timing is None:
        return f"{r.name}: {r.status}: {r.reason}"
    parts = [f"{r.name}: {fmt_ms(r.timing.median)} median", quality(r, baseline), notes(r, baseline)]
    return " · ".join(p for p in parts if p)


NOTES_WIDTH = 48  # the table's notes column; the highlighted row's detail below shows them whole


def clip_words(text: str, width: int = NOTES_WIDTH) -> str:
    """``text`` cut at a word boundary with an ellipsis, never mid-word."""
    if len(text) <= width:
        return text
    cut = text.rfind(" ", 0, width - 1)
    return text[: cut if cut > width // 2 else width - 1].rstrip(" ;,·") + "…"


def row_cells(r: VariantResult, baseline: VariantResult | None = None) -> tuple[str, ...]:
    if not r.ok or r.timing is None:
        return (r.name, r.status, "", "", "", "", "", "", clip_words(r.reason))
    t = r.timing
    speedup = f"{r.speedup:.2f}×" if r.speedup is not None else "·"
    if is_inference(r):  # against fp32 inference, not the training step
        speedup += " (inference)"
    return (
        r.name, "ok", fmt_ms(t.median), fmt_ms(t.iqr),
        human_count(t.throughput) if t.throughput else "·",
        speedup, human_bytes(r.peak_memory), quality(r, baseline), clip_words(notes(r, baseline)),
    )


