"""The stepping engine: one training step as four inspectable phases (torch only, no UI).

API overview::

    from workbench.engine import Engine, EngineConfig, Breakpoint, Phase

    with Engine(scenario, EngineConfig(stats_every=1, history=256)) as eng:
        eng.add_breakpoint(Breakpoint.parse("nan_inf"))     # or "loss>5", "step==12", "dead_units@features.*"
        r = eng.advance()            # exactly one phase -> PhaseResult(phase, step, seconds, loss, findings, break_hit)
        rec = eng.step_once()        # finish the step -> StepRecord (modules, params, findings, memory, timing)
        out = eng.run(100, should_stop=lambda: paused, on_step=print)   # -> RunOutcome(steps_done, stopped_by, ...)
        if out.stopped_by == "breakpoint":      # paused BEFORE the optimizer step
            eng.next_phase                       # Phase.OPTIMIZER_STEP
            eng.skip_step()                      # or eng.run(...) to continue
        eng.history, eng.findings, eng.current, eng.module_names, eng.module_tree
        eng.batch                                # the step's Batch (inputs, targets) on the device
        eng.activation_sample("features.0")      # CPU copy of that output (<= sample_size values)

* records.py      frozen results: Phase, ModuleStats, ParamStats, Finding, MemorySample, StepRecord,
                  BreakHit, StepProgress, PhaseResult, RunOutcome, ModuleNode; the vocabularies as
                  str-valued enums (FindingKind, SeverityLevel, StopReason).
* breakpoints.py  Breakpoint (factories, parse, describe, check).
* engine.py       EngineConfig, Engine (owns the loop: data, phases, snapshots, breakpoints).
* instruments.py  Instruments: probe + parameter stats + health rules at each phase boundary,
                  for whoever owns the loop (the Engine, ``workbench.watch``).
* thresholds.py   HealthThresholds: every threshold of the rules and the diagnosis, documented.
* health.py       the health rules (HealthMonitor).
* diagnosis.py    the silent-bug diagnosis the rules run (Diagnosis, LossWatch, InputScaleProbe).
* probe.py        module hooks: batched forward stats, output-gradient norms, NaN root cause.
* params.py       per-parameter grad / weight / update stats.
* memory.py       RSS and CUDA allocator samples.
* errors.py       StepError (a user exception in a phase; the engine stays usable), under
                  TrainingStepError, which the bench's timed step (no phase) raises too.
* summary.py      a torchinfo-like static model summary (shapes, params, FLOPs).

Each phase does at most one device->host transfer (search for "Sync point"); the
only other syncs are deliberate and on demand (activation_sample, a NaN diagnosis).
A user exception inside a phase is raised as StepError and the engine stays usable.
Per step, ``StepRecord.instrument_breakdown`` times each instrument separately (hooks,
stats, health rules, memory) so a UI can show the debugger's own cost live.
"""

from typing import TYPE_CHECKING

from workbench.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from workbench.engine.breakpoints import Breakpoint
    from workbench.engine.engine import Engine, EngineConfig
    from workbench.engine.errors import StepError, TrainingStepError
    from workbench.engine.thresholds import HealthThresholds
    from workbench.engine.records import (
        FINDING_KINDS,
        PHASES,
        BreakHit,
        Finding,
        FindingKind,
        MemorySample,
        ModuleNode,
        ModuleStats,
        ParamStats,
        Phase,
        PhaseResult,
        RunOutcome,
        SeverityLevel,
        StepProgress,
        StepRecord,
    )

# Submodules load on first use: ``workbench.engine.records`` (plain dataclasses) must not pull
# in torch through this package, so the TUI can import the records' types before torch loads.
_HOME = {
    "Breakpoint": "breakpoints", "Engine": "engine", "EngineConfig": "engine", "StepError": "errors",
    "TrainingStepError": "errors", "HealthThresholds": "thresholds",
    **{name: "records" for name in (
        "FINDING_KINDS", "PHASES", "BreakHit", "Finding", "FindingKind", "MemorySample", "ModuleNode",
        "ModuleStats", "ParamStats", "Phase", "PhaseResult", "RunOutcome", "SeverityLevel", "StepProgress",
        "StepRecord")},
}

__all__ = [
    "Breakpoint", "BreakHit", "Engine", "EngineConfig", "FINDING_KINDS", "Finding", "FindingKind",
    "HealthThresholds", "MemorySample", "ModuleNode", "ModuleStats", "PHASES", "ParamStats", "Phase",
    "PhaseResult", "RunOutcome", "SeverityLevel", "StepError", "StepProgress", "StepRecord",
    "TrainingStepError",
]


__getattr__ = lazy_exports(__name__, _HOME)
