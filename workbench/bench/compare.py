"""Compare two bench runs variant by variant (for CI regression gating)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workbench.bench.results import BenchRun

Verdict = Literal["faster", "slower", "same", "regressed", "fixed", "new", "gone", "not comparable"]


@dataclass(frozen=True)
class Change:
    name: str
    verdict: Verdict
    old_s: float | None  # median seconds per step
    new_s: float | None
    change: float | None  # (new - old) / old: +0.12 is 12 % slower
    note: str = ""


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
            change = (b.timing.median - a.timing.median) / a.timing.median
            verdict = "slower" if change > threshold else "faster" if change < -threshold else "same"
            changes.append(Change(name, verdict, a.timing.median, b.timing.median, change))
    return Comparison(old, new, threshold, tuple(changes), tuple(notes))


def _median(r: object) -> float | None:
    timing = getattr(r, "timing", None)
    return timing.median if timing is not None and getattr(r, "ok", False) else None
