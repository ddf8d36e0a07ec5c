"""The stepping engine: one training step as four inspectable phases.

``Engine`` wraps a Scenario, attaches the probes (hooks) and runs
forward -> loss -> backward -> optimizer_step one phase at a time. Each
phase ends with at most ONE device->host transfer (the ``.tolist()`` calls
marked "sync point" below); the rest stays on the device.

Thread use: every method may be called from a worker thread (the TUI does);
the engine installs no signal handlers. It is not safe to call one engine
from two threads at once.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import torch

from workbench.engine import memory, snapshots
from workbench.engine.breakpoints import Breakpoint
from workbench.engine.diagnosis import find_non_finite
from workbench.engine.errors import (
    ErrorContext,
    StepError,
    describe_call,
    innermost_module,
    is_data_loading_error,
    worker_death,
)
from workbench.engine.health import HealthThresholds
from workbench.engine.instruments import Instruments, StepState
from workbench.engine.params import lr_values
from workbench.engine.records import (
    GRAD_CLIPPING,
    SCENARIO_CONFIG,
    BreakHit,
    PHASES,
    Finding,
    ModuleNode,
    Phase,
    PhaseResult,
    RunOutcome,
    SeverityLevel,
    StepProgress,
    StepRecord,
    StopReason,
)
from workbench.engine.snapshots import SnapshotRing
from workbench.scenario import PAIR, Batch, Scenario, ScenarioSource
from workbench.scenario.step import (
    DataCycle,
    abandon_update,
    apply_update,
    backward,
    clip_total_norm,
    instrumented,
    prepare_update,
    scheduler_after_update,
    scheduler_at_epoch,
)

CLIP_WINDOW = 20  # steps over which "how often clipping bites" is judged
_NEXT = {phase: PHASES[(i + 1) % len(PHASES)] for i, phase in enumerate(PHASES)}


@dataclass(frozen=True)
class EngineConfig:
    """How much the engine measures and keeps.

    stats_every: module/parameter stats every k-th step (step % k == 0); the
        other steps record only loss, total grad norm, lr, timing and memory.
    history: ring size of ``Engine.history`` (StepRecords kept).
    max_findings: ring size of ``Engine.findings``.
    sample_size: elements sampled per tensor for std, zero fraction, saturation and
        NaN/Inf counts (4096 gives those fractions to about +-1.5%).
    snapshots: how many recent step starts to keep for ``Engine.rewind`` (0: off).
        Each costs about the model's plus the optimizer state's size in memory and
        a copy of them per step (charged to the "snapshot" instrument).
    snapshot_budget: bytes all snapshots may take together; fewer are kept when
        they are large, none when one alone is over it.
    """

    stats_every: int = 1
    history: int = 256
    max_findings: int = 2000
    sample_size: int = 4096
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    breakpoints: tuple[Breakpoint, ...] = ()
    snapshots: int = 0
    snapshot_budget: int = 512 * 2**20

    def __post_init__(self) -> None:
        if self.snapshots < 0:
            raise ValueError(f"snapshots must be >= 0, got {self.snapshots}")
        if self.stats_every < 1:
            raise ValueError(f"stats_every must be >= 1, got {self.stats_every}")
        if self.history < 1:
            raise ValueError(f"history must be >= 1, got {self.history}")


class Engine:
    """Step a Scenario phase by phase with health checks; see the package docstring."""

    def __init__(self, scenario: Scenario, config: EngineConfig | None = None) -> None:
        self._scenario = scenario
        self.config = config or EngineConfig()
        model = scenario.model
        self._device = scenario.device
        # Undone by close(): the probe's hooks, training flags of every module, the RNG streams.
        self._restore = contextlib.ExitStack()
        hooks = self._restore.enter_context(instrumented(model, train=True))
        torch.manual_seed(scenario.seed)
        self._inst = Instruments(model, sample_size=self.config.sample_size, thresholds=self.config.thresholds)
        self._probe = self._inst.probe
        self._probe.attach()
        hooks.on_exit(self._probe.detach)
        self._scaler = scenario.make_scaler()  # fp16 training as the user trains: a GradScaler
        self._clip_recent: deque[bool] = deque(maxlen=CLIP_WINDOW)
        self._clip_reported = False
        self._clip_counts = [0, 0]  # [clipped steps, steps with clipping on]
        self._breakpoints: list[Breakpoint] = list(self.config.breakpoints)
        self._history: deque[StepRecord] = deque(maxlen=self.config.history)
        self._findings: deque[Finding] = deque(maxlen=self.config.max_findings)
        self._cycle = DataCycle(scenario)
        self._step = 0
        self._next_phase = Phase.FORWARD
        self._pending_break: BreakHit | None = None
        self._last_error: StepError | None = None
        self._closed = False
        self._skipped_steps = 0
        self._measure_until = 0  # steps below this are measured whatever stats_every says (replays)
        # What the loader noticed about the scenario's settings, as findings of the first step.
        self._setup_findings = [Finding(0, Phase.FORWARD, "", None, SCENARIO_CONFIG, SeverityLevel.WARNING, None, None, w)
                                for w in scenario.load_warnings]
        self._state = self._new_state()
        self._snapshots = SnapshotRing(self.config.snapshots, self.config.snapshot_budget)
        # Snapshots of rewound steps: their batches (and RNG) are replayed, in order,
        # before the data iterator is touched again.
        self._replay: deque[snapshots.Snapshot] = deque()
        scenario.optimizer.zero_grad(set_to_none=True)
        self._findings.extend(self._setup_findings)

    @classmethod
    def from_source(
        cls, source: ScenarioSource, device: str | torch.device = "cpu", config: EngineConfig | None = None
    ) -> Engine:
        return cls(source.build(device), config)

    # -- read-only views ----------------------------------------------------------------
    @property
    def scenario(self) -> Scenario:
        return self._scenario

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def step(self) -> int:
        """Index of the step in progress, or of the next one when none is."""
        return self._step

    @property
    def epoch(self) -> int:
        return self._cycle.epoch

    @property
    def clipping(self) -> tuple[int, int]:
        """(steps whose gradient norm was clipped, steps with clip_grad_norm on)."""
        return self._clip_counts[0], self._clip_counts[1]

    @property
    def replay_exact(self) -> bool:
        """False when the scenario keeps state outside the model that snapshots cannot restore."""
        return not self._scenario.carries_state or self._scenario.state is not None

    @property
    def next_phase(self) -> Phase:
        return self._next_phase

    @property
    def history(self) -> tuple[StepRecord, ...]:
        return tuple(self._history)

    @property
    def last_record(self) -> StepRecord | None:
        return self._history[-1] if self._history else None

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(self._findings)

    @property
    def pending_break(self) -> BreakHit | None:
        return self._pending_break

    @property
    def last_error(self) -> StepError | None:
        return self._last_error

    @property
    def breakpoints(self) -> tuple[Breakpoint, ...]:
        return tuple(self._breakpoints)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def skipped_steps(self) -> int:
        return self._skipped_steps

    @property
    def current(self) -> StepProgress:
        s = self._state
        return StepProgress(
            step=s.step, next_phase=self._next_phase, phases_done=tuple(s.phases_done), loss=s.loss,
            total_grad_norm=s.total_grad_norm, phase_seconds=dict(s.phase_seconds), modules=s.modules,
            params=s.params, findings=tuple(s.findings), measured=s.measured, batch_size=s.batch_size,
        )

    @property
    def batch(self) -> Batch | None:
        """The batch of the step in progress (on the device), None between steps."""
        return self._state.batch

    def activation_sample(self, name: str) -> torch.Tensor | None:
        """Values of module ``name``'s output from the last measured forward, as a CPU tensor.

        The whole output when it has at most ``sample_size`` elements, else a fixed
        pseudo-random sample of that many; None when the module was not measured (or the
        next forward already started). For inspectors and histograms: the copy to the host
        is a deliberate sync, made only when asked.
        """
        return self._inst.activation_sample(name)

    @property
    def module_names(self) -> tuple[str, ...]:
        """Execution order once a forward ran (modules never called come last), else registration order."""
        return self._inst.module_names

    @property
    def module_tree(self) -> dict[str, ModuleNode]:
        return self._inst.module_tree

    # -- breakpoints ------------------------------------------------------------------
    def add_breakpoint(self, bp: Breakpoint | str) -> Breakpoint:
        if isinstance(bp, str):
            bp = Breakpoint.parse(bp)
        if bp not in self._breakpoints:
            self._breakpoints.append(bp)
        return bp

    def remove_breakpoint(self, bp: Breakpoint | str) -> None:
        if isinstance(bp, str):
            bp = Breakpoint.parse(bp)
        if bp in self._breakpoints:
            self._breakpoints.remove(bp)

    # -- stepping -------------------------------------------------------------------------
    def advance(self) -> PhaseResult:
        """Run exactly the next phase; a user exception becomes StepError."""
        phase = self._next_phase
        s = self._state
        wall, found, hit, record = self._run_phase()
        return PhaseResult(phase, s.step, wall, s.loss, found, hit, record)

    def _run_phase(self) -> tuple[float, tuple[Finding, ...], BreakHit | None, StepRecord | None]:
        """``advance`` without its PhaseResult: (wall seconds, findings, breakpoint hit, record).

        ``step_once`` and ``run`` step through this: the phases and their bookkeeping are the
        same, only the result object a caller of ``advance`` reads is not built.
        """
        self._check_open()
        self._pending_break = None
        phase = self._next_phase
        s = self._state
        before = s.charged
        self._inst.begin_phase()  # the findings of this phase start empty, whatever the phase
        start = time.perf_counter()
        try:
            if phase is Phase.FORWARD:
                self._forward(s)
            elif phase is Phase.LOSS:
                self._loss(s)
            elif phase is Phase.BACKWARD:
                self._backward(s)
            else:
                self._optimizer_step(s)
        except StepError:
            self._abort_step(s)
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit from user code too: a step failure, not our exit
            self._fail(phase, s, exc)
        try:
            return self._after_phase(phase, s, before, start)
        except RuntimeError as exc:
            # A DataLoader worker's death is raised by its SIGCHLD handler wherever the main
            # thread is, the bookkeeping after a phase included: still this step's failure.
            if not is_data_loading_error(exc):
                raise
            self._fail(phase, s, exc)

    def data_loading_error(self, exc: RuntimeError) -> StepError:
        """``exc`` raised between phases, in the caller's own loop, as the StepError it is when a
        DataLoader worker died: torch's SIGCHLD handler raises it wherever the main thread is, so
        it is the next step's data-loading failure. Any other error is raised again as it is."""
        if not is_data_loading_error(exc):
            raise exc
        try:
            self._fail(self._next_phase, self._state, exc)
        except StepError as error:
            return error

    def fail_step(self, exc: BaseException) -> StepError:
        """The step in progress ended by ``exc``, as the StepError it is (the step aborted, the
        engine usable), for what ``advance`` lets through but the caller knows came from the
        user's code: a KeyboardInterrupt in a process no Ctrl-C reaches (the TUI's engine host)."""
        try:
            self._fail(self._next_phase, self._state, exc)
        except StepError as error:
            return error

    def _fail(self, phase: Phase, s: StepState, exc: BaseException) -> NoReturn:
        exc = worker_death(exc) or exc  # a broken batch hand-over is the worker's death it hides
        error = None
        for _ in range(8):
            try:
                if is_data_loading_error(exc):
                    self._cycle.drop()  # first: a dead worker's DataLoader keeps raising from SIGCHLD
                error = StepError(phase, s.step, exc, self._error_context(phase, s, exc))
                break
            except RuntimeError as again:  # that handler fired again while this error was being built
                if not is_data_loading_error(again):
                    raise
        assert error is not None, "a DataLoader worker's death kept interrupting its own report"
        self._last_error = error
        self._abort_step(s)
        raise error from exc

    def _after_phase(self, phase: Phase, s: StepState, before: float,
                     start: float) -> tuple[float, tuple[Finding, ...], BreakHit | None, StepRecord | None]:
        wall = time.perf_counter() - start
        spent = s.charged - before
        # Phase time is the user's work: the debugger's own cost is accounted separately.
        s.phase_seconds[phase] = max(wall - spent - (s.data_seconds if phase is Phase.FORWARD else 0.0), 0.0)
        s.phases_done.append(phase)
        found = self._inst.phase_findings
        phase_findings = tuple(found) if found else ()
        if found:
            self._findings.extend(found)
        hit = self._check_breakpoints(phase, s, phase_findings) if self._breakpoints else None
        record = None
        if phase is Phase.OPTIMIZER_STEP:
            record = self._finish_step(s, skipped=False)
        else:
            self._next_phase = _NEXT[phase]
        self._pending_break = hit
        return wall, phase_findings, hit, record

    def step_once(self) -> StepRecord:
        """Finish the current step from whatever phase is next (breakpoints do not stop it)."""
        while True:
            record = self._run_phase()[3]
            if record is not None:
                self._pending_break = None
                return record

    def run(
        self,
        steps: int | None = None,
        *,
        until_break: bool = True,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> RunOutcome:
        """Complete ``steps`` steps (None: until stopped or a breakpoint).

        ``should_stop`` is polled between phases so a UI can pause mid-step;
        a StepError ends the run with stopped_by="error" (it is not raised).
        """
        if steps is not None and steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        done = 0
        while steps is None or done < steps:
            try:
                if should_stop is not None and should_stop():
                    return RunOutcome(done, StopReason.STOPPED)
                _, _, hit, record = self._run_phase()
                if record is not None:
                    done += 1
                    if on_step is not None:
                        on_step(record)
            except StepError as exc:
                return RunOutcome(done, StopReason.ERROR, error=exc)
            except RuntimeError as exc:  # in should_stop or on_step
                return RunOutcome(done, StopReason.ERROR, error=self.data_loading_error(exc))
            if until_break and hit is not None:
                return RunOutcome(done, StopReason.BREAKPOINT, hit)
        return RunOutcome(done, StopReason.STEPS)

    @property
    def rewindable_steps(self) -> tuple[int, ...]:
        """The steps whose start ``rewind`` can return to (oldest first)."""
        return self._snapshots.steps()

    @property
    def replay_steps(self) -> tuple[int, ...]:
        """Rewound steps still to replay on their kept batches (in order)."""
        return tuple(x.step for x in self._replay)

    @property
    def snapshot_bytes(self) -> int:
        return self._snapshots.bytes

    def rewind(self, steps: int = 1, *, measure: bool = True) -> int:
        """Go back to the start of a recent step; returns the step that runs next.

        ``steps`` counts step starts: with a step in progress, 1 is its own start;
        between steps, 1 is the previous step's. Model, optimizer, scheduler, RNG
        streams and the health rules' state are restored; the rewound steps' batches
        are replayed, in order, before the data is read again, so the replay sees
        the same inputs. Their records and findings are dropped from the history
        and made again. ``measure`` takes full stats on every replayed step,
        whatever ``stats_every`` is: replay with the heavy instruments on.
        """
        self._check_open()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        in_progress = bool(self._state.phases_done)
        target = self._step - steps + (1 if in_progress else 0)
        origin = self._step + (1 if in_progress else 0)
        refusal = self._snapshots.refusal(target, origin, started=self._step > 0)
        if refusal is not None:
            raise ValueError(refusal)
        snap = self._snapshots.get(target)
        assert snap is not None  # refusal() said it is kept
        later = self._snapshots.drop_from(target)
        self._replay = deque([x for x in later if x.batch is not None] + list(self._replay))
        snap.restore(self._scenario, self._scaler)
        abandon_update(self._scaler)  # rewound after a backward: its unscale_ is forgotten too
        health = copy.deepcopy(snap.health)
        # Found once, on the first measured forward, which a rewind to step 0 goes back before.
        health.cancelled_biases = self._inst.health.cancelled_biases
        self._inst.health = health
        self._skipped_steps -= sum(1 for r in self._history if r.step >= target and r.skipped)
        self._probe.reset()
        self._pending_break = None
        self._step = target
        self._next_phase = Phase.FORWARD
        self._history = deque((r for r in self._history if r.step < target), maxlen=self.config.history)
        self._findings = deque((f for f in self._findings if f.step < target), maxlen=self.config.max_findings)
        if target == 0:
            self._findings.extend(self._setup_findings)
        if measure:
            self._measure_until = max(self._measure_until, origin)
        self._state = self._new_state()
        if not self.replay_exact:
            note = Finding(target, Phase.FORWARD, "", None, SCENARIO_CONFIG, SeverityLevel.WARNING, None, None,
                           f"rewound to step {target}, but the scenario keeps state outside the model "
                           "(carries_state=True) and gives no state()/load_state(): the replay starts "
                           "from that state as it is now, not as it was at that step, so it is not "
                           "bit-identical. Give the Scenario state= and load_state= to snapshot it.")
            self._findings.append(note)
            self._state.findings.append(note)
        return target

    def skip_step(self) -> StepRecord:
        """Drop what is left of the current step (usually its optimizer step) and move on."""
        self._check_open()
        if not self._state.phases_done:
            raise RuntimeError("no step in progress to skip: the next phase is the forward of a new step")
        self._pending_break = None
        s = self._state
        self._scenario.optimizer.zero_grad(set_to_none=True)
        abandon_update(self._scaler)  # the backward's unscale_ must not block the next step's
        s.lrs = self._lrs()
        self._probe.reset()
        return self._finish_step(s, skipped=True)

    def close(self) -> None:
        """Remove every hook, restore training flags and RNG state. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._state = self._new_state()
        self._restore.close()  # hooks removed, training flags and RNG streams restored

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- phases -----------------------------------------------------------------------------
    def _forward(self, s: StepState) -> None:
        snap = None
        if self.config.snapshots:
            t0 = time.perf_counter()
            try:
                snap = snapshots.take(self._scenario, s.step, self._cycle.epoch, self._cycle.batches_in_epoch,
                                      self._inst.health, self.config.snapshot_budget, scaler=self._scaler)
                self._snapshots.too_big = None
            except snapshots.SnapshotTooLarge as big:
                # A step without a snapshot breaks the chain: older ones could not be replayed
                # past it on the same batches, so none are kept.
                self._snapshots.too_big = big.size
                self._snapshots.drop_from(0)
            s.charge("snapshot", time.perf_counter() - t0)
        t0 = time.perf_counter()
        batch = self._next_batch()
        if snap is not None:
            snap.drawn(batch, self._cycle.epoch, self._cycle.batches_in_epoch)
            self._snapshots.add(snap)
        s.batch_size = batch.size  # known before the copy, so an OOM in .to() can name it
        batch = batch.to(self._device)
        s.data_seconds = time.perf_counter() - t0
        s.batch = batch
        if self._cycle.epoch_started:  # the first batch of a new epoch: a per-epoch scheduler steps
            last = self._history[-1].loss if self._history else None
            scheduler_at_epoch(self._scenario, s.step, self._cycle.epoch, last)
        memory.reset_peak(self._device)
        scale = self._inst.begin_forward(s)
        try:
            with self._scenario.autocast():
                s.outputs = self._scenario.call_model(batch)
        finally:
            self._inst.end_forward(s, scale)
        self._inst.forward_stats(s, scale, lambda: self._bad_data(s, Phase.FORWARD, targets=False))

    def _loss(self, s: StepState) -> None:
        assert s.batch is not None
        diagnosis = self._inst.health.diagnosis
        with diagnosis.watch_loss(s.outputs, s.batch.loss_arg, s.step) as watch, self._scenario.autocast():
            value = self._scenario.compute_loss(s.outputs, s.batch)
        self._inst.loss_value(s, value.total, value.parts, value.source, watch,
                              lambda: self._bad_data(s, Phase.LOSS, targets=True))

    def _backward(self, s: StepState) -> None:
        assert s.loss_tensor is not None
        self._inst.refresh_params()  # a layer unfrozen since the last step is measured from this one
        self._probe.seconds = 0.0
        scaler = self._scaler
        if scaler is not None:
            # Sync point (fp16 only): the scale this backward uses, to unscale the activation norms.
            s.grad_scale = float(scaler.get_scale())
        backward(s.loss_tensor, scaler)
        if scaler is not None:
            t0 = time.perf_counter()
            # True gradients from here on: the stats, clipping and before_step see them unscaled.
            scaler.unscale_(self._scenario.optimizer)
            s.sub_phase_seconds["unscale"] = time.perf_counter() - t0
        s.charge("grad_hooks", self._probe.seconds)
        if self._scenario.clip_grad_norm is not None:
            # The norm clipping scales by, computed once: the unmeasured step's total norm is
            # this tensor, and prepare_update clips with it instead of computing it again.
            t0 = time.perf_counter()
            s.clip_norm = clip_total_norm(self._scenario.model)
            s.clip_norm_seconds = time.perf_counter() - t0
        self._inst.backward_stats(s, self._scenario.optimizer, scaler,
                                  total=s.clip_norm.norm if s.clip_norm is not None else None)

    def _optimizer_step(self, s: StepState) -> None:
        scenario = self._scenario
        s.lrs = self._lrs()
        prep = prepare_update(scenario, self._scaler, unscaled=self._scaler is not None, grad_norm=s.clip_norm)
        if prep.grad_norm is not None:
            s.sub_phase_seconds["clip_grad"] = prep.clip_seconds + s.clip_norm_seconds
        if scenario.before_step is not None:
            s.sub_phase_seconds["before_step"] = prep.before_step_seconds
        before = self._inst.before_update(s)
        apply_update(scenario, self._scaler)
        if self._scaler is not None:
            # Sync point (fp16 only): a lower scale after update() means the scaler skipped the step.
            s.amp_skipped = float(self._scaler.get_scale()) < (s.grad_scale or 0.0)
        scheduler_after_update(scenario, s.step + 1, self._cycle.epoch, s.loss)
        if prep.grad_norm is not None:
            self._record_clipping(s, prep.grad_norm)
        self._inst.update_stats(s, before, scenario.optimizer, scenario.scheduler, self._cycle.epoch)

    # -- helpers ---------------------------------------------------------------------------
    def _record_clipping(self, s: StepState, norm: torch.Tensor) -> None:
        max_norm = float(self._scenario.clip_grad_norm or 0.0)
        if s.clip_norm is not None and norm is s.clip_norm.norm and s.clip_before is not None:
            total = s.clip_before  # read with the backward's transfer: no wait for the optimizer step
        else:
            # Sync point (clip_grad_norm set, the norm computed by the clipping itself): one scalar.
            total = float(cast(float, norm.tolist()))
        s.clip_before = total
        s.clip_after = total * min(1.0, max_norm / (total + 1e-6)) if math.isfinite(total) else total
        clipped = math.isfinite(total) and total > max_norm
        self._clip_counts[0] += int(clipped)
        self._clip_counts[1] += 1
        self._clip_recent.append(clipped)
        window = len(self._clip_recent)
        share = sum(self._clip_recent) / window
        if window >= CLIP_WINDOW // 2 and share >= 0.5 and not self._clip_reported:
            self._clip_reported = True
            self._inst.run_health(s, lambda: [Finding(
                s.step, Phase.OPTIMIZER_STEP, "", None, GRAD_CLIPPING, SeverityLevel.WARNING, share, 0.5,
                f"clip_grad_norm={max_norm:g} clipped {sum(self._clip_recent)} of the last {window} steps "
                f"(this step's norm {total:.3g}): clipping is the rule, not a guard, so the real step size is "
                "lr x max_norm / norm. Raise max_norm above the typical gradient norm or lower the lr.")])
        elif share < 0.25:
            self._clip_reported = False

    def _new_state(self) -> StepState:
        measured = self._step % self.config.stats_every == 0 or self._step < self._measure_until
        state = StepState(step=self._step, measured=measured)
        if self._step == 0:
            state.findings.extend(self._setup_findings)
        return state

    def _lrs(self) -> tuple[float, ...]:
        return lr_values(self._scenario.optimizer.param_groups)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Engine is closed; build a new one")

    def _next_batch(self) -> Batch:
        if self._replay:  # a rewound step: the batch and RNG it had the first time
            first = self._replay.popleft()
            first.restore_rng()
            self._cycle.epoch, self._cycle.batches_in_epoch = first.epoch, first.batches_in_epoch
            assert first.batch is not None
            return first.batch
        return next(self._cycle)  # cycles: the data restarts when exhausted, counting the epoch

    def _check_breakpoints(self, phase: Phase, s: StepState, phase_findings: Sequence[Finding]) -> BreakHit | None:
        # Pause before the optimizer step (after backward), with everything the step found so far;
        # update findings only exist after the step, so those pause right after it.
        if not self._breakpoints:
            return None
        if phase is Phase.BACKWARD:
            candidates: Sequence[Finding] = s.findings
        elif phase is Phase.OPTIMIZER_STEP:
            candidates = phase_findings
        else:
            return None
        for bp in self._breakpoints:
            if phase is Phase.OPTIMIZER_STEP and bp.condition != "finding":
                continue
            hit = bp.check(step=s.step, phase=phase, loss=s.loss, total_grad_norm=s.total_grad_norm,
                           findings=candidates)
            if hit is not None:
                return hit
        return None

    def _finish_step(self, s: StepState, *, skipped: bool) -> StepRecord:
        t0 = time.perf_counter()
        mem = memory.sample(self._device, s.activation_bytes, rss=memory.rss_for(s.measured, self.last_record))
        s.charge("memory", time.perf_counter() - t0)
        record = StepRecord(
            step=s.step, loss=s.loss, total_grad_norm=s.total_grad_norm, lrs=s.lrs,
            phase_seconds=s.phase_seconds, memory=mem, modules=s.modules, params=s.params,
            findings=tuple(s.findings), skipped=skipped,
            instrument_seconds=s.charged, instrument_breakdown=s.instrument,
            epoch=self._cycle.epoch, batch_size=s.batch_size, measured=s.measured,
            data_seconds=s.data_seconds, loss_parts=s.loss_parts, loss_source=s.loss_source,
            grad_norm_before_clip=s.clip_before, grad_norm_after_clip=s.clip_after,
            clipped=None if s.clip_before is None else s.clip_before > float(self._scenario.clip_grad_norm or 0.0),
            grad_scale=s.grad_scale, amp_skipped=s.amp_skipped, sub_phase_seconds=s.sub_phase_seconds,
        )
        if skipped:
            self._skipped_steps += 1
        self._history.append(record)
        self._step += 1
        self._next_phase = Phase.FORWARD
        self._state = self._new_state()
        return record

    def _error_context(self, phase: Phase, s: StepState, exc: BaseException) -> ErrorContext:
        b = s.batch
        if b is None:
            inputs: Sequence[Any] = ()
        elif b.style == PAIR:
            inputs = (b.inputs,) if isinstance(b.inputs, dict) else tuple(b.inputs)
        else:
            inputs = (b.data,)
        return ErrorContext(
            batch_size=s.batch_size or None,
            call=describe_call(phase, inputs, s.outputs, b.loss_arg if b is not None else None, self._device),
            module=innermost_module(exc, self._scenario.model) if phase is Phase.FORWARD else None,
        )

    def _abort_step(self, s: StepState) -> None:
        """Leave the engine usable after a user exception: the next call starts a fresh step.

        The failed step's tensors are dropped here (the StepError's traceback still
        references ``s``), so after an out-of-memory error the memory really is free.
        """
        s.outputs, s.loss_tensor, s.batch = None, None, None
        self._probe.reset()
        try:
            self._scenario.optimizer.zero_grad(set_to_none=True)
            abandon_update(self._scaler)  # an fp16 step that failed after its unscale_
        except Exception:  # a broken optimizer must not hide the user's original error
            pass
        if self._device.type == "cuda":
            # Hand the failed step's cached blocks back so the next step (or another
            # process) starts from a clean allocator; cheap, and only on an error.
            torch.cuda.empty_cache()
        self._step += 1
        self._next_phase = Phase.FORWARD
        self._state = self._new_state()

    def _bad_data(self, s: StepState, phase: Phase, *, targets: bool) -> list[Finding]:
        """A non_finite_data finding per NaN/Inf tensor of the batch (only on a step already non-finite)."""
        batch = s.batch
        if batch is None:
            return []
        if batch.style == PAIR:
            parts: list[tuple[str, Any]] = [("inputs", batch.inputs)] + ([("targets", batch.targets)] if targets else [])
        else:
            parts = [("batch", batch.data)]
        label = f"batch {self._cycle.batches_in_epoch - 1} of epoch {self._cycle.epoch} (step {s.step})"
        return self._inst.health.diagnosis.non_finite_data(s.step, phase, find_non_finite(parts, batch.batch_dim), label)
