"""The workbench App: screens, the command palette, captured warnings.

``create_app`` is the one factory the CLI and the tests share.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from textual import events, on
from textual.app import App, SystemCommand
from textual.screen import Screen

from workbench.scenario import ScenarioSource
from workbench.tui import messages as msg
from workbench.tui.render import last_overwrite, terminal_plain
from workbench.tui.screens.main import ACTIONS, MainScreen
from workbench.tui.screens.picker import PickerScreen, picker_entries

if TYPE_CHECKING:
    from workbench.session.transport import ClientConnection, ReplayConnection

    # (target, token, open connection or None): a session another process hosts.
    AttachTo = tuple[str, str | None, ClientConnection | ReplayConnection | None]


class _LogHandler(logging.Handler):
    """Log records (torch's included) go to the app's log, not over the screen."""

    def __init__(self, app: WorkbenchApp) -> None:
        super().__init__(logging.WARNING)
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        self.app.capture(f"{record.levelname} {record.name}: {record.getMessage()}")


OUTPUT_LINE_LIMIT = 2000  # characters kept of one printed line (a megabyte print stays bounded)


class _OutputCapture:
    """What user code prints (stdout and stderr, any thread), line by line into the log.

    Textual redirects ``sys.stdout``/``sys.stderr`` while the app runs and
    hands every write to the ``post_message`` of each registered capture
    target. This target is no widget: it keeps the text itself, so a scenario
    printing in a tight loop does not flood the UI's message queue.
    """

    def __init__(self, app: WorkbenchApp) -> None:
        self.app = app
        self._partial = {False: "", True: ""}
        self._lock = threading.Lock()

    def post_message(self, event: events.Print) -> bool:
        stderr = event.stderr
        with self._lock:
            *lines, rest = (self._partial[stderr] + event.text).split("\n")
            self._partial[stderr] = rest[-OUTPUT_LINE_LIMIT:]
        for line in lines:
            self.app.capture_output(line, stderr)
        return True


class WorkbenchApp(App[None]):
    """The interactive stepping workbench."""

    CSS_PATH = "styles/workbench.tcss"
    TITLE = "torch workbench"

    def __init__(self, specs: Sequence[str] = (), device: str = "auto", show_volatile: bool = True,
                 attach: AttachTo | None = None) -> None:
        super().__init__()
        self.specs = list(specs)
        # (target, token, open connection or None): show that session instead of a scenario.
        self.attach_to = attach
        self.device = device
        self.show_volatile = show_volatile
        self.logbook: deque[str] = deque(maxlen=500)
        self._saved_showwarning: Callable[..., None] | None = None
        self._log_handler = _LogHandler(self)
        self._warned = False
        self._output_seen = False
        self._output = _OutputCapture(self)
        # Set when the app has unmounted: the CLI's exit watchdog waits on it.
        self.closed = threading.Event()
        self._main_screen: MainScreen | None = None  # made with the default screen

    def get_default_screen(self) -> Screen:
        self._main_screen = MainScreen(self.device, self.show_volatile)
        return self._main_screen

    @property
    def main(self) -> MainScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, MainScreen)
        return screen

    def on_mount(self) -> None:
        self._saved_showwarning = warnings.showwarning
        warnings.showwarning = self._showwarning
        logging.getLogger().addHandler(self._log_handler)
        # print() in the user's scenario would otherwise vanish ("nothing captured" under l).
        self.begin_capture_print(self._output, stdout=True, stderr=True)  # type: ignore[arg-type]

    def begin(self) -> None:
        """Open the scenario given on the command line, or the picker (main screen is mounted)."""
        single = len(self.specs) == 1 and not Path(self.specs[0]).is_dir()
        if self.attach_to is not None:
            self.main.attach(*self.attach_to)
        elif single:
            self.main.load_spec(self.specs[0])
        else:
            self.main.queue.clear()  # keys pressed before the picker opened step nothing
            self.action_pick_scenario()

    def on_unmount(self) -> None:
        if self._saved_showwarning is not None:
            warnings.showwarning = self._saved_showwarning
        logging.getLogger().removeHandler(self._log_handler)
        main = self._main_screen  # the screen stack may be empty by now
        if main is not None:
            main.end_session()  # the scenario's process ends with the app, whatever it is doing
        self.closed.set()

    # -- warnings and logs ------------------------------------------------------------
    def _showwarning(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: TextIO | None = None, line: str | None = None) -> None:
        # May run on a worker thread: capture() only appends and posts.
        self.capture(f"{category.__name__}: {message} ({Path(filename).name}:{lineno})")

    @property
    def stopped_running_code(self) -> bool:
        """A quit had to kill the scenario's process while its code ran (the CLI says so)."""
        main = self._main_screen  # kept: the stack is empty once the app ended
        return main is not None and main.stopped_running_code

    def capture_output(self, line: str, stderr: bool) -> None:
        """One line the scenario printed (runs on the session's output thread, or a worker)."""
        # A progress bar's carriage returns go before the stream's name is put in front of it.
        line = last_overwrite(line)
        self.logbook.append(f"{'stderr' if stderr else 'stdout'}: {line[:OUTPUT_LINE_LIMIT]}")
        if not self._output_seen:  # one toast for the first line, not a message per line
            self._output_seen = True
            # Shown plain: a printed escape code would act on the app's own screen.
            self.post_message(msg.LogLine(f"the scenario printed: {terminal_plain(line[:OUTPUT_LINE_LIMIT])[:120]}"))

    def capture(self, text: str) -> None:
        self.logbook.append(text)
        self.post_message(msg.LogLine(text))

    @on(msg.LogLine)
    def log_line(self, message: msg.LogLine) -> None:
        if not self._warned:
            self._warned = True
            # markup=False: the text is the user's ("files: [/data/a.csv]" is no closing tag).
            self.notify(f"{terminal_plain(message.text)[:120]}\n(l shows everything captured: output, warnings, "
                        "logs)", title="captured", severity="warning", markup=False)

    # -- scenario picker ------------------------------------------------------------------
    def action_pick_scenario(self) -> None:
        current = self.main.session.source if self.main.session is not None else None

        def picked(source: ScenarioSource | None) -> None:
            if source is not None:
                self.main.load(source)

        self.push_screen(PickerScreen(picker_entries(self.specs), current), picked)

    # -- command palette --------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        main = self.main
        for a in ACTIONS:
            if a.action == "quit":
                continue
            yield SystemCommand(a.title.capitalize() if a.title[0].islower() else a.title,
                                f"{a.help}  [{a.key if a.key != 'question_mark' else '?'}]",
                                getattr(main, f"action_{a.action}"))


def create_app(specs: Sequence[str] = (), device: str = "auto", show_volatile: bool = True,
               attach: str | None = None, token: str | None = None,
               connection: ClientConnection | ReplayConnection | None = None) -> WorkbenchApp:
    """The app the CLI runs; tests build theirs the same way. ``attach``: a session's RUN_DIR,
    HOST:PORT or unix:PATH to show (``connection``: one already open to it)."""
    return WorkbenchApp(specs, device=device, show_volatile=show_volatile,
                        attach=None if attach is None else (attach, token, connection))
