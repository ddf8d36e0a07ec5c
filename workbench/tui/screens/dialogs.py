"""Small modal screens: help, step ×k prompt, breakpoints form, log, inspector."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, OptionList, RichLog, Static
from textual.widgets.option_list import Option

from workbench.tui import theme
from workbench.tui.render import terminal_text

if TYPE_CHECKING:
    from workbench.engine.breakpoints import Breakpoint


class HelpScreen(ModalScreen[None]):
    """Every key of the main screen, from its own bindings (one source of truth)."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "close")]

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style=theme.ACCENT, no_wrap=True)
        table.add_column()
        for key, text in self.keys:
            table.add_row(key, text)
        with VerticalScroll(classes="dialog"):
            yield Label(Text("Keys", theme.ACCENT))
            yield Static(table)
            # A Static wraps at the dialog's width (a Label cut the legend off mid-sentence).
            yield Static(Text(
                "\nctrl+p opens the command palette (every action is there).\n"
                "Rows: dim = measured in an earlier step, not yet in this one; "
                "red ✖ = error finding or NaN/Inf; yellow ⚠ = warning.\n"
                "Columns: 0% = share of exact zeros in the output (dead ReLU units), ∇‖ = gradient "
                "norm, u/w = update / weight ratio of the last optimizer step.\n"
                "space folds a module; enter on a finding jumps to its module.", theme.DIM), id="help-legend")
        yield Footer()


