"""The live list of health findings; selecting one jumps to its module."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from workbench.engine.records import Finding, collapse_findings
from workbench.report.numbers import fmt_float
from workbench.tui import theme
from workbench.tui.session import EngineView

PHASE_SHORT = {"forward": "fwd", "loss": "loss", "backward": "bwd", "optimizer_step": "opt"}


class FindingsPanel(OptionList):
    """Newest first; a finding's module is the option id."""

    class JumpToModule(Message):
        def __init__(self, module: str, text: str = "") -> None:
            super().__init__()
            self.module = module
            self.text = text

    class Highlighted(Message):
        """The cursor is on a finding (None: on nothing); the detail pane shows it whole."""

        def __init__(self, finding: Finding | None) -> None:
            super().__init__()
            self.finding = finding

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[Finding, ...] | None = None  # None: nothing drawn yet, not even the hint

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        # What is highlighted when this is handled: the list may have been redrawn since.
        self.post_message(self.Highlighted(self.highlighted_finding))

    @property
    def highlighted_finding(self) -> Finding | None:
        """The finding under the cursor in the list as drawn now (None: none is)."""
        return self.finding_at(self.highlighted) if self.highlighted is not None else None

    def show(self, view: EngineView | None) -> None:
        # Repeats over consecutive steps are one row (s3–s9 ×7); findings that follow from
        # another (a NaN loss after NaN data) are folded under it.
        findings = tuple(reversed(collapse_findings(view.findings))) if view is not None else ()
        self.border_title = f"Findings {len(findings)}" if findings else "Findings"
        if findings == self._shown:
            return
        self._shown = findings
        highlighted = self.highlighted
        self.clear_options()
        if not findings:
            self.add_option(Option(Text("no findings yet", theme.DIM), disabled=True))
            return
        width = max(self.size.width - 4, 20)
        self.add_options(_option(i, f, width) for i, f in enumerate(findings))
        if highlighted is not None and highlighted < len(findings):
            self.highlighted = highlighted

    def finding_at(self, index: int) -> Finding | None:
        shown = self._shown or ()
        return shown[index] if 0 <= index < len(shown) else None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        finding = self.finding_at(event.option_index)
        if finding is not None and finding.module is not None:
            self.post_message(self.JumpToModule(finding.module, f"{finding.kind} on {finding.where}: {finding.message}"))


def finding_detail(f: Finding) -> Text:
    """One finding in full, wrapped by its pane: what, where, when, the numbers."""
    phase = f.phase.value
    text = Text()
    text.append(f"{theme.severity_icon(f.severity)} {f.kind}", theme.severity_style(f.severity))
    text.append(f"  {f.module or 'model'}", "bold")
    text.append(f"  {phase} · {_steps(f)}\n", theme.DIM)
    text.append(str(f.message))
    if f.value is not None and f.threshold is not None:
        text.append(f" ({fmt_float(f.value)} vs threshold {fmt_float(f.threshold)})", theme.DIM)
    for c in f.consequences:
        text.append(f"\n  → {c.kind} {c.where} {_steps(c)}: {c.message}", theme.DIM)
    return text


def _steps(f: Finding) -> str:
    """s12, or s3–s9 ×7 for a finding repeated over consecutive steps (collapsed)."""
    last = f.last_step
    count = f.count or 1
    if last is not None and last != f.step:
        return f"s{f.step}–s{last} ×{count}"
    return f"s{f.step}" + (f" ×{count}" if count > 1 else "")


def _consequences(f: Finding) -> str:
    follow = f.consequences
    if not follow:
        return ""
    kinds = sorted({c.kind for c in follow})
    return f"  → {len(follow)} following: {', '.join(kinds)}"


def _option(index: int, f: Finding, width: int) -> Option:
    phase = f.phase.value
    head = Text()
    head.append(f"{theme.severity_icon(f.severity)} ", theme.severity_style(f.severity))
    head.append(f"{f.kind} ", theme.severity_style(f.severity))
    head.append(f"{f.module or 'model'}", "bold")
    # Steps before the phase: when the row is cut, the phase goes first.
    head.append(f"  {_steps(f)} {PHASE_SHORT.get(phase, phase)}", theme.DIM)
    body = Text("  " + f.message + _consequences(f), theme.DIM)
    if f.value is not None and f.threshold is not None:
        body.append(f" ({fmt_float(f.value)} vs {fmt_float(f.threshold)})", theme.DIM)
    # Two lines per finding; Enter shows the whole message and jumps to the module.
    for line in (head, body):
        line.truncate(width, overflow="ellipsis")
    return Option(Text("\n").join([head, body]), id=f"f{index}")
