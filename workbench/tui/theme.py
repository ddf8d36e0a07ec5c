"""Colours that carry meaning, shared by every screen (bench and profile too).

Green healthy, yellow warning, red error, dim for "not measured yet". Rich
style strings, so they work in `Text` and in Textual markup alike.
"""

from __future__ import annotations

OK = "green"
WARNING = "yellow"
ERROR = "bold red"
INFO = "cyan"
DIM = "grey50"
ACCENT = "bold cyan"
NEXT = "bold yellow"
FLASH = "bold black on yellow"  # a number the last phase changed (briefly)

SEVERITY_STYLE = {"error": ERROR, "warning": WARNING, "info": INFO}
SEVERITY_ICON = {"error": "✖", "warning": "⚠", "info": "ℹ"}
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


def severity_style(severity: str | None) -> str:
    return SEVERITY_STYLE.get(severity or "", "")


def severity_icon(severity: str | None) -> str:
    return SEVERITY_ICON.get(severity or "", " ")


def worst(severities: list[str]) -> str | None:
    """The most serious severity in the list (None when empty)."""
    if not severities:
        return None
    return max(severities, key=lambda s: SEVERITY_RANK.get(s, -1))