class StepsPrompt(ModalScreen[int | None]):
    """Ask how many steps to run."""

    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog small"):
            yield Label("Run how many steps?")
            yield Input(value="10", type="integer", id="steps")
            yield Label("", id="steps-error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        try:
            steps = int(event.value)
        except ValueError:
            steps = 0
        if steps <= 0:
            self.query_one("#steps-error", Label).update(Text("a whole number above 0", theme.ERROR))
            return
        self.dismiss(steps)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class BreakpointsScreen(ModalScreen[tuple[str, ...] | None]):
    """Add and remove breakpoint conditions; returns the full list on save.

    Conditions are checked with ``Breakpoint.parse`` as they are typed in,
    so a bad one is refused here with the parser's own message.
    """

    BINDINGS = [
        Binding("escape", "dismiss_none", "cancel"),
        # ctrl+r: plain letters and delete belong to the input field.
        Binding("ctrl+r", "remove", "remove selected", priority=True),
        Binding("ctrl+s", "save", "save"),
    ]

    def __init__(self, conditions: Sequence[str], kinds: Sequence[str] = (), modules: Sequence[str] = (),
                 parameters: Sequence[str] = ()) -> None:
        super().__init__()
        self.conditions = list(conditions)
        self.kinds = list(kinds)
        # The model's module (and, once measured, parameter) names: a glob that matches none is
        # taken, and said (none: no model loaded, nothing to check against).
        self.modules = tuple(modules)
        self.parameters = tuple(parameters)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text("Breakpoints", theme.ACCENT))
            yield OptionList(id="bp-list")
            yield Input(placeholder="nan_inf · loss>5 · loss<0.05 · grad_norm>100 · step==12 · dead_units@features.*",
                        id="bp-input")
            yield Static("", id="bp-error")  # wraps a long parser message
            kinds = ", ".join(self.kinds) if self.kinds else "see the engine's finding kinds"
            # A Static wraps (a Label would cut the list at the dialog's edge).
            yield Static(Text(
                f"finding kinds: {kinds}\nkind:warning sets a minimum severity, kind@glob limits "
                "it to modules. A hit pauses before the optimizer step.", theme.DIM), id="bp-help")
            with Horizontal(classes="buttons"):
                yield Button("Add", id="bp-add", variant="primary")
                yield Button("Remove", id="bp-remove")
                yield Button("Save", id="bp-save", variant="success")
                yield Button("Cancel", id="bp-cancel")
        yield Footer()

    def on_mount(self) -> None:
        self._refresh()
        self.query_one(Input).focus()

    def _refresh(self) -> None:
        lst = self.query_one("#bp-list", OptionList)
        lst.clear_options()
        if self.conditions:
            # Text: a str prompt is markup, and a glob's [abc] would vanish as a tag.
            lst.add_options(Option(Text(c), id=f"b{i}") for i, c in enumerate(self.conditions))
        else:
            lst.add_option(Option(Text("none set", theme.DIM), disabled=True))

    def _add(self) -> bool:
        """Add the typed condition; False when it does not parse (the error is shown)."""
        from workbench.engine.breakpoints import Breakpoint

        field = self.query_one("#bp-input", Input)
        text = field.value.strip()
        if not text:
            return True
        try:
            bp = Breakpoint.parse(text)
        except Exception as exc:  # the parser's message is the user's guide
            self.query_one("#bp-error", Static).update(Text(str(exc), theme.ERROR))
            return False
        note = unmatched_glob_note(bp, self.modules, self.parameters)
        self.query_one("#bp-error", Static).update(
            Text(f"added: {bp.describe()}" + (f" · {note}" if note else ""), theme.WARNING if note else theme.OK))
        if text not in self.conditions:
            self.conditions.append(text)
        field.value = ""
        self._refresh()
        return True

    @on(Input.Submitted, "#bp-input")
    def submitted(self) -> None:
        self._add()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        {"bp-add": self._add, "bp-remove": self.action_remove, "bp-save": self.action_save,
         "bp-cancel": self.action_dismiss_none}[event.button.id or "bp-cancel"]()

    def action_remove(self) -> None:
        lst = self.query_one("#bp-list", OptionList)
        if not self.conditions:
            return
        # The highlighted one; with the list never visited, the newest.
        index = lst.highlighted if lst.highlighted is not None else len(self.conditions) - 1
        removed = self.conditions.pop(min(index, len(self.conditions) - 1))
        self.query_one("#bp-error", Static).update(Text(f"removed: {removed}", theme.WARNING))
        self._refresh()

    def action_save(self) -> None:
        # A condition typed but not yet added is what the user means to save.
        if self._add():
            self.dismiss(tuple(self.conditions))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def unmatched_glob_note(bp: Breakpoint, modules: Sequence[str], parameters: Sequence[str] = ()) -> str:
    """What to tell the user about a breakpoint whose module glob matches no module (nor
    parameter) of the model: a typo that can never fire. "" when it matches one, has no glob,
    or no model is loaded. The breakpoint is still taken: modules may appear later.

    Before the first backward the parameters' names are not known (``parameters`` empty): a
    glob's last part is then tried as a parameter of each module ("features.0.weight").
    """
    glob = bp.module_glob
    names = [n for n in modules if n]
    if not glob or not names:
        return ""
    if any(fnmatch.fnmatchcase(n, glob) for n in (*names, *parameters)):
        return ""
    tail = glob.rsplit(".", 1)[-1]
    if not parameters and "." in glob and any(fnmatch.fnmatchcase(f"{n}.{tail}", glob) for n in names):
        return ""
    close = difflib.get_close_matches(glob.rstrip("*?.") or glob, names, n=3, cutoff=0.6)
    return f"matches no module of this model (yet): {glob}" + (f"; close: {', '.join(close)}" if close else "")


class LogScreen(ModalScreen[None]):
    """Warnings and log records captured while the app ran."""

    BINDINGS = [Binding("escape,q,l", "dismiss", "close")]

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__()
        self.lines = lines

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text("Captured warnings and logs", theme.ACCENT))
            log = RichLog(wrap=True, highlight=False, markup=False)
            yield log
        yield Footer()

    def on_mount(self) -> None:
        log = self.query_one(RichLog)
        # What the scenario printed may hold escape codes (colours, a screen clear, the bell):
        # colours are kept, the rest would act on this screen, so it goes.
        for line in self.lines or ["nothing captured"]:
            log.write(terminal_text(line))


class InspectorScreen(ModalScreen[None]):
    """The inspector as a modal (used on small terminals)."""

    BINDINGS = [Binding("escape,i,q", "dismiss", "close")]

    def __init__(self, title: str, body: RenderableType) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog"):
            yield Label(Text(self.title_text, theme.ACCENT))
            yield Static(self.body)
        yield Footer()
