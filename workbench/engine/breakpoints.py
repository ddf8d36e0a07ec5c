"""Breakpoints: conditions that pause the engine before the optimizer step.

``Breakpoint.parse`` understands what a user types on the command line or in
the TUI::

    nan_inf                 any finding of that kind
    dead_units@features.*   ... on a module (or parameter) matching the glob
    any>=error              any finding at severity >= error (also: warning, info)
    exploding_gradient>=error@fc*
    loss>5                  the loss above 5, or non-finite (loss>=5 is read as loss>5)
    loss<0.05               the loss below 0.05: "it has converged, stop here" (<= is read as <)
    grad_norm>100           the total gradient norm above 100, or non-finite
    grad_norm<1e-6          the total gradient norm below 1e-6 (vanished)
    step==12                step 12 (also step=12)
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from workbench.engine.records import FINDING_KINDS, SEVERITY_RANK, BreakHit, Finding, Phase, SeverityLevel, Vocabulary

ANY_KIND = "any"


class Condition(Vocabulary):
    """What a breakpoint watches (str-valued, as the breakpoint's text starts)."""

    FINDING = "finding"  # a finding of a kind (or any), at a severity, on a module
    LOSS = "loss"
    GRAD_NORM = "grad_norm"  # the total gradient norm
    STEP = "step"

_SYNTAX = (
    "expected KIND[>=SEVERITY][@MODULE_GLOB] (KIND one of "
    + ", ".join((ANY_KIND, *FINDING_KINDS))
    + "), loss>X, loss<X, grad_norm>X, grad_norm<X or step==N"
)


@dataclass(frozen=True)
class Breakpoint:
    condition: Condition
    kind: str | None = None  # a FindingKind's value, or "any"
    min_severity: SeverityLevel | None = None
    module_glob: str | None = None
    threshold: float | None = None  # loss / grad_norm
    below: bool = False  # loss / grad_norm: fire below the threshold instead of above
    step: int | None = None

    def __post_init__(self) -> None:
        # Breakpoint("loss", threshold=5) spelled with plain strings still compares by identity below.
        object.__setattr__(self, "condition", Condition(self.condition))
        if self.min_severity is not None:
            object.__setattr__(self, "min_severity", SeverityLevel(self.min_severity))

    # -- factories -------------------------------------------------------------------
    @classmethod
    def on_finding(
        cls, kind: str = ANY_KIND, *, min_severity: str | None = None, module: str | None = None
    ) -> Breakpoint:
        if kind != ANY_KIND and kind not in FINDING_KINDS:
            raise ValueError(f"unknown finding kind {kind!r}; {_SYNTAX}")
        if min_severity is not None and min_severity not in SEVERITY_RANK:
            raise ValueError(
                f"unknown severity {min_severity!r}; expected one of {', '.join(SEVERITY_RANK)}"
            )
        level = SeverityLevel(min_severity) if min_severity is not None else None
        return cls(Condition.FINDING, kind=kind, min_severity=level, module_glob=module)

    @classmethod
    def loss_above(cls, value: float) -> Breakpoint:
        return cls(Condition.LOSS, threshold=float(value))

    @classmethod
    def grad_norm_above(cls, value: float) -> Breakpoint:
        return cls(Condition.GRAD_NORM, threshold=float(value))

    @classmethod
    def loss_below(cls, value: float) -> Breakpoint:
        return cls(Condition.LOSS, threshold=float(value), below=True)

    @classmethod
    def grad_norm_below(cls, value: float) -> Breakpoint:
        return cls(Condition.GRAD_NORM, threshold=float(value), below=True)

    @classmethod
    def at_step(cls, step: int) -> Breakpoint:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return cls(Condition.STEP, step=int(step))

    @classmethod
    def parse(cls, text: str) -> Breakpoint:
        """Parse one breakpoint; ValueError says what was expected."""
        raw = text.strip()
        compact = raw.replace(" ", "")
        m = re.fullmatch(r"(loss|grad_norm)([<>])=?(.+)", compact)
        if m:
            try:
                value = float(m.group(3))
            except ValueError:
                raise ValueError(f"breakpoint {raw!r}: {m.group(3)!r} is not a number; {_SYNTAX}") from None
            if math.isnan(value):
                raise ValueError(f"breakpoint {raw!r}: the threshold must be a number, not nan; "
                                 "to stop on a NaN loss use loss_divergence or nan_inf")
            return cls(Condition(m.group(1)), threshold=value, below=m.group(2) == "<")
        m = re.fullmatch(r"step==?(\d+)", compact)
        if m:
            return cls.at_step(int(m.group(1)))
        m = re.fullmatch(r"([a-z_]+)(?:>=(info|warning|error))?(?:@(.+))?", compact)
        if not m:
            raise ValueError(f"breakpoint {raw!r} not understood; {_SYNTAX}")
        kind, severity, glob = m.groups()
        if kind not in FINDING_KINDS and kind != ANY_KIND:
            raise ValueError(f"breakpoint {raw!r}: unknown finding kind {kind!r}; {_SYNTAX}")
        return cls.on_finding(kind, min_severity=severity, module=glob)

    # -- use ---------------------------------------------------------------------------
    def describe(self) -> str:
        if self.condition in (Condition.LOSS, Condition.GRAD_NORM):
            return f"{self.condition}{'<' if self.below else '>'}{self.threshold:g}"
        if self.condition is Condition.STEP:
            return f"step=={self.step}"
        text = self.kind or ANY_KIND
        if self.min_severity:
            text += f">={self.min_severity}"
        if self.module_glob:
            text += f"@{self.module_glob}"
        return text

    def __str__(self) -> str:
        return self.describe()

    def matches_finding(self, finding: Finding) -> bool:
        if self.condition is not Condition.FINDING:
            return False
        if self.kind not in (None, ANY_KIND) and finding.kind != self.kind:
            return False
        if self.min_severity and SEVERITY_RANK[finding.severity] < self.min_severity.rank:
            return False
        if self.module_glob:
            names = [finding.module] + ([finding.parameter] if finding.parameter else [])
            if not any(fnmatch.fnmatchcase(n, self.module_glob) for n in names):
                return False
        return True

    def check(
        self,
        *,
        step: int,
        phase: Phase,
        loss: float | None,
        total_grad_norm: float | None,
        findings: Iterable[Finding],
    ) -> BreakHit | None:
        """A BreakHit when this breakpoint fires on the given state, else None."""
        if self.condition is Condition.FINDING:
            for finding in findings:
                if self.matches_finding(finding):
                    return BreakHit(step, phase, self.describe(), finding,
                                    f"{finding.kind} on {finding.where}: {finding.message}")
            return None
        if self.condition is Condition.STEP:
            if step == self.step:
                return BreakHit(step, phase, self.describe(), None, f"reached step {step}")
            return None
        value = loss if self.condition is Condition.LOSS else total_grad_norm
        assert self.threshold is not None
        if value is None:
            return None
        label = "loss" if self.condition is Condition.LOSS else "total gradient norm"
        if self.below:
            if value < self.threshold:  # NaN compares False: a NaN loss has not converged
                return BreakHit(step, phase, self.describe(), None, f"{label} {value:.4g} < {self.threshold:g}")
        elif value > self.threshold or math.isnan(value):
            return BreakHit(step, phase, self.describe(), None, f"{label} {value:.4g} > {self.threshold:g}")
        return None
