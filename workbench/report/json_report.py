"""The JSON report of `workbench run` / `workbench check` (plain dicts, strict JSON via files.jsonable).

`workbench run` streams it: ``report_head()``, then one ``step_json`` per step as the
steps happen (files.JsonStream), then ``report_rest(...)`` with the findings,
the summary (from a ``RunTally``) and the error. Memory stays flat however long the run.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workbench.engine.records import BreakHit, Finding, StepRecord
from workbench.errors import message_of

if TYPE_CHECKING:
    from workbench.engine.errors import StepError  # imports torch: only for the annotation

SCHEMA = "workbench.run/1"


def finding_json(f: Finding) -> dict[str, Any]:
    """One finding; a collapsed one (records.collapse_findings) carries its run and consequences.

    ``step`` stays the first occurrence (as in schema workbench.run/1 before collapsing);
    ``last_step`` and ``count`` say how far the run of repeats went, ``cause`` names the
    root finding's kind when this one follows from it, ``consequences`` lists (collapsed)
    the findings that follow from this one.
    """
    return {
        "step": f.step, "phase": f.phase.value, "module": f.module, "parameter": f.parameter,
        "kind": f.kind, "severity": f.severity, "value": f.value, "threshold": f.threshold,
        "message": f.message,
        "last_step": f.step if f.last_step is None else f.last_step, "count": f.count, "cause": f.cause,
        "consequences": [finding_json(c) for c in f.consequences],
    }


def finding_key(f: Finding) -> tuple[Any, ...]:
    """What makes two findings the same one (a replay finds the first pass's again)."""
    return (f.step, f.phase, f.module, f.parameter, f.kind)


def step_json(r: StepRecord) -> dict[str, Any]:
    return {
        "step": r.step,
        "epoch": r.epoch,
        "loss": r.loss,
        "total_grad_norm": r.total_grad_norm,
        "lrs": list(r.lrs),
        "batch_size": r.batch_size,
        "skipped": r.skipped,
        "measured": r.measured,
        "phase_seconds": {p.value: s for p, s in r.phase_seconds.items()},
        "data_seconds": r.data_seconds,
        "instrument_seconds": r.instrument_seconds,
        "instrument_breakdown": dict(r.instrument_breakdown),
        "memory": dataclasses.asdict(r.memory),
        "modules": [dataclasses.asdict(m) for m in r.modules],
        "params": [dataclasses.asdict(p) for p in r.params],
        "findings": len(r.findings),
        "loss_source": r.loss_source,
        "loss_parts": dict(r.loss_parts),
        "grad_norm_before_clip": r.grad_norm_before_clip,
        "grad_norm_after_clip": r.grad_norm_after_clip,
        "clipped": r.clipped,
        "grad_scale": r.grad_scale,
        "amp_skipped": r.amp_skipped,
        "sub_phase_seconds": dict(r.sub_phase_seconds),
    }


@dataclasses.dataclass
class RunTally:
    """The run summary's figures, kept as running totals: a long run needs no list of records."""

    steps: int = 0
    first_loss: float | None = None
    final_loss: float | None = None
    best_loss: float | None = None
    seconds: float = 0.0
    instrument_seconds: float = 0.0
    peak_rss: int | None = None
    peak_cuda: int | None = None
    by_severity: Counter[str] = dataclasses.field(default_factory=Counter)
    by_kind: Counter[str] = dataclasses.field(default_factory=Counter)
    findings_not_listed: int = 0  # past the report's cap: counted, not listed
    replayed: int = 0  # steps run again with full stats after a breakpoint (listed, not in the totals)

    def add(self, r: StepRecord) -> None:
        if self.steps == 0:
            self.first_loss = r.loss
        self.steps += 1
        self.final_loss = r.loss
        if r.loss is not None and math.isfinite(r.loss):
            self.best_loss = r.loss if self.best_loss is None else min(self.best_loss, r.loss)
        self.seconds += r.seconds
        self.instrument_seconds += r.instrument_seconds
        if r.memory.rss_bytes:
            self.peak_rss = max(self.peak_rss or 0, r.memory.rss_bytes)
        if r.memory.cuda_peak:
            self.peak_cuda = max(self.peak_cuda or 0, r.memory.cuda_peak)

    def count(self, findings: Sequence[Finding]) -> None:
        self.by_severity.update(f.severity for f in findings)
        self.by_kind.update(f.kind for f in findings)

    def summary(self, *, stopped_by: str, break_hit: BreakHit | None = None) -> dict[str, Any]:
        mean_step = self.seconds / self.steps if self.steps else None
        mean_instr = self.instrument_seconds / self.steps if self.steps else None
        return {
            "steps_done": self.steps,
            "stopped_by": stopped_by,
            "first_loss": self.first_loss,
            "final_loss": self.final_loss,
            "best_loss": self.best_loss,
            "mean_step_seconds": mean_step,
            "mean_instrument_seconds": mean_instr,
            # The debugger's own cost relative to the training work it watched.
            "instrument_fraction": (mean_instr / mean_step) if mean_step and mean_instr is not None else None,
            "peak_rss_bytes": self.peak_rss,
            "peak_cuda_bytes": self.peak_cuda,
            "findings_by_severity": dict(self.by_severity),
            "findings_by_kind": dict(self.by_kind),
            "findings_not_listed": self.findings_not_listed,
            "replayed_steps": self.replayed,
            "break_hit": None if break_hit is None else {
                "step": break_hit.step, "phase": break_hit.phase.value, "breakpoint": break_hit.breakpoint,
                "reason": break_hit.reason,
                "finding": finding_json(break_hit.finding) if break_hit.finding else None,
            },
        }


def error_json(exc: BaseException, traceback_text: str | None = None, *, phase: str | None = None,
               step: int | None = None) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": message_of(exc), "phase": phase, "step": step,
            "traceback": traceback_text}


