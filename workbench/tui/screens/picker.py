"""Pick a scenario: the bundled ones, any paths given, and the broken demos.

Listing reads the files' docstrings with ``ast`` (no import, no torch), so
the picker opens instantly; building happens on the main screen's worker.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, OptionList
from textual.widgets.option_list import Option

from workbench.scenario import ScenarioError, ScenarioSource, default_scenario_dir, discover, load_source
from workbench.tui import theme


@dataclass(frozen=True)
class PickerEntry:
    group: str
    source: ScenarioSource | None
    summary: str
    error: str | None = None

    @property
    def label(self) -> str:
        return self.source.label if self.source is not None else "?"


def picker_entries(paths: list[str]) -> list[PickerEntry]:
    """Paths given first, then the bundled scenarios, then scenarios/broken/."""
    entries: list[PickerEntry] = []
    for spec in paths:
        try:
            if Path(spec).is_dir():
                entries.extend(PickerEntry(spec, s, _summary(s)) for s in discover(spec))
            else:
                src = load_source(spec)
                entries.append(PickerEntry("given", src, _summary(src)))
        except ScenarioError as exc:
            entries.append(PickerEntry("given", None, spec, error=str(exc)))
    bundled = default_scenario_dir()
    if bundled is not None:
        given = {e.source for e in entries}
        for directory, group in ((bundled, "bundled"), (bundled / "broken", "broken demos")):
            if not directory.is_dir():
                continue
            try:
                found = discover(directory)
            except ScenarioError:
                continue
            entries.extend(PickerEntry(group, s, _summary(s)) for s in found if s not in given)
    return entries


def _summary(source: ScenarioSource) -> str:
    """First line of the build function's docstring, else of the module's."""
    if source.path is None:
        return source.spec
    try:
        tree = ast.parse(Path(source.path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        return f"(cannot read: {exc})"
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == source.function:
            doc = ast.get_docstring(node)
            if doc:
                return doc.strip().splitlines()[0]
    doc = ast.get_docstring(tree)
    return doc.strip().splitlines()[0] if doc else ""


class PickerScreen(ModalScreen[ScenarioSource | None]):
    """Enter loads the highlighted scenario; Escape keeps the current one."""

    BINDINGS = [
        Binding("escape", "dismiss_none", "back"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, entries: list[PickerEntry], current: ScenarioSource | None = None) -> None:
        super().__init__()
        self.entries = entries
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Label(Text("Pick a scenario", theme.ACCENT), id="picker-title")
            yield OptionList(*self._options(), id="picker-list")
            yield Label(Text("enter load · esc back · q quit   "
                             "(workbench tui PATH.py opens your own file)", theme.DIM))
        yield Footer()

    def _options(self) -> list[Option | None]:
        options: list[Option | None] = []
        group = None
        for i, e in enumerate(self.entries):
            if e.group != group:
                group = e.group
                options.append(Option(Text(group, "bold underline"), disabled=True))
            text = Text(no_wrap=True, overflow="ellipsis")
            text.append(f"{e.label:<28}", theme.ERROR if e.error else "bold")
            summary = e.error.splitlines()[0] if e.error else e.summary
            if len(summary) > 64:  # one line per scenario
                summary = summary[:63] + "…"
            text.append(" " + summary, theme.DIM)
            options.append(Option(text, id=f"e{i}", disabled=e.error is not None))
        return options

    def on_mount(self) -> None:
        lst = self.query_one(OptionList)
        lst.focus()
        for index in range(lst.option_count):
            option = lst.get_option_at_index(index)
            if option.disabled or option.id is None:
                continue
            entry = self.entries[int(option.id[1:])]
            if self.current is None or entry.source == self.current:
                lst.highlighted = index
                break

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.dismiss(self.entries[int(event.option.id[1:])].source)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
