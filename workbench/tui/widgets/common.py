"""Widgets shared by every screen (bench and profile screens reuse these)."""

from __future__ import annotations


from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, ProgressBar, Static

from workbench.tui import theme
from workbench.tui.jobs import failure_text  # noqa: F401 - where the screens took it from


# The message's share of the panel's title (a traceback in the details below ends with all of it).
TITLE_LINES = 3
TITLE_CHARS = 360


def error_title(title: str) -> Text:
    """The panel's title: the message, wrapped and bounded, then where it was raised on a line
    of its own, so the file:line (the part that matters) is never cut off at the screen's edge."""
    message, sep, where = title.rpartition("  (at ")  # format_error's "… (at path:12 in forward)"
    if not sep or not where.endswith(")"):
        message, where = title, ""
    lines = message.rstrip().splitlines() or [""]
    short = "\n".join(lines[:TITLE_LINES])
    if len(lines) > TITLE_LINES or len(short) > TITLE_CHARS:
        short = short[:TITLE_CHARS] + "…"
    text = Text(short)
    if where:
        text.append(f"\nat {where[:-1]}")
    return text


class ErrorPanel(Vertical):
    """A traceback the user's code raised; hidden until there is one.

    The app keeps running: the panel says what to do next with the keys of the
    screen it is on (``hint``; None: the screen's own bindings, "esc back · r profile
    again" on the profile screen) and Escape hides it.
    """

    DEFAULT_CSS = """
    ErrorPanel { display: none; border: heavy $error; height: auto; max-height: 14; }
    ErrorPanel.shown { display: block; }
    ErrorPanel > #error-title { color: $error; text-style: bold; width: 100%; }
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
        self.query_one("#error-title", Label).update(error_title(title))
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