def report_head() -> dict[str, Any]:
    return {"schema": SCHEMA}


def report_rest(*, scenario: str, device: str, findings: Sequence[dict[str, Any]], summary: dict[str, Any],
                error: dict[str, Any] | None) -> dict[str, Any]:
    """The keys after the streamed steps; ``findings`` as finding_json dicts (run adds "replayed")."""
    return {
        "scenario": scenario,
        "device": device,
        "findings": list(findings),
        "summary": summary,
        "error": error,
    }


def step_error_json(err: StepError) -> dict[str, Any]:
    """A StepError: the user's exception plus where it happened, the call and the advice."""
    payload = error_json(err.original, err.traceback_text, phase=err.phase.value, step=err.step)
    payload.update({"stage": err.stage, "data_loading": err.data_loading,
                    "call": err.call, "module": err.module, "at": err.user_frame, "kind": err.kind,
                    "hint": err.advice, "oom": err.oom, "batch_size": err.batch_size})
    return payload


def read_findings(path: str) -> tuple[Any, ...]:
    """The findings of a `workbench run --json` report, as objects with the Finding's
    fields (kind, severity, module, message, ...). UsageError says what is wrong."""
    from types import SimpleNamespace

    from workbench.errors import UsageError
    from workbench.inputs import InputFileError, read_json

    try:
        data = read_json(path, "`workbench run --json` report")
    except InputFileError as exc:
        raise UsageError(f"{exc} Pass the report of `workbench run SCENARIO --json FILE`.") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("findings"), list):
        raise UsageError(f"{path}: not a `workbench run --json` report (expected \"schema\": \"{SCHEMA}\" "
                         "and a \"findings\" list).")
    fields = ("step", "phase", "module", "parameter", "kind", "severity", "value", "threshold", "message")
    out = []
    for i, item in enumerate(data["findings"]):
        if not isinstance(item, dict) or not isinstance(item.get("kind"), str) or not isinstance(
                item.get("message"), str):
            raise UsageError(f"{path}: findings[{i}] is not a finding (expected an object with "
                             "\"kind\" and \"message\" strings).")
        out.append(SimpleNamespace(**{k: item.get(k) for k in fields}))
    return tuple(out)
