"""The engine's results: plain, frozen dataclasses (no torch tensors inside).

Every number is a plain Python ``int``/``float`` (``None`` when it was not
measured), so records can be kept in a ring buffer, sent to a UI thread,
pickled, or written to JSON without touching the device again.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar


class Vocabulary(enum.StrEnum):
    """A str-valued enum that shows as its word: repr 'nan_inf', as the plain strings it
    replaced did (in a Finding's repr, in pdb), not <FindingKind.NAN_INF: 'nan_inf'>."""

    def __repr__(self) -> str:
        return repr(self.value)


class FindingKind(Vocabulary):
    """What a Finding is about (str-valued: the exact words of the JSON, the UI and breakpoints)."""

    # Health rules (engine/health.py).
    NAN_INF = "nan_inf"
    EXPLODING_GRADIENT = "exploding_gradient"
    VANISHING_GRADIENT = "vanishing_gradient"
    DEAD_UNITS = "dead_units"
    SATURATED_ACTIVATIONS = "saturated_activations"
    NO_GRADIENT = "no_gradient"
    TINY_UPDATES = "tiny_updates"
    HUGE_UPDATES = "huge_updates"
    LOSS_DIVERGENCE = "loss_divergence"
    # Silent bugs (engine/diagnosis.py): the model trains, nothing raises, and it learns badly.
    NON_FINITE_DATA = "non_finite_data"
    UNNORMALISED_INPUTS = "unnormalised_inputs"
    PROBABILITIES_AS_LOGITS = "probabilities_as_logits"
    LOSS_BROADCAST = "loss_broadcast"
    LOSS_WARNING = "loss_warning"
    UNOWNED_PARAMETERS = "unowned_parameters"
    NO_PROGRESS = "no_progress"
    LR_COLLAPSE = "lr_collapse"
    WEIGHT_DECAY_DOMINATES = "weight_decay_dominates"
    OSCILLATING_LOSS = "oscillating_loss"
    EXPLODING_THROUGH_TIME = "exploding_through_time"
    # How the scenario trains rather than the model's health (no health rule, no breakpoint).
    GRAD_CLIPPING = "grad_clipping"  # how often clip_grad_norm bites
    AMP_OVERFLOW = "amp_overflow"  # the fp16 GradScaler skipped steps
    SCENARIO_CONFIG = "scenario_config"  # a setting noticed at load (a per-epoch scheduler stepped per batch)


# The module-level names the rules were written with, kept: each is its FindingKind member.
NAN_INF = FindingKind.NAN_INF
EXPLODING_GRADIENT = FindingKind.EXPLODING_GRADIENT
VANISHING_GRADIENT = FindingKind.VANISHING_GRADIENT
DEAD_UNITS = FindingKind.DEAD_UNITS
SATURATED_ACTIVATIONS = FindingKind.SATURATED_ACTIVATIONS
NO_GRADIENT = FindingKind.NO_GRADIENT
TINY_UPDATES = FindingKind.TINY_UPDATES
HUGE_UPDATES = FindingKind.HUGE_UPDATES
LOSS_DIVERGENCE = FindingKind.LOSS_DIVERGENCE
GRAD_CLIPPING = FindingKind.GRAD_CLIPPING
AMP_OVERFLOW = FindingKind.AMP_OVERFLOW
SCENARIO_CONFIG = FindingKind.SCENARIO_CONFIG
NON_FINITE_DATA = FindingKind.NON_FINITE_DATA
UNNORMALISED_INPUTS = FindingKind.UNNORMALISED_INPUTS
PROBABILITIES_AS_LOGITS = FindingKind.PROBABILITIES_AS_LOGITS
LOSS_BROADCAST = FindingKind.LOSS_BROADCAST
LOSS_WARNING = FindingKind.LOSS_WARNING
UNOWNED_PARAMETERS = FindingKind.UNOWNED_PARAMETERS
NO_PROGRESS = FindingKind.NO_PROGRESS
LR_COLLAPSE = FindingKind.LR_COLLAPSE
WEIGHT_DECAY_DOMINATES = FindingKind.WEIGHT_DECAY_DOMINATES
OSCILLATING_LOSS = FindingKind.OSCILLATING_LOSS
EXPLODING_THROUGH_TIME = FindingKind.EXPLODING_THROUGH_TIME

SILENT_BUG_KINDS: tuple[FindingKind, ...] = (
    NON_FINITE_DATA,
    UNNORMALISED_INPUTS,
    PROBABILITIES_AS_LOGITS,
    LOSS_BROADCAST,
    LOSS_WARNING,
    UNOWNED_PARAMETERS,
    NO_PROGRESS,
    LR_COLLAPSE,
    WEIGHT_DECAY_DOMINATES,
    OSCILLATING_LOSS,
    EXPLODING_THROUGH_TIME,
)
# Findings about how the scenario trains rather than about the model's health (not health rules).
SETUP_KINDS: tuple[FindingKind, ...] = (GRAD_CLIPPING, AMP_OVERFLOW, SCENARIO_CONFIG)
# What a breakpoint can stop on: every kind but the setup ones, health rules first.
FINDING_KINDS: tuple[FindingKind, ...] = tuple(k for k in FindingKind if k not in SETUP_KINDS)


class SeverityLevel(Vocabulary):
    """How serious a Finding is, least first (str-valued: the JSON's words)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """0 for info, 1 warning, 2 error: ``>=`` in a breakpoint compares these."""
        return _SEVERITY_ORDER.index(self)


_SEVERITY_ORDER: tuple[SeverityLevel, ...] = tuple(SeverityLevel)
# The type of Finding.severity (the enum itself; the name rules and the protocol use).
Severity = SeverityLevel
SEVERITY_RANK: dict[str, int] = {level: level.rank for level in SeverityLevel}


def _member(vocabulary: type[enum.StrEnum], word: str) -> str:
    """``word`` as ``vocabulary``'s member when it is one of its values, else unchanged."""
    try:
        return vocabulary(word)
    except ValueError:
        return word


class Phase(enum.StrEnum):
    """One quarter of a training step, in the order the engine runs them ("forward" in messages)."""

    FORWARD = "forward"
    LOSS = "loss"
    BACKWARD = "backward"
    OPTIMIZER_STEP = "optimizer_step"

    @property
    def next(self) -> Phase:
        order = PHASES
        return order[(order.index(self) + 1) % len(order)]


PHASES: tuple[Phase, ...] = (Phase.FORWARD, Phase.LOSS, Phase.BACKWARD, Phase.OPTIMIZER_STEP)


@dataclass(frozen=True)
class ModuleStats:
    """One module's forward output, summarised (the last call when a module runs twice).

    ``min``, ``max``, ``abs_max`` and finiteness cover the whole tensor (a
    finite tensor has exactly 0 NaN/Inf). ``mean``, ``std``,
    ``zero_fraction``, ``saturated_fraction`` and, for non-finite tensors,
    ``nan_count`` / ``inf_count`` are estimated from a fixed sample of
    ``EngineConfig.sample_size`` elements when ``sampled`` is True (the
    tensor is larger than the sample). For ReLU-family outputs ``min`` comes
    from the sample (the pass over the tensor is the per-unit max).
    """

    name: str
    type_name: str
    shape: tuple[int, ...]
    dtype: str
    device: str
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    abs_max: float | None
    zero_fraction: float | None
    nan_count: int | None
    inf_count: int | None
    bytes: int
    calls: int = 1  # how many times the module ran in this forward
    inputs_finite: bool | None = None  # every floating input of the last call was finite
    dead_fraction: float | None = None  # ReLU family: units zero for the whole batch
    saturated_fraction: float | None = None  # Sigmoid/Tanh: outputs pinned at their bounds
    grad_norm: float | None = None  # norm of d(loss)/d(output), filled after backward
    grad_finite: bool | None = None
    sampled: bool = False

    @property
    def finite(self) -> bool | None:
        if self.nan_count is None or self.inf_count is None:
            return None
        return self.nan_count == 0 and self.inf_count == 0


@dataclass(frozen=True)
class ParamStats:
    """One parameter after backward (grad_*) and after the optimizer step (update_*)."""

    name: str
    module: str
    shape: tuple[int, ...]
    grad_norm: float | None
    grad_mean: float | None
    grad_std: float | None
    grad_abs_max: float | None
    grad_nan: int | None
    grad_inf: int | None
    weight_norm: float | None
    update_norm: float | None = None
    update_ratio: float | None = None
    has_grad: bool = True  # False: requires_grad but .grad is None after backward


@dataclass(frozen=True)
class Finding:
    """A health problem, in plain words with the number and what to try.

    The engine records one Finding per occurrence; ``collapse_findings`` folds
    consecutive repeats into one (``count``, ``last_step``) and nests the findings
    that follow from another one of the same step (``cause``) under it
    (``consequences``).
    """

    step: int
    phase: Phase
    module: str
    parameter: str | None
    # A FindingKind (the rules write its members); typed str as the diagnosis's sets of kinds are.
    kind: str
    severity: Severity
    value: float | None
    threshold: float | None
    message: str
    # The kind (a FindingKind's value) of the root finding this one follows from (a NaN loss from NaN data).
    cause: str | None = None
    count: int = 1  # occurrences folded into this one
    last_step: int | None = None  # the last folded occurrence's step (None: only ``step``)
    consequences: tuple[Finding, ...] = ()  # findings caused by this one, themselves collapsed

    def __post_init__(self) -> None:
        # The vocabulary's members whoever wrote it (a rule's constant, a string from the
        # protocol or a test), so every Finding carries the same types; a word this version
        # does not know (a newer host's kind) stays the string it was.
        object.__setattr__(self, "kind", _member(FindingKind, self.kind))
        object.__setattr__(self, "severity", _member(SeverityLevel, self.severity))
        if self.cause is not None:
            object.__setattr__(self, "cause", _member(FindingKind, self.cause))

    @property
    def where(self) -> str:
        name = self.parameter or self.module
        return name if name else "(model)"

    @property
    def steps(self) -> str:
        """"7", or "7-42 (36x)" for a collapsed run."""
        last = self.step if self.last_step is None else self.last_step
        return str(self.step) if self.count == 1 and last == self.step else f"{self.step}-{last} ({self.count}x)"


def _repeat_key(f: Finding) -> tuple[object, ...]:
    return (f.kind, f.phase, f.module, f.parameter, f.severity, f.cause)


def collapse_findings(findings: Iterable[Finding], gap: int = 1) -> tuple[Finding, ...]:
    """Fold consecutive repeats and nest consequences under their root, keeping order.

    A repeat is the same kind at the same place (phase, module, parameter, severity)
    at most ``gap`` steps after the previous occurrence (pass the stats interval when
    findings are only made on measured steps). The first occurrence's message and value
    are kept: they name the cause as first seen. A finding whose ``cause`` names the
    kind of an earlier finding (the engine sets it for the rest of a NaN episode, for
    instance) is listed under the latest such root instead of on its own; without one
    it stays in the list.
    """
    out: list[Finding] = []
    last: dict[tuple[object, ...], int] = {}  # repeat key -> index in out
    roots: dict[str, int] = {}  # kind -> index in out of its latest run
    for f in findings:
        if f.cause is not None and f.cause in roots:
            i = roots[f.cause]
            out[i] = replace(out[i], consequences=collapse_findings((*out[i].consequences, f), gap))
            continue
        key = _repeat_key(f)
        i = last.get(key, -1)
        if i >= 0:
            prev = out[i]
            end = prev.last_step if prev.last_step is not None else prev.step
            if end <= f.step <= end + gap:
                out[i] = replace(prev, count=prev.count + f.count,
                                 last_step=f.last_step if f.last_step is not None else f.step,
                                 consequences=collapse_findings((*prev.consequences, *f.consequences), gap))
                roots[f.kind] = i
                continue
        last[key] = len(out)
        roots[f.kind] = len(out)
        out.append(f)
    return tuple(out)


@dataclass(frozen=True)
class MemorySample:
    """Memory at the end of a step. The CUDA counters are read every step (host-side reads);
    the process RSS only on measured steps (psutil's read of /proc costs a sizeable share of a
    sub-millisecond step): an unmeasured step repeats the last measured step's RSS, as it does activation_bytes."""

    rss_bytes: int | None
    cuda_allocated: int | None = None
    cuda_reserved: int | None = None
    cuda_peak: int | None = None
    activation_bytes: int | None = None  # leaf-module outputs of the last measured forward


@dataclass(frozen=True)
class StepRecord:
    """Everything recorded for one completed training step."""

    step: int
    loss: float | None
    total_grad_norm: float | None
    lrs: tuple[float, ...]
    phase_seconds: dict[Phase, float]
    memory: MemorySample
    modules: tuple[ModuleStats, ...]  # empty when stats were skipped this step
    params: tuple[ParamStats, ...]
    findings: tuple[Finding, ...]
    skipped: bool = False  # the optimizer step was skipped (Engine.skip_step)
    instrument_seconds: float = 0.0  # the debugger's own cost in this step
    instrument_breakdown: dict[str, float] = field(default_factory=dict)
    epoch: int = 0
    batch_size: int = 0
    measured: bool = True  # module/param stats were taken this step
    data_seconds: float = 0.0  # fetching the batch (not part of any phase)
    # -- contract v2 ---------------------------------------------------------------
    loss_parts: dict[str, float] = field(default_factory=dict)  # loss_fn's named parts (sum = loss)
    loss_source: str = "loss_fn"  # or "outputs.loss" / 'outputs["loss"]': the model computed it
    grad_norm_before_clip: float | None = None  # clip_grad_norm set: the norm clip_grad_norm_ saw
    grad_norm_after_clip: float | None = None
    clipped: bool | None = None  # None: no clipping configured
    grad_scale: float | None = None  # fp16 GradScaler's scale used for this step's backward
    amp_skipped: bool = False  # the GradScaler skipped the optimizer step (inf/NaN gradients)
    # Parts of the optimizer_step phase, included in its time: "unscale", "clip_grad", "before_step".
    sub_phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.phase_seconds.values())

    def module(self, name: str) -> ModuleStats | None:
        for m in self.modules:
            if m.name == name:
                return m
        return None

    def param(self, name: str) -> ParamStats | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


