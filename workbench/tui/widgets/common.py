"""Widgets shared by every screen (bench and profile screens reuse these)."""

from __future__ import annotations

import sys
import traceback

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, ProgressBar, Static

from workbench.tui import theme


class ErrorPanel(Vertical):
    """A traceback the user's code raised; hidden until there is one.

    The app keeps running: the panel says what to do next with the keys of the
    screen it is on (``hint``; None: the screen's own bindings, "esc back · r profile
    again" on the profile screen) and Escape hides it.
    """

    DEFAULT_CSS = """
    ErrorPanel { display: none; border: heavy $error; height: auto; max-height: 14; }
    ErrorPanel.shown { display: block; }
    ErrorPanel > #error-title { color: $error; text-style: bold; }
    ErrorPanel > VerticalScroll { height: auto; max-height: 10; }
    """

    def __init__(self, hint: str | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.hint = hint

    def compose(self) -> ComposeResult:
        yield Label("", id="error-title")
        with VerticalScroll():
            yield Static("", id="error-details")
        yield Label("", id="error-hint")

    def show_error(self, title: str, details: str) -> None:
        self.border_title = "Error"
        self.query_one("#error-title", Label).update(Text(title))
        self.query_one("#error-details", Static).update(Text(details.rstrip()))
        self.query_one("#error-hint", Label).update(Text(self._hint(), theme.DIM))
        self.add_class("shown")
        # The user's frame and the exception are at the end of a traceback.
        self.call_after_refresh(self.query_one(VerticalScroll).scroll_end, animate=False)

    def _hint(self) -> str:
        """The keys that work here: the screen's own bindings, unless the screen said."""
        if self.hint is not None:
            return self.hint
        keys = []
        for binding in self.screen.BINDINGS:
            if isinstance(binding, Binding) and binding.description:
                key = binding.key.split(",")[0]
                keys.append(f"{'esc' if key == 'escape' else key} {binding.description}")
        return " · ".join(keys)

    def hide(self) -> None:
        self.remove_class("shown")

    @property
    def shown(self) -> bool:
        return self.has_class("shown")


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
        message = f"{type(original).__name__}: {original}"
    else:
        from workbench.errors import user_frames

        original = exc.__cause__ or exc
        lines = []
        mine = user_frames(original)
        frames = "".join(traceback.format_list(mine)) if mine else "".join(traceback.format_tb(original.__traceback__))
        message = str(original) or type(original).__name__
        if type(original).__name__ not in message:
            message = f"{type(original).__name__}: {message}"
    first, _, rest = message.partition("\n")
    title = f"{what} failed: {first}"
    details = "\n".join([*([rest.strip()] if rest.strip() else []), *lines])
    if frames:
        details += ("\n\n" if details else "") + "Traceback (your code):\n" + frames.rstrip()
    return title, details


class ProgressPanel(Vertical):
    """A titled progress bar with a status line, for long worker jobs."""

    DEFAULT_CSS = """
    ProgressPanel { height: auto; border: round $primary; padding: 0 1; }
    ProgressPanel > ProgressBar { width: 1fr; }
    """

    def __init__(self, title: str = "Progress", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.border_title = title

    def compose(self) -> ComposeResult:
        yield ProgressBar(total=None, show_eta=False)
        yield Label("", id="progress-status")

    def set_progress(self, done: float, total: float | None, status: str = "") -> None:
        self.query_one(ProgressBar).update(total=total, progress=done)
        self.query_one("#progress-status", Label).update(Text(status))  # may name the user's variant
