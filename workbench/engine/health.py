"""Health rules: turn one phase's measurements into Findings.

The rules run on host-side numbers only (after the phase's single transfer).
Every threshold lives in ``HealthThresholds``; the defaults were chosen so
that the bundled healthy scenarios raise no error finding over 30 steps
while the pathological ones in tests/broken_scenarios/ each trip their rule.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence

from workbench.engine.diagnosis import Diagnosis
from workbench.engine.nan_root import BackwardRoot, ForwardRoot
from workbench.engine.records import (
    DEAD_UNITS,
    EXPLODING_GRADIENT,
    HUGE_UPDATES,
    LOSS_DIVERGENCE,
    NAN_INF,
    NO_GRADIENT,
    SATURATED_ACTIVATIONS,
    TINY_UPDATES,
    VANISHING_GRADIENT,
    Finding,
    ModuleStats,
    ParamStats,
    Phase,
    SeverityLevel,
)
from workbench.engine.thresholds import HealthThresholds  # importable from here too, where it was defined


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# How to see where a NaN starts when the step that made it took no module stats; a host
# that owns no replay (workbench.watch) says its own way.
FULL_STATS_HINT = ("replay the step with full stats (`workbench run --break-on nan_inf --replay N`, or `u` in the "
                   "workbench), or take stats every step (--every 1)")


class HealthMonitor:
    """Stateful rules (running averages, best loss) for one engine."""

    def __init__(self, thresholds: HealthThresholds) -> None:
        self.t = thresholds
        self.full_stats_hint = FULL_STATS_HINT
        self._total_ema: float | None = None
        self._param_ema: dict[str, float] = {}
        self._losses: deque[float] = deque(maxlen=thresholds.loss_window)
        self._best_window: float | None = None
        self._steps_seen = 0
        self._nan_step: int | None = None  # the last step that already has a nan_inf finding
        self.cancelled_biases: set[str] = set()  # biases a following BatchNorm cancels
        self._told_cancelled: set[str] = set()
        self._vanishing_streak: dict[str, int] = {}  # consecutive measured steps with a vanishing gradient
        self._last_update: dict[str, float] = {}
        self._tiny_streak: dict[str, int] = {}  # the last measured update ratio of each parameter
        # The silent-bug rules; inside the monitor so snapshots and rewinds carry their state too.
        self.diagnosis = Diagnosis(thresholds)

    # -- forward ---------------------------------------------------------------------
    def forward(self, step: int, modules: Sequence[ModuleStats], root: ForwardRoot | None) -> list[Finding]:
        """``root``: the first non-finite output of this forward, if any."""
        out: list[Finding] = []
        if root is not None:
            out.append(Finding(step, Phase.FORWARD, root.module, None, NAN_INF, SeverityLevel.ERROR, None, None, root.message))
            self._nan_step = step
        for m in modules:
            if m.dead_fraction is not None and m.dead_fraction > self.t.dead_fraction:
                out.append(Finding(
                    step, Phase.FORWARD, m.name, None, DEAD_UNITS, SeverityLevel.WARNING, m.dead_fraction,
                    self.t.dead_fraction,
                    f"{m.dead_fraction:.0%} of the units of {m.name!r} ({m.type_name}) output zero "
                    "for the whole batch: they pass no gradient and no longer learn. Try a lower "
                    "learning rate, LeakyReLU/GELU, or check the bias initialisation.",
                ))
            if m.saturated_fraction is not None and m.saturated_fraction > self.t.saturated_fraction:
                out.append(Finding(
                    step, Phase.FORWARD, m.name, None, SATURATED_ACTIVATIONS, SeverityLevel.WARNING,
                    m.saturated_fraction, self.t.saturated_fraction,
                    f"{m.saturated_fraction:.0%} of the outputs of {m.name!r} ({m.type_name}) are "
                    "pinned at its bounds, where its gradient is almost zero. Normalise its inputs "
                    "(BatchNorm/LayerNorm), scale down the preceding weights, or use logits with a "
                    "*WithLogits loss.",
                ))
        return out

    # -- loss ------------------------------------------------------------------------
    def loss(self, step: int, loss: float | None, outputs_finite: bool | None,
             parts: dict[str, float] | None = None) -> list[Finding]:
        """``parts``: the named loss parts when loss_fn returned a dict (their sum is ``loss``)."""
        out: list[Finding] = []
        if loss is None:
            return out
        if not math.isfinite(loss):
            bad = [name for name, value in (parts or {}).items() if not math.isfinite(value)]
            if bad and self._nan_step != step:
                self._nan_step = step
                fine = [name for name in (parts or {}) if name not in bad]
                where = "from finite model outputs" if outputs_finite else (
                    "(the model outputs were not measured this step)" if outputs_finite is None
                    else "and the model outputs are not finite either")
                message = (f"the loss part {bad[0]!r} is {parts[bad[0]]} {where}"  # type: ignore[index]
                           + (f"; {', '.join(repr(n) for n in fine)} finite" if fine else "")
                           + (f"; also non-finite: {', '.join(repr(n) for n in bad[1:])}" if bad[1:] else "")
                           + f". Look at how loss_fn computes {bad[0]!r} (log of 0, division by a "
                           "zero count, an empty mask).")
                out.append(Finding(step, Phase.LOSS, "", None, NAN_INF, SeverityLevel.ERROR, loss, None, message))
            elif outputs_finite is not False and self._nan_step != step:
                self._nan_step = step
                if outputs_finite is None:  # a step without module stats: the outputs were not looked at
                    message = (f"the loss is {loss} on a step whose module outputs were not measured, so "
                               f"where the NaN/Inf starts is unknown: {self.full_stats_hint}.")
                else:
                    message = (f"the loss function returned {loss} from finite model outputs: check the "
                               "targets and the loss inputs (log of 0, probabilities outside [0, 1]).")
                out.append(Finding(step, Phase.LOSS, "", None, NAN_INF, SeverityLevel.ERROR, loss, None, message))
            out.append(Finding(
                step, Phase.LOSS, "", None, LOSS_DIVERGENCE, SeverityLevel.ERROR, loss, None,
                f"the loss is {loss}: training has diverged. Lower the learning rate, clip "
                "gradients, or find the first nan_inf finding of this step.",
            ))
            return out
        self._losses.append(loss)
        if len(self._losses) == self._losses.maxlen:
            # The median, not the mean: one spiky batch (RMSprop/Adam do that and recover)
            # must not read as divergence; a sustained rise moves the median.
            window = statistics.median(self._losses)
            best = self._best_window
            if best is None or window < best:
                self._best_window = window
            elif window > self.t.loss_factor * best and window - best > self.t.loss_min_rise:
                out.append(Finding(
                    step, Phase.LOSS, "", None, LOSS_DIVERGENCE, SeverityLevel.ERROR, window,
                    self.t.loss_factor * best,
                    f"the loss (median of the last {len(self._losses)} steps: {window:.4g}) rose to "
                    f"{window / best:.1f}x its best ({best:.4g}): training is diverging. Lower the "
                    "learning rate or add gradient clipping.",
                ))
        return out

    # -- backward --------------------------------------------------------------------
    def backward(
        self,
        step: int,
        total_norm: float | None,
        params: Sequence[ParamStats],
        root: BackwardRoot | None,
        measured: bool,
    ) -> list[Finding]:
        """``root``: where this backward's gradients first turned non-finite, if they did."""
        t = self.t
        out: list[Finding] = []
        self._steps_seen += 1
        if self._nan_step == step:
            pass  # non-finite gradients follow from the forward/loss finding of this step
        elif root is not None:
            out.append(Finding(step, Phase.BACKWARD, root.module, root.parameter, NAN_INF, SeverityLevel.ERROR, None, None,
                               root.message))
            self._nan_step = step
        elif total_norm is not None and not math.isfinite(total_norm):
            self._nan_step = step
            out.append(Finding(
                step, Phase.BACKWARD, "", None, NAN_INF, SeverityLevel.ERROR, total_norm, None,
                "the total gradient norm is non-finite"
                + ("" if measured else " (per-layer stats were skipped this step: run with "
                   "stats every step to find the module)") + ".",
            ))
        warm = self._steps_seen > t.warmup_steps
        if _finite(total_norm):
            assert total_norm is not None
            if total_norm > t.grad_norm_abs:
                out.append(Finding(
                    step, Phase.BACKWARD, "", None, EXPLODING_GRADIENT, SeverityLevel.ERROR, total_norm, t.grad_norm_abs,
                    f"the total gradient norm is {total_norm:.4g} (> {t.grad_norm_abs:g}). Lower the "
                    "learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), or check the "
                    "loss scale and input normalisation.",
                ))
            elif warm and self._total_ema and total_norm > t.grad_norm_spike * self._total_ema:
                out.append(Finding(
                    step, Phase.BACKWARD, "", None, EXPLODING_GRADIENT, SeverityLevel.ERROR, total_norm,
                    t.grad_norm_spike * self._total_ema,
                    f"the total gradient norm jumped to {total_norm:.4g}, "
                    f"{total_norm / self._total_ema:.0f}x its running average "
                    f"({self._total_ema:.3g}). Clip gradients or lower the learning rate.",
                ))
            self._total_ema = total_norm if self._total_ema is None else (
                t.ema_decay * self._total_ema + (1 - t.ema_decay) * total_norm)
        learning = any(
            _finite(p.grad_norm) and _finite(p.weight_norm) and p.weight_norm > t.min_weight_norm  # type: ignore[operator]
            and p.grad_norm / p.weight_norm > t.learning_ratio  # type: ignore[operator]
            for p in params
        )
        for p in params:
            if not p.has_grad:
                out.append(Finding(
                    step, Phase.BACKWARD, p.module, p.name, NO_GRADIENT, SeverityLevel.ERROR, None, None,
                    f"parameter {p.name!r} requires grad but received no gradient: it is not on "
                    "the path from the inputs to the loss (an unused branch, a .detach(), "
                    "torch.no_grad() or .data in forward). Fix the graph, or freeze it with "
                    "requires_grad_(False).",
                ))
                continue
            g = p.grad_norm
            if not _finite(g):
                continue
            assert g is not None
            ema = self._param_ema.get(p.name)
            if g > t.grad_norm_abs:
                out.append(Finding(
                    step, Phase.BACKWARD, p.module, p.name, EXPLODING_GRADIENT, SeverityLevel.ERROR, g, t.grad_norm_abs,
                    f"the gradient norm of {p.name!r} is {g:.4g} (> {t.grad_norm_abs:g}). Clip "
                    "gradients, lower the learning rate, or add normalisation before this layer.",
                ))
            elif warm and ema and g > t.grad_norm_spike * ema:
                out.append(Finding(
                    step, Phase.BACKWARD, p.module, p.name, EXPLODING_GRADIENT, SeverityLevel.ERROR, g,
                    t.grad_norm_spike * ema,
                    f"the gradient norm of {p.name!r} jumped to {g:.4g}, {g / ema:.0f}x its running "
                    f"average ({ema:.3g}). Clip gradients or lower the learning rate.",
                ))
            self._param_ema[p.name] = g if ema is None else t.ema_decay * ema + (1 - t.ema_decay) * g
            w = p.weight_norm
            vanishing = learning and _finite(w) and w > t.min_weight_norm and g / w < t.vanishing_ratio  # type: ignore[operator]
            streak = self._vanishing_streak[p.name] = self._vanishing_streak.get(p.name, 0) + 1 if vanishing else 0
            if vanishing:
                ratio = g / w  # type: ignore[operator]
                if p.name in self.cancelled_biases:
                    # Not a training problem: BatchNorm subtracts the per-channel mean, so this
                    # bias cannot change the output and its gradient is rounding noise. Say it once.
                    if p.name not in self._told_cancelled:
                        self._told_cancelled.add(p.name)
                        out.append(Finding(
                            step, Phase.BACKWARD, p.module, p.name, VANISHING_GRADIENT, SeverityLevel.INFO, ratio,
                            t.vanishing_ratio,
                            f"{p.name!r} feeds a BatchNorm, which subtracts the per-channel mean: "
                            "this bias cannot change the output, so its gradient is ~0. It is "
                            "redundant; create the layer with bias=False.",
                        ))
                    continue
                # Judged on what the optimizer makes of it, and only once it lasts: a tiny gradient
                # that Adam turns into a normal update, or a LayerScale that grows in a step, is fine.
                update = self._last_update.get(p.name)
                if streak < t.vanishing_steps or (update is not None and update >= t.vanishing_update_ratio):
                    continue
                shown = f"{update:.2g}" if update is not None else "not measured"
                out.append(Finding(
                    step, Phase.BACKWARD, p.module, p.name, VANISHING_GRADIENT, SeverityLevel.WARNING, ratio,
                    t.vanishing_ratio,
                    f"the gradient of {p.name!r} is {ratio:.2g} of its weight norm for {streak} measured steps "
                    f"while other layers learn, and the optimizer's last update of it was {shown} of its norm: "
                    "it gets almost no signal. Look for saturated or dead activations upstream, a very deep "
                    "plain stack (add residuals/normalisation), or a detached path.",
                ))
        return out

    # -- optimizer step -------------------------------------------------------------
    def optimizer_step(self, step: int, params: Sequence[ParamStats], non_finite: Sequence[ParamStats]) -> list[Finding]:
        t = self.t
        out: list[Finding] = []
        if non_finite and self._nan_step != step:
            # One finding for the step (the first parameter), not one per parameter.
            p = non_finite[0]
            others = f" (and {len(non_finite) - 1} more)" if len(non_finite) > 1 else ""
            out.append(Finding(
                step, Phase.OPTIMIZER_STEP, p.module, p.name, NAN_INF, SeverityLevel.ERROR, p.weight_norm, None,
                f"parameter {p.name!r}{others} became non-finite in the optimizer step although "
                "its gradient was finite: the update overflowed. Lower the learning rate, clip "
                "gradients, or check the optimizer's eps / weight decay.",
            ))
            self._nan_step = step
        warm = self._steps_seen > t.warmup_steps
        unowned = set(self.diagnosis.unowned)  # no update because no optimizer holds them: reported as such
        for p in params:
            r, w = p.update_ratio, p.weight_norm
            if _finite(r):
                self._last_update[p.name] = r  # type: ignore[assignment]
            if not _finite(r) or not _finite(w) or w < t.min_weight_norm or p.name in unowned:  # type: ignore[operator]
                continue
            assert r is not None
            tiny = r < t.tiny_update_ratio and p.has_grad
            streak = self._tiny_streak[p.name] = self._tiny_streak.get(p.name, 0) + 1 if tiny else 0
            if len(p.shape) == 1 and p.update_norm is not None:
                # A bias or norm gain near zero is not "overwritten" by a normal step: judge
                # its update against an element scale of bias_floor, not against ~0.
                assert w is not None  # finite, checked above
                r = p.update_norm / max(w, t.bias_floor * math.sqrt(max(p.shape[0], 1)))
            if tiny and streak >= t.vanishing_steps:
                out.append(Finding(
                    step, Phase.OPTIMIZER_STEP, p.module, p.name, TINY_UPDATES, SeverityLevel.WARNING, p.update_ratio,
                    t.tiny_update_ratio,
                    f"the step changed {p.name!r} by {p.update_ratio:.2g} of its norm for {streak} measured "
                    "steps in a row: it is not learning. Raise the learning rate, or check for vanishing "
                    "gradients or a frozen group.",
                ))
            elif warm and r > t.huge_update_ratio:
                out.append(Finding(
                    step, Phase.OPTIMIZER_STEP, p.module, p.name, HUGE_UPDATES, SeverityLevel.WARNING, r,
                    t.huge_update_ratio,
                    f"the step changed {p.name!r} by {r:.2g}x its norm: the weights are being "
                    "overwritten each step. Lower the learning rate or add warm-up.",
                ))
        return out
