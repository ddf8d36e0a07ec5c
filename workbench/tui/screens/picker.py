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
from textual.widgets import Footer, Label, OptionList, Static
from textual.widgets.option_list import Option

from workbench.scenario import (
    ScenarioError,
    ScenarioSource,
    default_scenario_dir,
    discover,
    discover_all,
    load_source,
)
from workbench.scenario.loader import parse_source, read_source
from workbench.tui import theme


@dataclass(frozen=True)
class PickerEntry:
    group: str
    source: ScenarioSource | None
    summary: str  # the Scenario's description when the file states it, else its docstring's first line
    error: str | None = None
    details: str = ""  # the module docstring: what the scenario is, and for the broken demos what to look for
    name: str = ""  # the label when there is no source (a file the directory's discovery passed over)

    @property
    def label(self) -> str:
        return self.source.label if self.source is not None else (self.name or "?")


def picker_entries(paths: list[str]) -> list[PickerEntry]:
    """Paths given first, then the bundled scenarios, then scenarios/broken/."""
    entries: list[PickerEntry] = []
    for spec in paths:
        try:
            if Path(spec).is_dir():
                found = discover_all(spec)
                if not found.sources:
                    discover(spec)  # raises "no scenario files found", naming what was skipped
                entries.extend(_entry(spec, s) for s in found.sources)
                # As `workbench list` names them: a file that is not a scenario does not vanish unseen.
                entries.extend(PickerEntry(spec, None, skip.path, error=f"skipped: {skip.reason}",
                                           name=Path(skip.path).stem) for skip in found.skipped)
            else:
                entries.append(_entry("given", load_source(spec)))
        except ScenarioError as exc:
            entries.append(PickerEntry("given", None, spec, error=str(exc)))
    bundled = default_scenario_dir()
    if bundled is not None:
        given = {e.source for e in entries}
        for directory, group in ((bundled, "bundled"), (bundled / "broken", "broken demos")):
            if not directory.is_dir():
                continue
            try:
                bundled_found = discover(directory)
            except ScenarioError:
                continue
            entries.extend(_entry(group, s) for s in bundled_found if s not in given)
    return entries


def _entry(group: str, source: ScenarioSource) -> PickerEntry:
    if source.path is None:
        return PickerEntry(group, source, source.spec)
    try:
        tree = parse_source(read_source(Path(source.path)), source.path)
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        return PickerEntry(group, source, f"(cannot read: {exc})")
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    build = functions.get(source.function or "build")
    module_doc = _plain(ast.get_docstring(tree) or "")
    summary = (build is not None and _description(build, functions)) or ""
    if not summary and build is not None:
        summary = _plain(ast.get_docstring(build) or "").split("\n", 1)[0]
    if not summary and source.function != "build":
        # Never the same line as the plain build's: say which variant this is.
        summary = f"variant {source.function}(): {module_doc.split(chr(10), 1)[0]}"
    return PickerEntry(group, source, summary or module_doc.split("\n", 1)[0], details=module_doc)


def _description(build: ast.FunctionDef, functions: dict[str, ast.FunctionDef]) -> str | None:
    """The ``description=`` the build function passes, when it is a literal in the file.

    Read with ``ast`` (no import, no torch). Found directly in a call
    (``Scenario(..., description="...")``) or one helper call deep
    (``_scenario(device, model, "name", "the description")`` where the
    helper's parameter is called ``description``); anything computed is
    left to the docstring.
    """
    for node in ast.walk(build):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "description" and _is_text(kw.value):
                return kw.value.value  # type: ignore[attr-defined]
        helper = functions.get(node.func.id) if isinstance(node.func, ast.Name) else None
        if helper is None:
            continue
        params = [a.arg for a in helper.args.posonlyargs + helper.args.args]
        if "description" in params:
            at = params.index("description")
            if at < len(node.args) and _is_text(node.args[at]):
                return node.args[at].value  # type: ignore[attr-defined]
        # The helper picks the text itself from what it is passed
        # (``description="A" if sigmoid else "B"`` with ``_scenario(device, sigmoid=False)``).
        bound: dict[str, object] = {p: a.value for p, a in zip(params, node.args) if isinstance(a, ast.Constant)}
        bound.update({kw.arg: kw.value.value for kw in node.keywords
                      if kw.arg is not None and isinstance(kw.value, ast.Constant)})
        for inner in ast.walk(helper):
            if isinstance(inner, ast.Call):
                for kw in inner.keywords:
                    if kw.arg == "description":
                        text = _static_text(kw.value, bound)
                        if text:
                            return text
    return None


def _static_text(node: ast.AST, bound: dict[str, object]) -> str | None:
    """A string literal, or a conditional between literals on a parameter bound to a constant."""
    if _is_text(node):
        return node.value  # type: ignore[attr-defined]
    if isinstance(node, ast.IfExp):
        test = node.test
        negate = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
        if negate:
            test = test.operand  # type: ignore[attr-defined]
        if isinstance(test, ast.Name) and test.id in bound:
            chosen = bool(bound[test.id]) != negate
            return _static_text(node.body if chosen else node.orelse, bound)
    return None


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and bool(node.value.strip())


def _plain(doc: str) -> str:
    """A docstring as the picker shows it: ``code`` marks dropped, paragraphs reflowed to the width."""
    paragraphs = [" ".join(p.split()) for p in doc.replace("``", "").split("\n\n")]
    return "\n".join(p for p in paragraphs if p)


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
            yield Static("", id="picker-details")
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
            text.append(" " + summary, theme.DIM)  # one line per scenario: no_wrap ends it with …
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

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        details = self.query_one("#picker-details", Static)
        if event.option.id is None:
            details.update("")
            return
        entry = self.entries[int(event.option.id[1:])]
        text = Text(f"{entry.label}: ", "bold")
        text.append(entry.error or entry.details or entry.summary, theme.ERROR if entry.error else "")
        details.update(text)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.dismiss(self.entries[int(event.option.id[1:])].source)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
