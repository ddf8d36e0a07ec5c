"""Interval arithmetic on half-open [start, end) spans in trace microseconds.

The step breakdown claims time category by category; these helpers make sure
overlapping events (nested ops, concurrent kernels on two streams) are
counted once, and that a later category only gets what earlier ones left.
Every function takes and returns lists of (start, end) sorted by start,
non-overlapping ("normalised") except ``merge``, which accepts anything.
"""

from __future__ import annotations

from collections.abc import Iterable

Span = tuple[float, float]


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sort and fuse overlapping or touching spans; drops empty ones."""
    out: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def intersect(a: list[Span], b: list[Span]) -> list[Span]:
    """Time covered by both normalised lists."""
    out: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        # advance whichever ends first; the other may still overlap the next one
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[Span], b: list[Span]) -> list[Span]:
    """Time in ``a`` not covered by ``b`` (both normalised)."""
    out: list[Span] = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            if cur >= end:
                break
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


def total(spans: Iterable[Span]) -> float:
    return sum(end - start for start, end in spans)
