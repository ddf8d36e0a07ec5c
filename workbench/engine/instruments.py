"""The instruments at each phase boundary of a training step, whoever owns the loop.

``Instruments`` holds what the engine measures with: the ActivationProbe (module
hooks), the parameter references and the health rules with their running
state. Its methods are the phase boundaries: ``begin_forward`` /
``end_forward`` around the model call, then ``forward_stats``, ``loss_value``,
``backward_stats``, ``before_update`` / ``update_stats`` around the optimizer step.
Each ends with at most ONE device->host transfer (marked "Sync point"). The
scenario ``Engine`` calls them from its phases; ``workbench.watch`` calls them from
hooks on a user's own model and optimizer. One implementation, two loop owners.

The step in progress is a mutable :class:`StepState` the caller owns; the
methods fill it in (modules, params, findings, timings charged per instrument).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.engine.diagnosis import InputScaleProbe, LossWatch, recurrent_modules
from workbench.engine.health import HealthMonitor, HealthThresholds
from workbench.engine.nan_root import BackwardRoot, backward_root, forward_root
from workbench.engine.params import (
    ParamRef,
    grad_readings,
    norms_f32,
    own_and_shared,
    owned_count,
    param_owners,
    param_refs,
    param_stats_from_rows,
    total_grad_norm_tensor,
)
from workbench.engine.probe import ActivationProbe, CallInfo, CallStats, stack_f32
from workbench.engine.records import (
    AMP_OVERFLOW,
    NAN_INF,
    Finding,
    ModuleNode,
    ModuleStats,
    ParamStats,
    Phase,
    Severity,
    SeverityLevel,
    build,
    evolve,
)
from workbench.scenario.step import ClipNorm

# Findings made on demand, only on a step that already went non-finite (the batch's NaN/Inf).
DataCheck = Callable[[], list[Finding]]

@dataclass(slots=True)
class StepState:
    """The step in progress (mutable; the engine exposes it as a frozen StepProgress)."""

    step: int
    measured: bool
    phases_done: list[Phase] = field(default_factory=list)
    batch: Any = None  # the engine's Batch, on the device
    batch_size: int = 0
    outputs: Any = None
    loss_tensor: torch.Tensor | None = None
    loss: float | None = None
    total_grad_norm: float | None = None
    lrs: tuple[float, ...] = ()
    phase_seconds: dict[Phase, float] = field(default_factory=dict)
    data_seconds: float = 0.0
    modules: tuple[ModuleStats, ...] = ()
    params: tuple[ParamStats, ...] = ()
    findings: list[Finding] = field(default_factory=list)
    outputs_finite: bool | None = None
    activation_bytes: int | None = None
    instrument: dict[str, float] = field(default_factory=dict)
    loss_parts: dict[str, float] = field(default_factory=dict)
    loss_source: str = "loss_fn"
    clip_before: float | None = None
    clip_after: float | None = None
    grad_scale: float | None = None
    amp_skipped: bool = False
    sub_phase_seconds: dict[str, float] = field(default_factory=dict)
    clip_norm: ClipNorm | None = None  # clipping on: the total norm it scales by (computed in backward)
    clip_norm_seconds: float = 0.0

    charged: float = 0.0  # the sum of ``instrument``, kept as it grows (read around every phase)

    def charge(self, what: str, seconds: float) -> None:
        self.instrument[what] = self.instrument.get(what, 0.0) + seconds
        self.charged += seconds


class Instruments:
    """Probe, parameter stats and health rules for one model; see the module docstring.

    ``params``: the parameters measured (default: every trainable one of ``model``).
    Hooks are not attached here: call ``probe.attach()`` (and ``probe.detach()``) when
    the owner of the loop wants them.
    """

    def __init__(self, model: nn.Module, *, sample_size: int = 4096,
                 thresholds: HealthThresholds | None = None) -> None:
        self.model = model
        thresholds = thresholds or HealthThresholds()
        self.probe = ActivationProbe(model, sample_size, saturation_band=thresholds.saturation_band)
        self.params: list[ParamRef] = param_refs(model)
        self._all = [p for _, p in model.named_parameters()]
        self._trainable = self._trainable_now()
        self.health = HealthMonitor(thresholds)
        self.health.diagnosis.set_param_names(model)
        self.recurrent = recurrent_modules(model)
        self.phase_findings: list[Finding] = []  # what the phase in progress found
        self._biases_checked = False
        self._amp_skips_in_row = 0

    # -- views --------------------------------------------------------------------------
    def activation_sample(self, name: str) -> torch.Tensor | None:
        """Module ``name``'s output sample from the last measured forward, as a CPU tensor (or None).

        The copy to the host is a deliberate sync, made only when asked.
        """
        sample = self.probe.sample_of(name)
        return None if sample is None else sample.detach().to("cpu", copy=True)

    @property
    def module_names(self) -> tuple[str, ...]:
        """Execution order once a forward ran (modules never called come last), else registration order."""
        registered = [name for name, _ in self.model.named_modules()]
        seen = self.probe.execution_order
        if not seen:
            return tuple(registered)
        seen_set = set(seen)
        return tuple(seen + [n for n in registered if n not in seen_set])

    @property
    def module_tree(self) -> dict[str, ModuleNode]:
        tree: dict[str, ModuleNode] = {}
        owners = param_owners(self.model)  # a tied weight counts once, at its owner
        for name, module in self.model.named_modules():
            children = tuple(f"{name}.{c}" if name else c for c, _ in module.named_children())
            own, shared = own_and_shared(module, name, owners)
            tree[name] = ModuleNode(
                name=name, type_name=type(module).__name__, children=children,
                own_params=sum(p.numel() for p in own),
                total_params=owned_count(module, name, owners),
                shared_params=tuple(shared),
            )
        return tree

    def _trainable_now(self) -> tuple[bool, ...]:
        return tuple(p.requires_grad for p in self._all)

    def refresh_params(self) -> bool:
        """Measure the parameters trainable now: a frozen layer unfrozen later (progressive
        unfreezing) is measured, and counted in the total gradient norm, from then on; one frozen
        later is left out. A look at each parameter's requires_grad (host-side, about 0.1 us
        apiece) per step. True when the set changed (the caller's per-optimizer split with it)."""
        now = self._trainable_now()
        if now == self._trainable:
            return False
        self._trainable = now
        self.params = param_refs(self.model)
        return True

    # -- health ---------------------------------------------------------------------------
    def begin_phase(self) -> None:
        self.phase_findings = []

    def run_health(self, s: StepState, rule: Callable[[], list[Finding]]) -> None:
        t0 = time.perf_counter()
        # Findings that follow from another one of the step (a NaN loss from NaN data) name it as cause.
        found = self.health.diagnosis.link(s.step, rule(), s.loss)
        if found:
            s.findings.extend(found)
            self.phase_findings.extend(found)
        s.charge("health", time.perf_counter() - t0)

    # -- forward --------------------------------------------------------------------------
    def begin_forward(self, s: StepState) -> InputScaleProbe | None:
        """Arm the probe for this step's forward (measuring when ``s.measured``)."""
        scale = InputScaleProbe(self.model) if self.health.diagnosis.wants_input_scale(s.measured) else None
        self.probe.begin_forward(s.measured)
        return scale

    def end_forward(self, s: StepState, scale: InputScaleProbe | None) -> None:
        """Disarm after the model call (in a ``finally``: also when it raised)."""
        self.probe.end_forward()
        s.charge("forward_hooks", self.probe.seconds)
        if scale is not None:
            scale.remove()

    def forward_stats(self, s: StepState, scale: InputScaleProbe | None, bad_data: DataCheck | None = None) -> None:
        """Module stats of a measured forward (its one transfer) and the forward health rules.

        ``bad_data``: names the batch's NaN/Inf tensors, asked only when a module received
        non-finite inputs.
        """
        if not s.measured:
            return
        t0 = time.perf_counter()
        stacked = self.probe.forward_tensor()
        # Sync point: the forward's one device->host transfer, all modules at once.
        decoded = self.probe.decode_forward(stacked.tolist() if stacked is not None else [])
        calls = self.probe.calls
        s.modules, first_bad = self._module_stats(calls, decoded)
        s.outputs_finite = first_bad is None
        root = forward_root(self.model, first_bad)
        s.activation_bytes = self._activation_bytes(calls)
        if not self._biases_checked:  # the layer order is known after the first measured forward
            self.health.cancelled_biases = self._biases_before_batchnorm()
            self._biases_checked = True
        s.charge("forward_stats", time.perf_counter() - t0)
        diagnosis = self.health.diagnosis
        self.run_health(s, lambda: self.health.forward(s.step, s.modules, root)
                        + (diagnosis.input_scale(s.step, scale) if scale is not None else [])
                        + (bad_data() if bad_data is not None and root and not root.inputs_finite else []))

    # -- loss -----------------------------------------------------------------------------
    def loss_value(self, s: StepState, total: torch.Tensor, parts: Mapping[str, torch.Tensor] | None = None,
                   source: str = "loss_fn", watch: LossWatch | None = None,
                   bad_data: DataCheck | None = None) -> None:
        """Read the loss (and its named parts) in the LOSS phase's one transfer; the loss rules.

        ``watch``: what ``diagnosis.watch_loss`` saw around the loss call, when the caller ran
        it there; ``bad_data`` as in forward_stats, asked when the loss is non-finite from
        outputs not known to be non-finite.
        """
        parts = parts or {}
        s.loss_tensor, s.loss_source = total, source
        t0 = time.perf_counter()
        if parts:
            scalars = [total, *parts.values()]
            # Sync point: the loss value and its named parts, stacked: the LOSS phase's one transfer
            # (on the loss's device: a part may be a CPU tensor next to a CUDA loss).
            numbers = stack_f32([t.detach().reshape(()) for t in scalars], total.device).tolist()
            s.loss = float(numbers[0])
            s.loss_parts = dict(zip(parts, map(float, numbers[1:])))
        else:
            # Sync point: the loss value, the LOSS phase's one transfer (what a user's loss.item() is).
            s.loss = float(total.detach().item())
            s.loss_parts = {}
        s.charge("loss_value", time.perf_counter() - t0)
        self.loss_rules(s, watch, bad_data)

    def loss_rules(self, s: StepState, watch: LossWatch | None = None, bad_data: DataCheck | None = None) -> None:
        """The loss health rules on ``s.loss`` (already read)."""
        diagnosis = self.health.diagnosis
        bad = s.loss is not None and not math.isfinite(s.loss) and s.outputs_finite is not False
        self.run_health(s, lambda: (bad_data() if bad and bad_data is not None else [])
                        + diagnosis.loss(s.step, watch or LossWatch(), s.loss)
                        + self.health.loss(s.step, s.loss, s.outputs_finite, s.loss_parts or None))

    # -- backward -------------------------------------------------------------------------
    def backward_stats(self, s: StepState, optimizer: Any, scaler: torch.amp.GradScaler | None = None,
                       params: list[ParamRef] | None = None, total_rule: bool = True,
                       total: torch.Tensor | None = None) -> None:
        """Gradient stats after backward (the backward's one transfer) and the backward rules.

        ``optimizer``: what holds the parameters (anything with ``param_groups``), for the
        unowned-parameter rule. ``scaler``: the fp16 GradScaler whose overflow steps are
        reported as such. ``params``: the parameters judged (default: all); ``total_rule``:
        judge their total norm as the model's (False when it is only part of the model's).
        ``total``: the total norm of these gradients as a device tensor, when the caller
        already has it (the clipping's): an unmeasured step reads it instead of its own, a
        measured one with its other numbers; either way its value lands in ``s.clip_before``,
        so the clipping's record needs no transfer of its own.
        """
        refs = self.params if params is None else params
        t0 = time.perf_counter()
        root = None
        if s.measured:
            readings = grad_readings(refs)
            act = self.probe.grad_norms  # squared norms of the output gradients, backward order
            scalars = act + (readings.scalars if readings is not None else [])
            # Sync point: the backward's one transfer (activation-grad norms + parameter stats,
            # and the clipping's total norm last).
            if total is not None:
                scalars = scalars + [total]
            flat = stack_f32(scalars).tolist() if scalars else []
            if total is not None:
                s.clip_before = flat.pop()
            act_norms = [math.sqrt(v) if v >= 0 else v for v in flat[:len(act)]]
            if s.grad_scale:  # activation gradients are the scaled ones under fp16
                act_norms = [n / s.grad_scale for n in act_norms]
            rows = readings.rows(flat[len(act):]) if readings is not None else []
            with_grad = readings.with_grad if readings is not None else []
            stats = param_stats_from_rows(refs, rows, with_grad)
            norms = [p.grad_norm for p in stats if p.grad_norm is not None]
            s.total_grad_norm = math.sqrt(sum(n * n for n in norms)) if norms else None
            s.params = tuple(stats)
            s.modules = self._attach_grad_norms(s.modules, act_norms)
            if s.loss is None or math.isfinite(s.loss):
                root = backward_root(self.probe.calls, self.probe.grad_calls, act_norms, stats,
                                     self.probe.model_output_call)
        else:
            clipping = total is not None
            if total is None:
                total, have_grad = total_grad_norm_tensor(refs)
            else:
                have_grad = sum(1 for p in refs if p.param.grad is not None)
            # Sync point: the backward's one transfer on an unmeasured step (total grad norm only).
            s.total_grad_norm = float(total.item()) if total is not None else None
            if clipping:
                s.clip_before = s.total_grad_norm
            if have_grad < len(refs):  # a host-side check: no transfer needed to see a missing .grad
                no_grad = [p for p in refs if p.param.grad is None]
                s.params = tuple(ParamStats(p.name, p.module, tuple(p.param.shape), None, None, None,
                                            None, None, None, None, has_grad=False) for p in no_grad)
        s.charge("backward_stats", time.perf_counter() - t0)
        self.run_health(s, lambda: self._backward_health(s, root, optimizer, scaler, total_rule))

    def _backward_health(self, s: StepState, root: BackwardRoot | None, optimizer: Any,
                         scaler: torch.amp.GradScaler | None, total_rule: bool = True) -> list[Finding]:
        diagnosis = self.health.diagnosis
        found = (diagnosis.unowned_parameters(s.step, self.model, optimizer)
                 + self.health.backward(s.step, s.total_grad_norm if total_rule else None, s.params, root,
                                        s.measured)
                 + diagnosis.recurrent(s.step, s.params, self.recurrent))
        overflow = (scaler is not None and s.total_grad_norm is not None
                    and not math.isfinite(s.total_grad_norm) and (s.loss is None or math.isfinite(s.loss)))
        if not overflow:
            self._amp_skips_in_row = 0
            return found
        # fp16 with a GradScaler: inf gradients from a finite loss are how the scaler finds its
        # scale; it skips this step and halves the scale. Said as such, not as a NaN in the model.
        self._amp_skips_in_row += 1
        n = self._amp_skips_in_row
        severity: Severity = SeverityLevel.WARNING if n >= 3 else SeverityLevel.INFO
        advice = ("" if n < 3 else f" {n} steps in a row: the model overflows fp16 even at small scales; "
                  "compare layers with `workbench diff --b fp16`, or train with amp='bf16'.")
        kept = [f for f in found if f.kind != NAN_INF]
        kept.append(Finding(s.step, Phase.BACKWARD, "", None, AMP_OVERFLOW, severity, s.grad_scale, None,
                            f"fp16 GradScaler: inf/NaN gradients at scale {s.grad_scale:g}; this optimizer step "
                            f"is skipped and the scale is lowered.{advice}"))
        return kept

    # -- optimizer step -------------------------------------------------------------------
    def before_update(self, s: StepState, params: list[ParamRef] | None = None) -> list[torch.Tensor] | None:
        """On a measured step, a copy of the parameters the update is measured against."""
        refs = self.params if params is None else params
        before: list[torch.Tensor] | None = None
        t0 = time.perf_counter()
        if s.measured and refs:
            with torch.no_grad():
                # One fused copy of every parameter (the update is measured against it).
                before = list(torch._foreach_mul([r.param for r in refs], 1.0))
        s.charge("update_stats", time.perf_counter() - t0)
        return before

    def update_stats(self, s: StepState, before: list[torch.Tensor] | None, optimizer: Any, scheduler: Any,
                     epoch: int, params: list[ParamRef] | None = None, window_rules: bool = True) -> None:
        """Update norms after the optimizer step (its one transfer) and the update rules.

        ``window_rules``: run the once-per-step rules (lr, progress, oscillation) too; a loop
        with several optimizers runs them after the last one only.
        """
        refs = self.params if params is None else params
        diagnosis = self.health.diagnosis

        def windows(params: Sequence[ParamStats]) -> list[Finding]:
            if not window_rules:
                return []
            return diagnosis.after_step(s.step, s.lrs, params, optimizer, scheduler, epoch)

        if before is None:
            self.run_health(s, lambda: windows(()))
            return
        t0 = time.perf_counter()
        with torch.no_grad():
            now: list[torch.Tensor] = [r.param for r in refs]
            # In place on the copy: the copy's last use, and no second set of buffers.
            torch._foreach_sub_(before, now)
            stacked = stack_f32(norms_f32(before))
        # Sync point: the optimizer phase's one transfer (the update norms). The weights' own
        # norms after the step are not read: they are finite exactly when the update is (the
        # weights before were, or the backward said so), so a non-finite update norm is what
        # says the step wrote NaN/Inf into them.
        updates = stacked.tolist()
        by_name = {p.name: p for p in s.params}
        measured = {r.name for r in refs}
        params_out: list[ParamStats] = []
        suspects: list[tuple[ParamRef, ParamStats]] = []
        for ref, upd in zip(refs, updates):
            p = by_name.get(ref.name)
            if p is None:
                continue
            w = p.weight_norm
            ratio = upd / w if w is not None and w > 0 and math.isfinite(w) else None
            p = evolve(p, update_norm=upd, update_ratio=ratio)
            params_out.append(p)
            if not math.isfinite(upd) and (w is None or math.isfinite(w)):
                suspects.append((ref, p))
        non_finite = self._now_non_finite(suspects)
        # Parameters measured by another optimizer's step of the same step keep their stats.
        s.params = tuple(params_out) + tuple(p for p in s.params if p.name not in measured)
        s.charge("update_stats", time.perf_counter() - t0)
        updated = tuple(params_out)
        self.run_health(s, lambda: self.health.optimizer_step(s.step, updated, non_finite) + windows(s.params))

    @staticmethod
    def _now_non_finite(suspects: list[tuple[ParamRef, ParamStats]]) -> list[ParamStats]:
        """Of the parameters whose update norm is inf or NaN, those whose weights now are (their
        stats with that norm as the weights'). A finite update can have an inf float32 norm
        (elements past ~1e19): then the weights are still finite, and saying they turned
        non-finite would be false. Asked only on such a step: one deliberate extra sync."""
        if not suspects:
            return []
        with torch.no_grad():
            # Sync point (only when an update norm is not finite): are the weights themselves?
            finite = stack_f32([torch.isfinite(ref.param).all() for ref, _ in suspects]).tolist()
        return [evolve(p, weight_norm=p.update_norm) for (_, p), ok in zip(suspects, finite) if not ok]

    # -- helpers ---------------------------------------------------------------------------
    def _module_stats(self, calls: list[CallInfo], stats: list[CallStats]) -> tuple[tuple[ModuleStats, ...], tuple[str, bool] | None]:
        last: dict[str, tuple[CallInfo, CallStats]] = {}
        counts: dict[str, int] = {}
        root: tuple[str, bool] | None = None
        fallback: tuple[str, bool] | None = None
        for call, st in zip(calls, stats):
            counts[call.name] = counts.get(call.name, 0) + 1
            last[call.name] = (call, st)
            if not call.measured or st.output is None or st.output.finite:
                continue
            # Calls are in completion order: a child before its parent, so the first
            # non-finite output with finite inputs is the innermost culprit.
            if st.inputs_finite and root is None:
                root = (call.name, True)
            if fallback is None:
                fallback = (call.name, False)
        order = {name: i for i, name in enumerate(self.probe.execution_order)}
        out = [self._one_module(call, st, counts[name]) for name, (call, st) in last.items()]
        out.sort(key=lambda m: order.get(m.name, len(order)))
        return tuple(out), root or fallback

    @staticmethod
    def _one_module(call: CallInfo, st: CallStats, calls: int) -> ModuleStats:
        type_name = type(call.module).__name__
        o = st.output
        if not call.measured or o is None:
            return build(ModuleStats, name=call.name, type_name=type_name, shape=(), dtype="", device="",
                         mean=None, std=None, min=None, max=None, abs_max=None, zero_fraction=None,
                         nan_count=None, inf_count=None, bytes=0, calls=calls, inputs_finite=st.inputs_finite)
        mn, mx = o.min, o.max
        finite = o.finite
        # NaN/Inf were counted in the sample: scaled to the whole tensor, at least 1 when min/max show one.
        scale = max(call.numel, 1) / max(o.sample_n, 1.0)
        nan = 0 if finite else max(int(round(o.nan * scale)), 1 if math.isnan(mn) else 0)
        inf = 0 if finite else max(int(round(o.inf * scale)), 1 if (math.isinf(mn) or math.isinf(mx)) else 0)
        return build(
            ModuleStats, name=call.name, type_name=type_name, shape=call.shape, dtype=call.dtype, device=call.device,
            mean=o.mean, std=o.std, min=mn, max=mx,
            abs_max=max(abs(mn), abs(mx)) if not (math.isnan(mn) or math.isnan(mx)) else float("nan"),
            zero_fraction=o.zero_fraction, nan_count=nan, inf_count=inf, bytes=call.nbytes, calls=calls,
            inputs_finite=st.inputs_finite, dead_fraction=o.dead_fraction,
            saturated_fraction=o.saturated_fraction, sampled=call.sampled,
        )

    def _biases_before_batchnorm(self) -> set[str]:
        """Biases of leaf modules whose next module in execution order is a BatchNorm/InstanceNorm."""
        modules = dict(self.model.named_modules())
        leaves = [n for n in self.probe.execution_order
                  if n in modules and not any(True for _ in modules[n].children())]
        cancelled = set()
        for name, following in zip(leaves, leaves[1:]):
            bias = getattr(modules[name], "bias", None)
            norm = isinstance(modules[following], (torch.nn.modules.batchnorm._BatchNorm,
                                                   torch.nn.modules.instancenorm._InstanceNorm))
            if norm and isinstance(bias, torch.nn.Parameter):
                cancelled.add(f"{name}.bias" if name else "bias")
        return cancelled

    @staticmethod
    def _activation_bytes(calls: list[CallInfo]) -> int:
        # Each storage once: views (a transpose), eval Dropout and Identity return memory
        # another module's output already holds.
        seen: set[int] = set()
        total = 0
        for call in calls:
            key = call.storage or call.out_id or -1
            if call.is_leaf and call.measured and key not in seen:
                seen.add(key)
                total += call.storage_bytes or call.nbytes
        return total

    def _attach_grad_norms(self, modules: tuple[ModuleStats, ...], norms: list[float]) -> tuple[ModuleStats, ...]:
        by_name: dict[str, float] = {}
        calls = self.probe.calls
        grad_of = dict(zip(self.probe.grad_calls, norms))
        for call in calls:  # a later call of the same module wins: stats describe the last call
            index = call.alias_of if call.alias_of is not None else call.index
            if index in grad_of:
                by_name[call.name] = grad_of[index]
        return tuple(
            evolve(m, grad_norm=by_name[m.name], grad_finite=math.isfinite(by_name[m.name]))
            if m.name in by_name else m
            for m in modules
        )