@dataclass(frozen=True)
class BreakHit:
    """A breakpoint fired: the engine is paused (before the optimizer step)."""

    step: int
    phase: Phase
    breakpoint: str  # Breakpoint.describe()
    finding: Finding | None
    reason: str


@dataclass(frozen=True)
class StepProgress:
    """The step in progress, as far as it got (Engine.current)."""

    step: int
    next_phase: Phase
    phases_done: tuple[Phase, ...]
    loss: float | None
    total_grad_norm: float | None
    phase_seconds: dict[Phase, float]
    modules: tuple[ModuleStats, ...]
    params: tuple[ParamStats, ...]
    findings: tuple[Finding, ...]
    measured: bool
    batch_size: int = 0  # samples in the step's batch (0: its forward has not drawn one yet)


@dataclass(frozen=True)
class PhaseResult:
    phase: Phase
    step: int
    seconds: float
    loss: float | None  # set once the LOSS phase has run
    findings: tuple[Finding, ...]
    break_hit: BreakHit | None = None
    record: StepRecord | None = None  # set when this phase completed the step


class StopReason(Vocabulary):
    """Why ``Engine.run`` returned (str-valued: the run report's ``stopped_by``)."""

    STEPS = "steps"  # it ran the steps asked for
    BREAKPOINT = "breakpoint"
    STOPPED = "stopped"  # should_stop() said so
    ERROR = "error"  # the user's step raised (RunOutcome.error)


