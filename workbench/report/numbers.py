"""Number formatting shared by the rich tables and the TUI (pure functions)."""

from __future__ import annotations

import math


def human_count(n: float) -> str:
    """1234 -> '1.23 K', 1_150_000 -> '1.15 M'; exact below 1000."""
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n):,}" if n == int(n) else f"{n:.3g}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "·"
    n = float(n)
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_float(x: float | None, digits: int = 3) -> str:
    """Compact float: '·' for missing, 'nan'/'inf' spelled out, sci for tiny/huge."""
    if x is None:
        return "·"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    ax = abs(x)
    if ax < 1e-3 or ax >= 1e5:
        return f"{x:.{max(digits - 2, 0)}e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{x:.{digits}g}"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "·"
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"
