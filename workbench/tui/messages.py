"""Every message a worker thread (or the session's pump) sends to the UI, in one place.

Workers never touch widgets or reactives: they ``post_message`` one of these
small frozen payloads (``post_message`` is thread-safe) and the screen's
handlers update the widgets on the UI thread. Latest-value messages say so
in ``can_replace`` so a burst collapses into the newest state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

from workbench.tui.session import EngineView, InspectorData, RunSummary, Session

if TYPE_CHECKING:  # annotations only: the main screen need not load bench/profiling
    from workbench.bench.results import BenchRun, VariantResult
    from workbench.bench.runner import BenchProgress
    from workbench.profiling.capture import ProfileRun
    from workbench.profiling.runs import RunAnalysis


@dataclass
class ScenarioLoading(Message):
    """A loading stage began ("loading torch…", "building the scenario…")."""

    label: str
    stage: str


@dataclass
class ScenarioLoaded(Message):
    """The engine is ready on a freshly built scenario."""

    view: EngineView


@dataclass
class ScenarioFailed(Message):
    """Building the scenario raised; the text is what the error panel shows."""

    label: str
    title: str
    details: str


@dataclass
class EngineUpdated(Message):
    """The engine's latest state: after a phase, a step, or a throttled tick of a run."""

    view: EngineView

    def can_replace(self, message: Message) -> bool:
        # Only the newest state matters; an older one still queued is dropped.
        return isinstance(message, EngineUpdated)


@dataclass
class WorkDone(Message):
    """A command finished (always sent last, after the final EngineUpdated).

    ``request`` is the id the session gave the command; a reply to one the
    screen is not waiting for (breakpoints sent with a load) only updates the view.
    """

    view: EngineView | None
    summary: RunSummary | None = None
    request: int | None = None
    note: str | None = None  # what the command did, in words (a rewind says where it went)
    warning: bool = False  # the note says why it changed nothing


@dataclass
class StepFailed(Message):
    """The user's code raised inside a phase; the engine is still usable."""

    title: str
    details: str
    view: EngineView | None
    failed_step: int | None = None  # the step that raised (the engine has moved on to the next)


@dataclass
class HostLost(Message):
    """The process running the scenario ended on its own (os._exit, a crash, a signal)."""

    title: str
    details: str


@dataclass
class HostBusy(Message):
    """A command has had no news from the scenario's process for a while: how long, and where
    its main thread is ("file:line in func"; None when it could not be read)."""

    doing: str
    seconds: float
    where: str | None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HostBusy)


@dataclass
class HostEnded(Message):
    """An attached session's host said it ended (or the connection to it was lost)."""

    session: Session
    text: str


@dataclass
class InspectorReady(Message):
    """Histograms and stats of the selected module."""

    data: InspectorData

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, InspectorReady)


@dataclass
class LogLine(Message):
    """A warning or log record captured instead of drawing over the screen."""

    text: str


# -- benchmarks and profiles (BenchScreen, ProfileScreen) ----------------------------------


@dataclass
class BenchTick(Message):
    """Progress inside a variant; only the newest matters."""

    progress: BenchProgress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, BenchTick)


@dataclass
class BenchRowDone(Message):
    result: VariantResult
    index: int
    count: int


@dataclass
class BenchFinished(Message):
    run: BenchRun


@dataclass
class ProfileProgress(Message):
    """Profiled steps so far; only the newest matters."""

    done: int
    total: int
    status: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ProfileProgress)


@dataclass
class ProfileReady(Message):
    run: ProfileRun
    analysis: RunAnalysis


@dataclass
class JobFailed(Message):
    """A benchmark or profile job raised: a one-line title and the traceback."""

    title: str
    details: str