# The type of RunOutcome.stopped_by.
StoppedBy = StopReason


@dataclass(frozen=True)
class RunOutcome:
    steps_done: int
    stopped_by: StoppedBy
    break_hit: BreakHit | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class ModuleNode:
    """One node of Engine.module_tree."""

    name: str
    type_name: str
    children: tuple[str, ...]
    own_params: int  # parameters registered directly on this module (a tied one only at its owner)
    total_params: int  # including every descendant (tied weights owned outside the subtree left out)
    shared_params: tuple[str, ...] = ()  # parameters it uses that another module owns (tied weights)


# -- fast construction of the per-module and per-parameter records ---------------------------
_R = TypeVar("_R", ModuleStats, ParamStats)
_DEFAULTS: dict[type, tuple[dict[str, Any], int]] = {}


def build(cls: type[_R], **values: Any) -> _R:
    """``cls(**values)`` for ModuleStats/ParamStats without the frozen ``__init__``, which sets
    each of their ~20 fields through ``object.__setattr__`` (about 4 us a record, and a measured
    step makes one per module and per parameter). Defaults are filled in as ``__init__`` would."""
    known = _DEFAULTS.get(cls)
    if known is None:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        known = _DEFAULTS[cls] = ({f.name: f.default for f in fields if f.default is not dataclasses.MISSING},
                                  len(fields))
    new = object.__new__(cls)
    state = new.__dict__
    state.update(known[0])
    state.update(values)
    if len(state) != known[1]:
        raise TypeError(f"{cls.__name__}: missing or unknown fields in {sorted(values)}")
    return new


def evolve(record: _R, **changes: Any) -> _R:
    """``dataclasses.replace`` for ModuleStats/ParamStats (frozen, no ``__post_init__``).

    A copy of the instance dict instead of ``__init__`` field by field: replace() took about
    5 us, and a measured step makes one per module and two per parameter.
    """
    new = object.__new__(type(record))
    new.__dict__.update(record.__dict__, **changes)
    return new
