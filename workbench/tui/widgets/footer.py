"""The main screen's key line: every key, fitted to the width, `?` and `q` always named.

Textual's Footer cuts the line at the screen's edge, so at 80 columns the last
keys (help, quit) were the ones lost. Here the line is fitted instead: keys
lose their words from the least used up (the key itself stays), and `? help`
and `q quit` are always shown in full.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import Static

from workbench.tui import theme

KEEP = frozenset({"?", "q"})  # always shown with their words
GAP = "  "


def fit_keys(items: Sequence[tuple[str, str]], width: int, strip_order: Sequence[str]) -> list[tuple[str, str]]:
    """(key, words) pairs that fit in ``width`` cells.

    Words are dropped in ``strip_order`` (least needed first); keys are dropped
    from the end only when even the bare keys do not fit, never ``?`` or ``q``.
    """
    shown = list(items)

    def length(pairs: Sequence[tuple[str, str]]) -> int:
        return sum(len(k) + (len(t) + 1 if t else 0) for k, t in pairs) + len(GAP) * max(len(pairs) - 1, 0) + 1

    for key in strip_order:
        if length(shown) <= width:
            return shown
        shown = [(k, "" if k == key and k not in KEEP else t) for k, t in shown]
    while length(shown) > width:
        droppable = [i for i, (k, _) in enumerate(shown) if k not in KEEP]
        if not droppable:
            break
        del shown[droppable[-1]]
    return shown


class KeyFooter(Static):
    """One line of keys; the screen sets ``items`` and the strip order once."""

    DEFAULT_CSS = "KeyFooter { height: 1; background: $panel; }"

    def __init__(self, items: Sequence[tuple[str, str]], strip_order: Sequence[str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.items = list(items)
        self.strip_order = list(strip_order)

    def on_resize(self) -> None:
        self.refresh_keys()

    def on_mount(self) -> None:
        self.refresh_keys()

    def refresh_keys(self) -> None:
        width = self.size.width or 120
        line = Text(" ", no_wrap=True, overflow="crop")
        for i, (key, words) in enumerate(fit_keys(self.items, width, self.strip_order)):
            if i:
                line.append(GAP)
            line.append(key, theme.ACCENT)
            if words:
                line.append(" " + words, theme.DIM)
        self.update(line)
