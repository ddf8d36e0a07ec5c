"""Pure text renderers (sparklines, histograms, heat cells, meters).

No Textual here: each function turns numbers into a rich ``Text`` so widgets
stay thin and the look is testable without an app.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from rich.text import Text

from workbench.tui import theme

BARS = "▁▂▃▄▅▆▇█"
# What is left after the ANSI decoder: C0/C1 controls (bell, backspace, a lone ESC), DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
SHADES = " ░▒▓█"


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def sparkline(values: Sequence[float | None], width: int, log: bool = False) -> Text:
    """The last ``width`` values as block characters; non-finite ones as a red ✖."""
    values = list(values)[-width:] if width > 0 else []
    text = Text()
    finite = _finite(values)
    if log:
        finite = [math.log10(v) for v in finite if v > 0]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    for v in values:
        if v is None:
            text.append("·", theme.DIM)
        elif not math.isfinite(v):
            text.append("✖", theme.ERROR)
        else:
            x = math.log10(v) if log and v > 0 else (lo if log else v)
            frac = 0.5 if hi == lo else (x - lo) / (hi - lo)
            text.append(BARS[min(int(frac * (len(BARS) - 1) + 0.5), len(BARS) - 1)], theme.INFO)
    return text


def histogram(counts: Sequence[int], style: str = theme.INFO) -> Text:
    """Bin counts as one row of bars; empty bins stay blank so gaps show."""
    text = Text()
    top = max(counts) if counts else 0
    for c in counts:
        if top == 0 or c == 0:
            text.append(" ")
        else:
            text.append(BARS[min(int(c / top * (len(BARS) - 1) + 0.999), len(BARS) - 1)], style)
    return text


def heat_cell(value: float | None, lo: float, hi: float) -> Text:
    """One cell of the grad-norm heat strip, on a log scale between lo and hi."""
    if value is None:
        return Text("·", theme.DIM)
    if not math.isfinite(value):
        return Text("✖", theme.ERROR)
    if value <= 0:
        return Text(" ")
    if hi <= lo:
        frac = 0.5
    else:
        frac = (math.log10(value) - lo) / (hi - lo)
    idx = max(1, min(int(frac * (len(SHADES) - 2) + 1.5), len(SHADES) - 1))
    style = theme.WARNING if frac > 0.9 else theme.INFO
    return Text(SHADES[idx], style)


def meter(fraction: float, width: int, style: str = theme.INFO) -> Text:
    """A horizontal bar ▕████▍   ▏ filled to ``fraction`` (clamped to 0..1)."""
    eighths = "▏▎▍▌▋▊▉█"
    fraction = max(0.0, min(1.0, fraction)) if math.isfinite(fraction) else 0.0
    cells = fraction * width
    full = int(cells)
    rest = int((cells - full) * 8)
    bar = "█" * full + (eighths[rest - 1] if rest and full < width else "")
    text = Text("▕", theme.DIM)
    text.append(bar.ljust(width), style)
    text.append("▏", theme.DIM)
    return text


def shape_str(shape: Sequence[int] | None, batch_size: int = 0) -> str:
    """64×30×30 for (N, 64, 30, 30) in a batch of N: the batch dimension is dropped.

    A shape whose first dimension is not the batch's is shown whole: a time-major LSTM's
    (T, N, H), a position embedding's (T, D). With the batch size unknown (0), the first
    dimension is taken for the batch's.
    """
    if shape is None:
        return "·"
    batched = len(shape) > 1 and (batch_size <= 0 or shape[0] == batch_size)
    dims = list(shape)[1:] if batched else list(shape)
    return "×".join(str(d) for d in dims) if dims else "scalar"


def terminal_text(line: str) -> Text:
    """One line a program wrote to its terminal, as a ``Text`` safe to draw inside a widget.

    Colours (SGR) are kept; cursor moves, screen clears, titles and the bell are dropped, and
    a carriage return keeps what the line shows last (a progress bar's final state). Written
    raw, such a line clears or scrolls the app's own screen; as markup, ``[/x]`` raises.
    """
    text = Text.from_ansi(last_overwrite(line).expandtabs(4))
    text.end = ""  # from_ansi ends its lines with a newline: this is one line, not a paragraph
    # Controls the decoder let through, last first so the earlier positions stay valid.
    for match in reversed(list(_CONTROL.finditer(text.plain))):
        text = text[:match.start()] + text[match.end():]
    return text


def last_overwrite(line: str) -> str:
    """What a line that rewrites itself with carriage returns shows last (tqdm's final bar)."""
    if "\r" not in line:
        return line
    shown = [part for part in line.split("\r") if part.strip()]
    return shown[-1] if shown else ""


def terminal_plain(line: str) -> str:
    """``terminal_text`` without its colours: for a toast, or a title."""
    return terminal_text(line).plain
