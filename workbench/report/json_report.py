"""The JSON report of `workbench run` / `workbench check` (plain dicts, strict JSON via files.jsonable)."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from workbench.engine.records import BreakHit, Finding, StepRecord

SCHEMA = "workbench.run/1"


def finding_json(f: Finding) -> dict[str, Any]:
    return {
        "step": f.step, "phase": f.phase.value, "module": f.module, "parameter": f.parameter,
        "kind": f.kind, "severity": f.severity, "value": f.value, "threshold": f.threshold,
        "message": f.message,
    }


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
    }


def run_summary(records: Sequence[StepRecord], findings: Sequence[Finding], *, steps_done: int,
                stopped_by: str, break_hit: BreakHit | None = None) -> dict[str, Any]:
    losses = [r.loss for r in records if r.loss is not None and math.isfinite(r.loss)]
    step_seconds = [r.seconds for r in records]
    instrument = [r.instrument_seconds for r in records]
    mean_step = sum(step_seconds) / len(step_seconds) if step_seconds else None
    mean_instr = sum(instrument) / len(instrument) if instrument else None
    rss = [r.memory.rss_bytes for r in records if r.memory.rss_bytes]
    cuda = [r.memory.cuda_peak for r in records if r.memory.cuda_peak]
    return {
        "steps_done": steps_done,
        "stopped_by": stopped_by,
        "first_loss": records[0].loss if records else None,
        "final_loss": records[-1].loss if records else None,
        "best_loss": min(losses) if losses else None,
        "mean_step_seconds": mean_step,
        "mean_instrument_seconds": mean_instr,
        # The debugger's own cost relative to the training work it watched.
        "instrument_fraction": (mean_instr / mean_step) if mean_step and mean_instr is not None else None,
        "peak_rss_bytes": max(rss) if rss else None,
        "peak_cuda_bytes": max(cuda) if cuda else None,
        "findings_by_severity": dict(Counter(f.severity for f in findings)),
        "findings_by_kind": dict(Counter(f.kind for f in findings)),
        "break_hit": None if break_hit is None else {
            "step": break_hit.step, "phase": break_hit.phase.value, "breakpoint": break_hit.breakpoint,
            "reason": break_hit.reason,
            "finding": finding_json(break_hit.finding) if break_hit.finding else None,
        },
    }


def error_json(exc: BaseException, traceback_text: str | None = None, *, phase: str | None = None,
               step: int | None = None) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "phase": phase, "step": step,
            "traceback": traceback_text}


def run_report(*, scenario: str, device: str, records: Sequence[StepRecord], findings: Sequence[Finding],
               summary: dict[str, Any], error: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "scenario": scenario,
        "device": device,
        "steps": [step_json(r) for r in records],
        "findings": [finding_json(f) for f in findings],
        "summary": summary,
        "error": error,
    }


def step_error_json(err: Any) -> dict[str, Any]:
    """A StepError: the user's exception plus where it happened, the call and the advice."""
    payload = error_json(err.original, err.traceback_text, phase=err.phase.value, step=err.step)
    payload.update({"call": err.call, "module": err.module, "at": err.user_frame, "kind": err.kind,
                    "hint": err.advice, "oom": err.oom, "batch_size": err.batch_size})
    return payload
