"""Compare two bench runs variant by variant (for CI regression gating).

A row is slower (a regression) only when both hold: its median step time rose by
more than the threshold, and the raw samples say the rise is real, not noise
(a two-sided Mann-Whitney U test on the two sample sets, p < ALPHA). A change past
the threshold that the test cannot tell from noise is "noisy" (not comparable,
with the reason) and never fails the gate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from workbench.bench.results import BenchRun

Verdict = Literal["faster", "slower", "same", "noisy", "regressed", "fixed", "new", "gone", "not comparable"]

ALPHA = 0.05  # significance level of the samples test
EXACT_MAX = 30  # samples per side up to which the exact U distribution is used


@dataclass(frozen=True)
class Change:
    name: str
    verdict: Verdict
    old_s: float | None  # median seconds per step
    new_s: float | None
    change: float | None  # (new - old) / old: +0.12 is 12 % slower
    note: str = ""
    p_value: float | None = None  # Mann-Whitney U, two-sided, on the raw samples


@dataclass(frozen=True)
class Comparison:
    old: BenchRun
    new: BenchRun
    threshold: float  # fraction, 0.10 = 10 %
    changes: tuple[Change, ...]
    notes: tuple[str, ...]

    @property
    def regressions(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.verdict in ("slower", "regressed"))


def compare_runs(old: BenchRun, new: BenchRun, threshold: float = 0.10) -> Comparison:
    """Per-variant change in median step time; slower than ``threshold`` is a regression.

    A variant that ran before and fails now is a regression too; skipped rows
    and rows present on one side only are listed, never gated.
    """
    notes = []
    if old.scenario != new.scenario:
        notes.append(f"different scenarios: {old.scenario} vs {new.scenario}")
    if old.hardware.summary() != new.hardware.summary():
        notes.append(f"different machines: {old.hardware.summary()} | {new.hardware.summary()}")
    if old.device != new.device:
        notes.append(f"different devices: {old.device} vs {new.device}")
    names = [r.name for r in old.results] + [r.name for r in new.results if old.get(r.name) is None]
    changes = []
    for name in names:
        a, b = old.get(name), new.get(name)
        if a is None:
            changes.append(Change(name, "new", None, _median(b), None))
        elif b is None:
            changes.append(Change(name, "gone", _median(a), None, None))
        elif a.ok and b.status == "failed":
            changes.append(Change(name, "regressed", _median(a), None, None, f"now fails: {b.reason}"))
        elif not (a.ok and b.ok and a.timing and b.timing):
            note = f"{a.status} → {b.status}"
            verdict: Verdict = "fixed" if b.ok and a.status == "failed" else "not comparable"
            changes.append(Change(name, verdict, _median(a), _median(b), None, note))
        else:
            changes.append(_timed_change(name, a.timing.samples, b.timing.samples, threshold))
    return Comparison(old, new, threshold, tuple(changes), tuple(notes))


def _timed_change(name: str, old: Sequence[float], new: Sequence[float], threshold: float) -> Change:
    import statistics

    a, b = statistics.median(old), statistics.median(new)
    change = (b - a) / a
    p = mann_whitney_p(old, new)
    if abs(change) <= threshold:
        return Change(name, "same", a, b, change, p_value=p)
    if p < ALPHA:
        return Change(name, "slower" if change > 0 else "faster", a, b, change, f"p = {p:.3g}", p)
    if min(len(old), len(new)) < 4:
        why = (f"too few samples ({len(old)} vs {len(new)}) to tell a {abs(change):.0%} change from noise; "
               "time more steps (--steps 10)")
    else:
        why = (f"the samples overlap (p = {p:.2f} >= {ALPHA:g}): a {abs(change):.0%} change of the median "
               "that the spread of the samples can explain; re-run on a quiet machine")
    return Change(name, "noisy", a, b, change, f"noisy, not comparable: {why}", p)


def mann_whitney_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test: could ``x`` and ``y`` come from one distribution?

    Ties get mid-ranks. Up to EXACT_MAX samples per side the exact distribution of U
    (every ordering of the pooled samples equally likely) is used, rounding a tied,
    half-integer U towards the centre (conservative); beyond that the normal
    approximation with tie and continuity corrections.
    """
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        return 1.0
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks = [0.0] * len(pooled)
    ties = []
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        ties.append(j - i + 1)
        i = j + 1
    u = sum(r for r, (_, side) in zip(ranks, pooled) if side == 0) - m * (m + 1) / 2
    if max(m, n) <= EXACT_MAX:
        counts = _u_counts(m, n)
        total = sum(counts)
        low = sum(counts[: math.ceil(u) + 1]) / total  # P(U <= u)
        high = sum(counts[math.floor(u):]) / total  # P(U >= u)
        return min(1.0, 2 * min(low, high))
    big = m + n
    tie_term = sum(t ** 3 - t for t in ties) / (big * (big - 1))
    sigma = math.sqrt(m * n / 12 * ((big + 1) - tie_term))
    if sigma == 0:
        return 1.0
    z = max(abs(u - m * n / 2) - 0.5, 0.0) / sigma
    return min(1.0, math.erfc(z / math.sqrt(2)))


@lru_cache(maxsize=None)
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """How many orderings of m x's and n y's give U = 0, 1, ..., m*n."""
    if m == 0 or n == 0:
        return (1,)
    # The largest pooled value is an x (it beats all n y's) or a y.
    with_x, with_y = _u_counts(m - 1, n), _u_counts(m, n - 1)
    out = [0] * (m * n + 1)
    for u, c in enumerate(with_x):
        out[u + n] += c
    for u, c in enumerate(with_y):
        out[u] += c
    return tuple(out)


def _median(r: object) -> float | None:
    timing = getattr(r, "timing", None)
    return timing.median if timing is not None and getattr(r, "ok", False) else None
