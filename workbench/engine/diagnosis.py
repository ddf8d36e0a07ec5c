"""Diagnosis of silent training bugs: the model trains, nothing raises, and it learns badly.

The rules in health.py catch what breaks loudly (NaN, exploding, dead units). These catch
the bugs that give a plausible loss and no exception:

* data: NaN/Inf in a batch (named by batch and sample, not blamed on a module), inputs on
  a scale the first Linear/Conv was not initialised for (raw 0-255 pixels);
* the loss's inputs: probabilities where the loss expects logits (a Softmax/Sigmoid head
  with CrossEntropyLoss / BCEWithLogitsLoss / NLLLoss), outputs and targets of different
  shapes that the loss broadcasts, and any library warning raised while the loss runs;
* the optimizer: parameters that get gradients but belong to no param group, a learning
  rate that collapses within a few steps, weight decay that outweighs the gradient;
* the loss curve: no progress over a window (at chance level for a classifier), a loss
  that oscillates with a large amplitude instead of settling;
* recurrent layers whose gradients explode through time.

Every threshold lives in ``HealthThresholds`` (thresholds.py) with the reason for its default.

How it looks without costing a sync per step: the loss's inputs are seen through a
``TorchFunctionMode`` active only while ``loss_fn`` runs (it sees ``F.cross_entropy`` etc.
with the very tensors they get, whatever wraps them); "probabilities" is read from the
autograd graph (the op that produced the loss input), which needs no transfer. Tensor
values are read only (a) once, at the first measured step, for the input scale, (b) once
when a probabilities finding is made, to quote its range, and (c) on a step that already
went non-finite, to find the bad sample. The state is plain data so the engine's
snapshots can copy it with the rest of the health rules' state.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from workbench.engine.params import lr_values
from workbench.engine.records import (
    EXPLODING_GRADIENT,
    EXPLODING_THROUGH_TIME,
    HUGE_UPDATES,
    LOSS_BROADCAST,
    LOSS_DIVERGENCE,
    LOSS_WARNING,
    LR_COLLAPSE,
    NAN_INF,
    NON_FINITE_DATA,
    NO_PROGRESS,
    OSCILLATING_LOSS,
    PROBABILITIES_AS_LOGITS,
    SATURATED_ACTIVATIONS,
    TINY_UPDATES,
    UNNORMALISED_INPUTS,
    UNOWNED_PARAMETERS,
    WEIGHT_DECAY_DOMINATES,
    Finding,
    ParamStats,
    Phase,
    SeverityLevel,
)

if TYPE_CHECKING:
    from workbench.engine.thresholds import HealthThresholds

# Losses that apply log_softmax / log_sigmoid themselves (expect logits), and NLLLoss,
# which expects log-probabilities: all three are wrong on probabilities.
_WANTS_LOGITS: dict[Callable[..., Any], str] = {
    F.cross_entropy: "CrossEntropyLoss (F.cross_entropy)",
    F.binary_cross_entropy_with_logits: "BCEWithLogitsLoss (F.binary_cross_entropy_with_logits)",
    F.nll_loss: "NLLLoss (F.nll_loss), which expects log-probabilities,",
}
_CLASS_LOSSES = (F.cross_entropy, F.nll_loss)
_BINARY_LOSSES = (F.binary_cross_entropy_with_logits, F.binary_cross_entropy)
# Losses on (input, target) of the same shape; the first four broadcast with only a
# once-per-process UserWarning, the BCE pair raises.
_ELEMENTWISE = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.soft_margin_loss,
                F.binary_cross_entropy, F.binary_cross_entropy_with_logits, F.poisson_nll_loss)
_SUBTRACT = {"sub", "__sub__", "__rsub__", "rsub", "subtract"}
_PROBABILITY_OPS = {"SoftmaxBackward0": "softmax", "SigmoidBackward0": "sigmoid"}
# Ops between the probability op and the loss that keep the values as they are.
_VALUE_PRESERVING = ("View", "Reshape", "Squeeze", "Unsqueeze", "Select", "Slice", "Permute", "Transpose",
                     "Expand", "Clone", "ToCopy", "Alias", "Flatten", "Unbind", "Index")
_TORCH_BROADCAST_WARNING = "Using a target size"


def _short(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


_NAMED: weakref.WeakKeyDictionary[nn.Module, list[tuple[str, nn.Parameter]]] = weakref.WeakKeyDictionary()


def _named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``model.named_parameters()``, walked once per model (a rule asks every step; the walk
    over every module cost more than the rest of an unmeasured step's rules together).

    Kept outside Diagnosis, which snapshots deep-copy: a copy must not carry the parameters.
    """
    found = _NAMED.get(model)
    if found is None:
        found = list(model.named_parameters())
        _NAMED[model] = found
    return found


def _pvariance(xs: Sequence[float] | deque[float]) -> float:
    """Population variance in floats (two passes, fsum): what ``statistics.pvariance`` gives to
    rounding, about 50x faster (it computes exactly in Fractions), since it runs every step."""
    n = len(xs)
    mean = math.fsum(xs) / n
    return math.fsum([(x - mean) * (x - mean) for x in xs]) / n


def _trajectory(values: Sequence[float], steps: Sequence[int], limit: int = 8) -> str:
    pairs = list(zip(steps, values))
    if len(pairs) > limit:
        pairs = pairs[: limit // 2] + pairs[-(limit // 2):]
    return " -> ".join(f"{v:.3g} (step {s})" for s, v in pairs)


def _probability_source(t: torch.Tensor) -> str | None:
    """'softmax'/'sigmoid' when ``t`` is (a view of) a softmax/sigmoid output, from the autograd graph."""
    fn = t.grad_fn
    for _ in range(8):
        if fn is None:
            return None
        name = type(fn).__name__
        if name in _PROBABILITY_OPS:
            return _PROBABILITY_OPS[name]
        if not name.startswith(_VALUE_PRESERVING):
            return None
        nexts = [n for n, _ in fn.next_functions if n is not None]
        if len(nexts) != 1:
            return None
        fn = nexts[0]
    return None


@dataclass
class LossCall:
    """One loss function call seen while loss_fn ran."""

    name: str
    func: Callable[..., Any]
    input: torch.Tensor
    target: torch.Tensor | None
    broadcast_shape: tuple[int, ...] | None = None  # input and target broadcast to this


class _LossMode(TorchFunctionMode):
    """Records the calls of known loss functions, and subtractions of targets from outputs."""

    def __init__(self, outputs: set[int], targets: set[int]) -> None:
        super().__init__()
        self.calls: list[LossCall] = []
        self.manual: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []
        self._outputs, self._targets = outputs, targets

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        try:
            self._see(func, args, kwargs, result)
        except Exception:  # watching must never change what the user's loss does
            pass
        return result

    def _see(self, func: Any, args: Sequence[Any], kwargs: dict[str, Any], result: Any) -> None:
        if func in _WANTS_LOGITS or func in _ELEMENTWISE:
            x = args[0] if args else kwargs.get("input")
            y = args[1] if len(args) > 1 else kwargs.get("target")
            if not isinstance(x, torch.Tensor):
                return
            y = y if isinstance(y, torch.Tensor) else None
            call = LossCall(func.__name__, func, x, y)
            if func in _ELEMENTWISE and y is not None and tuple(x.shape) != tuple(y.shape):
                try:
                    call.broadcast_shape = tuple(torch.broadcast_shapes(x.shape, y.shape))
                except RuntimeError:
                    pass
            self.calls.append(call)
        elif getattr(func, "__name__", "") in _SUBTRACT and len(args) >= 2:
            a, b = args[0], args[1]
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and isinstance(result, torch.Tensor)):
                return
            pair = {id(a), id(b)}
            if pair & self._outputs and pair & self._targets and result.numel() > max(a.numel(), b.numel()):
                out, tgt = (a, b) if id(a) in self._outputs else (b, a)
                self.manual.append((tuple(out.shape), tuple(tgt.shape), tuple(result.shape)))


@dataclass
class LossWatch:
    """What ``Diagnosis.watch_loss`` saw: loss calls, manual broadcasts and warnings."""

    calls: list[LossCall] = field(default_factory=list)
    manual: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    warnings: list[warnings.WarningMessage] = field(default_factory=list)


class _ShownWarnings:
    """Context manager around a loss call on a step whose loss calls are not watched: the
    warnings shown inside (those the user's filters let through) go into the LossWatch it
    gives, and are still shown. A class, not a generator: this runs every step.

    It stands in for ``warnings.showwarning`` and puts the original back on the way out,
    unless something inside replaced it in turn (then that one stays, and this stand-in,
    still called through it, only forwards).
    """

    __slots__ = ("_hook", "_inside", "_original", "watch")

    def __init__(self) -> None:
        self.watch = LossWatch()
        self._inside = False
        self._original = warnings.showwarning  # read again on the way in
        self._hook = self.show  # one bound method, so the identity check on the way out holds

    def __enter__(self) -> LossWatch:
        self._original = warnings.showwarning
        self._inside = True
        warnings.showwarning = self._hook
        return self.watch

    def show(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if self._inside:
            self.watch.warnings.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
        self._original(message, category, filename, lineno, file, line)

    def __exit__(self, *exc: object) -> None:
        self._inside = False
        if warnings.showwarning is self._hook:
            warnings.showwarning = self._original


def _tensor_ids(value: Any, depth: int = 0) -> set[int]:
    if isinstance(value, torch.Tensor):
        return {id(value)}
    out: set[int] = set()
    if depth > 6:
        return out
    if isinstance(value, (tuple, list)):
        for v in value:
            out |= _tensor_ids(v, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            out |= _tensor_ids(v, depth + 1)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            out |= _tensor_ids(getattr(value, name, None), depth + 1)
    return out


def named_float_tensors(value: Any, prefix: str, depth: int = 0) -> list[tuple[str, torch.Tensor]]:
    """(path, tensor) of every floating tensor in a nested batch part: 'inputs[0]', 'batch["x"]'."""
    if isinstance(value, torch.Tensor):
        return [(prefix, value)] if value.is_floating_point() or value.is_complex() else []
    out: list[tuple[str, torch.Tensor]] = []
    if depth > 6:
        return out
    if isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            out += named_float_tensors(v, f"{prefix}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            out += named_float_tensors(v, f"{prefix}[{k!r}]", depth + 1)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            out += named_float_tensors(getattr(value, name, None), f"{prefix}.{name}", depth + 1)
    return out


@dataclass(frozen=True)
class BadData:
    """Where a batch is non-finite: the tensor's path, the first bad samples and the counts."""

    path: str
    shape: tuple[int, ...]
    samples: tuple[int, ...]  # indexes along the batch dimension, the first few
    bad_samples: int
    nan: int
    inf: int


def find_non_finite(parts: Sequence[tuple[str, Any]], batch_dim: int = 0, limit: int = 5) -> list[BadData]:
    """Every non-finite floating tensor of a batch, with the samples that hold NaN/Inf.

    Deliberate syncs (one per tensor): only called on a step that already went non-finite.
    """
    found: list[BadData] = []
    for prefix, value in parts:
        for path, t in named_float_tensors(value, prefix):
            with torch.no_grad():
                bad = ~torch.isfinite(t.detach())
                if not bool(bad.any()):  # sync point (diagnosis of a non-finite step only)
                    continue
                nan = int(torch.isnan(t).sum())
                inf = int(bad.sum()) - nan
                dim = batch_dim if t.dim() > batch_dim else None
                if dim is None:
                    samples: list[int] = []
                    n_bad = 1
                else:
                    per_sample = bad.movedim(dim, 0).reshape(t.shape[dim], -1).any(dim=1)
                    idx = per_sample.nonzero().flatten()
                    n_bad = int(idx.numel())
                    samples = idx[:limit].tolist()
            found.append(BadData(path, tuple(t.shape), tuple(samples), n_bad, nan, inf))
    return found


class InputScaleProbe:
    """Catches the input of the first Linear/Conv that runs in one forward, then removes itself."""

    def __init__(self, model: nn.Module) -> None:
        self.layer: str | None = None
        self.layer_type = ""
        self.stats: torch.Tensor | None = None  # (features, 2): per-feature mean and std, on the device
        self.extremes: torch.Tensor | None = None  # min, max, integral fraction
        self._handles: list[Any] = []
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                self._handles.append(m.register_forward_pre_hook(self._make_hook(name)))

    def _make_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.layer is not None or not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0].detach()
            if not x.is_floating_point() or x.numel() == 0:
                return
            self.layer, self.layer_type = name, type(module).__name__
            with torch.no_grad():
                x = x.float()
                # Features: the last dim for Linear, the channel dim for Conv.
                feat = x.movedim(1, -1) if isinstance(module, nn.modules.conv._ConvNd) and x.dim() > 2 else x
                flat = feat.reshape(-1, feat.shape[-1])
                mean = flat.mean(dim=0)
                std = flat.std(dim=0, unbiased=False)
                self.stats = torch.stack([mean, std], dim=1)
                self.extremes = torch.stack([x.min(), x.max(), (x == x.round()).float().mean()])
            self.remove()
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class Diagnosis:
    """Stateful silent-bug rules for one engine; plain data only (snapshots deep-copy it)."""

    def __init__(self, thresholds: HealthThresholds) -> None:
        self.t = thresholds
        self.unowned: tuple[str, ...] = ()
        self._told_unowned: tuple[str, ...] = ()
        self._owned_key: tuple[Any, ...] = ()
        self._not_owned: tuple[int, ...] = ()  # indices into the model's parameter list
        self._scale_checked = False
        self._told_probabilities: set[str] = set()
        self._told_broadcast: set[tuple[Any, ...]] = set()
        self._told_warnings: set[tuple[Any, ...]] = set()
        self.classes: int | None = None  # from the loss input: CE/NLL class count, 2 for binary losses
        self.classes_from = ""
        self._losses: list[float] = []  # every finite loss of the first window, then the recent ones
        self._baseline: list[float] = []
        self._baseline_moments: tuple[float, float] | None = None  # (mean, variance) once it is full
        self._recent: deque[float] = deque(maxlen=thresholds.progress_window)
        self._lr_recent: deque[float] = deque(maxlen=thresholds.progress_window)
        self._no_progress_told = False
        # Enough losses for lag-P differences when the data repeats every P < window batches.
        self._osc: deque[float] = deque(maxlen=3 * thresholds.oscillation_window)
        self._period: int | None = None  # batches per epoch, once the first epoch has ended
        self._epoch_steps = 0
        self._osc_told = False
        self._osc_quiet = 0
        self._diverged = False
        self._lr_steps: deque[tuple[int, float]] = deque(maxlen=thresholds.lr_collapse_steps + 1)
        self._lr_peak: tuple[int, float] | None = None
        self._lr_told = False
        self._wd: deque[tuple[float, float, float]] = deque(maxlen=thresholds.progress_window)
        self._wd_told = False
        self._wd_first_norm: float | None = None  # the decayed weights' norm at the first measured step
        self._wd_decoupled = False
        self._rnn_ema: dict[str, float] = {}
        self._param_names: dict[int, str] = {}
        self._steps_seen = 0
        self._nan_root: str | None = None  # the root kind of the NaN episode in progress
        self._last_root_step: dict[str, int] = {}

    # -- forward ----------------------------------------------------------------------
    def wants_input_scale(self, measured: bool) -> bool:
        return measured and not self._scale_checked

    def input_scale(self, step: int, probe: InputScaleProbe) -> list[Finding]:
        """The first measured step's input scale against what default initialisation expects."""
        probe.remove()
        self._scale_checked = True
        if probe.stats is None or probe.extremes is None:
            return []
        # Deliberate one-time sync (first measured step only): the first layer's input scale.
        values = torch.cat([probe.stats.reshape(-1), probe.extremes]).tolist()
        n = probe.stats.shape[0]
        means, stds = values[0:2 * n:2], values[1:2 * n:2]
        lo, hi, integral = values[2 * n:]
        rms = [math.sqrt(m * m + s * s) for m, s in zip(means, stds)]
        if not rms or not all(math.isfinite(r) for r in rms):
            return []
        worst = max(range(n), key=lambda i: rms[i])
        scale = rms[worst]
        if scale <= self.t.input_scale:
            return []
        layer = probe.layer or ""
        what = "feature" if probe.layer_type == "Linear" else "channel"
        pixels = lo >= 0 and 1.5 < hi <= 255.0 and integral > 0.99
        advice = ("they look like raw 0-255 pixels: divide by 255 and normalise with the dataset's per-channel "
                  "mean and std (transforms.Normalize)" if pixels else
                  "standardise each feature with the training set's mean and std (or add a BatchNorm/LayerNorm "
                  "before the first layer)")
        message = (f"the input of {layer!r} ({probe.layer_type}), the first layer, has a scale of {scale:.3g} "
                   f"({what} {worst}: mean {means[worst]:.3g}, std {stds[worst]:.3g}; median over {n} "
                   f"{what}s {statistics.median(rms):.3g}; values {lo:.3g}..{hi:.3g}), far above the ~1 that "
                   f"its default initialisation assumes: pre-activations come out about that large, saturate "
                   f"the next activation and give the first layer outsized gradients. Inputs too large: "
                   f"{advice}.")
        self._last_root_step[UNNORMALISED_INPUTS] = step
        return [Finding(step, Phase.FORWARD, layer, None, UNNORMALISED_INPUTS, SeverityLevel.WARNING, scale,
                        self.t.input_scale, message)]

    def non_finite_data(self, step: int, phase: Phase, bad: Sequence[BadData], batch_label: str) -> list[Finding]:
        out = []
        for b in bad:
            counts = ", ".join(x for x in (f"{b.nan} NaN" if b.nan else "", f"{b.inf} Inf" if b.inf else "") if x)
            where = (f"sample{'s' if b.bad_samples > 1 else ''} {', '.join(map(str, b.samples))}"
                     + (f" (of {b.bad_samples})" if b.bad_samples > len(b.samples) else "")) if b.samples else "it"
            message = (f"{batch_label}: {b.path} {_short(b.shape)} holds {counts} in {where}: the data is "
                       "non-finite before the model sees it, so the NaN loss and gradients that follow are its "
                       "consequences, not a model bug. Find the source in the data pipeline (missing values, "
                       "log/division in preprocessing), drop or impute those samples, or assert "
                       "torch.isfinite(x).all() when loading.")
            self._last_root_step[NON_FINITE_DATA] = step
            out.append(Finding(step, phase, "", None, NON_FINITE_DATA, SeverityLevel.ERROR, float(b.nan + b.inf), None, message))
        return out

    # -- loss -------------------------------------------------------------------------
    def watch_loss(self, outputs: Any, targets: Any, step: int = 0) -> contextlib.AbstractContextManager[LossWatch]:
        """Run the user's loss_fn inside this: it records the loss calls and warnings.

        The loss calls are watched on the first ``loss_watch_steps`` steps and every
        ``loss_watch_every``-th after: what they reveal (a softmax before CrossEntropyLoss,
        shapes that broadcast) is in the code, so it shows on the first step, and an active
        TorchFunctionMode costs a few hundred microseconds per loss call on CPU (measured on a
        64x10 cross-entropy). On those steps every warning is caught (``catch_warnings``);
        on the others, only the warnings the user's filters let through (a new one, under
        the default filters), by standing in for ``warnings.showwarning``: swapping the
        filters resets every module's warning cache, which cost about 40 us per step in a
        training loop.
        """
        t = self.t
        if step < t.loss_watch_steps or step % t.loss_watch_every == 0:
            return self._watched_loss(outputs, targets)
        return _ShownWarnings()

    @contextmanager
    def _watched_loss(self, outputs: Any, targets: Any) -> Iterator[LossWatch]:
        watch = LossWatch()
        mode = _LossMode(_tensor_ids(outputs), _tensor_ids(targets))
        # catch_warnings swaps the process-wide filters for the duration of loss_fn only;
        # the warnings are issued again afterwards so the user's own filters still decide.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with mode:
                    yield watch
            finally:
                watch.calls, watch.manual = mode.calls, mode.manual
        watch.warnings = list(caught)
        for w in watch.warnings:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def loss(self, step: int, watch: LossWatch, loss: float | None) -> list[Finding]:
        out: list[Finding] = []
        t = self.t
        broadcast_told = False
        for call in watch.calls:
            if self.classes is None:
                if call.func in _CLASS_LOSSES and call.input.dim() >= 2:
                    self.classes, self.classes_from = int(call.input.shape[1]), call.name
                elif call.func in _BINARY_LOSSES:
                    self.classes, self.classes_from = 2, call.name
            if call.func in _WANTS_LOGITS and call.name not in self._told_probabilities:
                source = _probability_source(call.input)
                if source is not None:
                    self._told_probabilities.add(call.name)
                    out.append(self._probabilities(step, call, source))
            if call.broadcast_shape is not None:
                key = (call.name, tuple(call.input.shape), tuple(call.target.shape) if call.target is not None else ())
                broadcast_told = True
                if key not in self._told_broadcast:
                    self._told_broadcast.add(key)
                    out.append(self._broadcast(step, call.name, tuple(call.input.shape),
                                               tuple(call.target.shape) if call.target is not None else (),
                                               call.broadcast_shape))
        for out_shape, tgt_shape, result in watch.manual:
            broadcast_told = True
            key = ("sub", out_shape, tgt_shape)
            if key not in self._told_broadcast:
                self._told_broadcast.add(key)
                out.append(self._broadcast(step, "outputs - targets", out_shape, tgt_shape, result))
        for w in watch.warnings:
            text = str(w.message)
            if (broadcast_told or self._told_broadcast) and text.startswith(_TORCH_BROADCAST_WARNING):
                continue  # torch's own words for the loss_broadcast finding made above
            told = (w.category.__name__, text, w.filename, w.lineno)
            if told in self._told_warnings:
                continue
            self._told_warnings.add(told)
            # A library warning with stacklevel=2 points at its caller: this module's watcher.
            at = "" if w.filename == __file__ else f" at {w.filename}:{w.lineno}"
            out.append(Finding(
                step, Phase.LOSS, "", None, LOSS_WARNING, SeverityLevel.WARNING, None, None,
                f"the loss raised a {w.category.__name__}{at}: {text.strip()} "
                "A warning inside the loss usually means its inputs are not what it expects: read it, then "
                "fix the inputs (or filter that warning if it is deliberate).",
            ))
        if loss is not None:
            self._see_loss(loss)
        return out

    def _probabilities(self, step: int, call: LossCall, source: str) -> Finding:
        x = call.input.detach().float()
        with torch.no_grad():
            parts = [x.min(), x.max()]
            if source == "softmax" and x.dim() >= 2:
                parts.append((x.sum(dim=1) - 1).abs().max())
            # Deliberate one-time sync (once per loss function): the range that is quoted.
            values = torch.stack(parts).tolist()
        lo, hi = values[0], values[1]
        rows = f", rows summing to 1 (within {values[2]:.1g})" if len(values) > 2 else ""
        loss_name = _WANTS_LOGITS[call.func]
        if call.func is F.nll_loss:
            fix = ("replace the Softmax with LogSoftmax (or drop it and use CrossEntropyLoss on the raw "
                   "outputs)")
        elif call.func is F.cross_entropy:
            fix = "remove the final Softmax and give CrossEntropyLoss the raw outputs (logits)"
        else:
            fix = ("remove the final Sigmoid and give BCEWithLogitsLoss the raw outputs, or keep the "
                   "Sigmoid and use BCELoss")
        message = (f"the model's outputs go through {source} before {loss_name}: it receives probabilities "
                   f"(values {lo:.3g}..{hi:.3g}{rows}) where it expects logits. The loss then squashes them "
                   f"again, its gradient shrinks and learning stalls near chance level. Fix: {fix}.")
        self._last_root_step[PROBABILITIES_AS_LOGITS] = step
        return Finding(step, Phase.LOSS, "", None, PROBABILITIES_AS_LOGITS, SeverityLevel.ERROR, hi, 1.0, message)

    def _broadcast(self, step: int, name: str, out_shape: tuple[int, ...], tgt_shape: tuple[int, ...],
                   result: tuple[int, ...]) -> Finding:
        n_out = math.prod(out_shape) if out_shape else 1
        n_res = math.prod(result) if result else 1
        message = (f"{name} got outputs of shape {_short(out_shape)} and targets of shape {_short(tgt_shape)}: "
                   f"they broadcast to {_short(result)}, so every output is compared with every target "
                   f"({n_res:,} terms instead of {n_out:,}) and the loss is wrong while still decreasing. "
                   "Make the shapes equal: outputs.squeeze(-1) or targets.unsqueeze(-1) (torch only warns once "
                   "per process: 'Using a target size ... different to the input size').")
        self._last_root_step[LOSS_BROADCAST] = step
        return Finding(step, Phase.LOSS, "", None, LOSS_BROADCAST, SeverityLevel.ERROR, float(n_res), float(n_out), message)

    def _see_loss(self, loss: float) -> None:
        if not math.isfinite(loss):
            self._diverged = True
            return
        if len(self._baseline) < self.t.progress_window:
            self._baseline.append(loss)
        self._recent.append(loss)
        self._osc.append(loss)

    # -- backward ---------------------------------------------------------------------
    def unowned_parameters(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Finding]:
        """Parameters with a gradient that no optimizer param group holds (host-side only)."""
        groups = optimizer.param_groups
        # The ids the groups hold, gathered again only when the groups change (add_param_group,
        # a list replaced or grown): building the set every step was most of this rule's cost.
        # The model's parameters no group holds are found then too (as indices into the model's
        # parameter list: this state is plain data), so a step only looks at those, usually none.
        named = _named_parameters(model)
        key = (id(model), len(named)) + tuple(
            (id(params), len(params), id(params[0]) if params else 0, id(params[-1]) if params else 0)
            for params in (g.get("params", ()) for g in groups))
        if key != self._owned_key:
            self._owned_key = key
            owned = {id(p) for g in groups for p in g.get("params", ())}
            self._not_owned = tuple(i for i, (_, p) in enumerate(named) if id(p) not in owned)
        names = tuple(named[i][0] for i in self._not_owned
                      if named[i][1].requires_grad and named[i][1].grad is not None)
        self.unowned = names
        if not names or names == self._told_unowned:
            return []
        self._told_unowned = names
        modules = sorted({n.rpartition(".")[0] for n in names})
        shown = ", ".join(repr(n) for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        message = (f"{len(names)} parameter{'s' if len(names) > 1 else ''} receive gradients but are in no "
                   f"optimizer param group, so they never change: {shown}. Typically a layer was added (or "
                   "the model rebuilt / moved) after the optimizer was created. Create the optimizer after the "
                   "model is complete, or add them with optimizer.add_param_group({'params': [...]}).")
        self._last_root_step[UNOWNED_PARAMETERS] = step
        return [Finding(step, Phase.BACKWARD, modules[0] if len(modules) == 1 else "", None, UNOWNED_PARAMETERS,
                        SeverityLevel.ERROR, float(len(names)), None, message)]

    def recurrent(self, step: int, params: Sequence[ParamStats], recurrent: dict[str, str]) -> list[Finding]:
        """Gradients exploding through time, judged on each recurrent layer's own parameters."""
        t = self.t
        out: list[Finding] = []
        if not recurrent:
            return out
        sq: dict[str, float] = {}
        worst: dict[str, tuple[float, str]] = {}
        for p in params:
            if p.module in recurrent and p.grad_norm is not None and math.isfinite(p.grad_norm):
                sq[p.module] = sq.get(p.module, 0.0) + p.grad_norm ** 2
                if p.grad_norm > worst.get(p.module, (-1.0, ""))[0]:
                    worst[p.module] = (p.grad_norm, p.name)
        warm = self._steps_seen > t.warmup_steps
        for module, s in sq.items():
            g = math.sqrt(s)
            ema = self._rnn_ema.get(module)
            trigger = None
            if g > t.grad_norm_abs:
                trigger, limit = f"{g:.4g} (> {t.grad_norm_abs:g})", t.grad_norm_abs
            elif warm and ema and g > t.grad_norm_spike * ema:
                trigger, limit = f"{g:.4g}, {g / ema:.0f}x its running average ({ema:.3g})", t.grad_norm_spike * ema
            self._rnn_ema[module] = g if ema is None else t.ema_decay * ema + (1 - t.ema_decay) * g
            if trigger is None:
                continue
            kind = recurrent[module]
            message = (f"the gradient of recurrent layer {module!r} ({kind}) is {trigger}, largest on "
                       f"{worst[module][1]!r}: backpropagation through time multiplies it by the recurrent "
                       "weights once per time step, so it grows exponentially with the sequence length. "
                       "Clip gradients (clip_grad_norm_(params, 1.0)), shorten the truncated-BPTT window, "
                       + ("use LSTM/GRU instead of a plain RNN, " if kind == "RNN" else "")
                       + "initialise weight_hh orthogonally, or lower the learning rate.")
            self._last_root_step[EXPLODING_THROUGH_TIME] = step
            out.append(Finding(step, Phase.BACKWARD, module, None, EXPLODING_THROUGH_TIME, SeverityLevel.ERROR, g, limit, message))
        return out

    # -- after the optimizer step ----------------------------------------------------
    def after_step(self, step: int, lrs: Sequence[float], params: Sequence[ParamStats],
                   optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int = 0) -> list[Finding]:
        """The window rules, once the step (and its lr) is done; ``epoch``: the data's epoch counter."""
        self._steps_seen += 1
        if self._period is None:
            if epoch > 0:
                self._period = self._epoch_steps
            self._epoch_steps += 1
        out: list[Finding] = []
        lr = max((x for x in lrs if math.isfinite(x)), default=float("nan"))
        if math.isfinite(lr):
            self._lr_recent.append(lr)
            out += self._lr_collapse(step, lr, scheduler)
        if params:
            self._record_weight_decay(params, optimizer)
        wd = self._weight_decay(step)
        out += wd
        out += self._no_progress(step, cause=WEIGHT_DECAY_DOMINATES if wd or self._wd_told else None)
        out += self._oscillation(step)
        return out

    def _lr_collapse(self, step: int, lr: float, scheduler: Any) -> list[Finding]:
        t = self.t
        self._lr_steps.append((step, lr))
        if self._lr_peak is None or lr >= self._lr_peak[1]:
            self._lr_peak = (step, lr)
            self._lr_told = False
            return []
        peak_step, peak = self._lr_peak
        # (a relative tolerance: 0.1 * 0.1 * 0.1 is a hair above 1e-3)
        if (self._lr_told or peak <= 0 or lr * t.lr_collapse_factor > peak * (1 + 1e-6)
                or step - peak_step > t.lr_collapse_steps):
            return []
        self._lr_told = True
        trail = [(s, v) for s, v in self._lr_steps if s >= peak_step]
        sched = type(scheduler).__name__ if scheduler is not None else "no scheduler (the optimizer's lr was changed)"
        detail = ""
        if scheduler is not None:
            knobs = [f"{k}={getattr(scheduler, k)!r}" for k in ("step_size", "gamma", "milestones", "T_max")
                     if hasattr(scheduler, k)]
            if knobs:
                detail = f" ({', '.join(knobs)})"
        factor = peak / lr if lr > 0 else math.inf
        message = (f"the learning rate fell {factor:.3g}x within {step - peak_step} steps: "
                   f"{_trajectory([v for _, v in trail], [s for s, _ in trail])}, by {sched}{detail}. "
                   "After this the model barely moves. A scheduler meant per epoch (StepLR, MultiStepLR, "
                   "ExponentialLR) is being stepped per batch: step it once per epoch "
                   "(scheduler_interval='epoch'), or give it step sizes in batches and a gamma closer to 1.")
        return [Finding(step, Phase.OPTIMIZER_STEP, "", None, LR_COLLAPSE, SeverityLevel.WARNING, lr, peak / t.lr_collapse_factor,
                        message)]

    def _record_weight_decay(self, params: Sequence[ParamStats], optimizer: torch.optim.Optimizer) -> None:
        by_id = {}
        decayed = [(g, wd) for g in optimizer.param_groups if (wd := float(g.get("weight_decay", 0.0) or 0.0)) > 0]
        for (g, wd), lr in zip(decayed, lr_values((g for g, _ in decayed), default=0.0)):
            decoupled = bool(g.get("decoupled_weight_decay", False)) or type(optimizer).__name__ == "AdamW"
            for p in g.get("params", ()):
                by_id[id(p)] = (wd, lr, decoupled)
        if not by_id:
            return
        decay_sq = grad_sq = weight_sq = 0.0
        decoupled_any = False
        named = {self._param_names[i]: v for i, v in by_id.items() if i in self._param_names}
        for p in params:
            info = named.get(p.name)
            if info is None or p.weight_norm is None or p.grad_norm is None:
                continue
            wd, lr, decoupled = info
            if not (math.isfinite(p.weight_norm) and math.isfinite(p.grad_norm)):
                return
            if decoupled:
                # AdamW: the decay is its own step, lr*wd*w, next to the adaptive step.
                decoupled_any = True
                decay_sq += (lr * wd * p.weight_norm) ** 2
                grad_sq += (p.update_norm or 0.0) ** 2
            else:
                # SGD/Adam L2: the optimizer sees g + wd*w.
                decay_sq += (wd * p.weight_norm) ** 2
                grad_sq += p.grad_norm ** 2
            weight_sq += p.weight_norm ** 2
        if weight_sq > 0:
            self._wd.append((math.sqrt(decay_sq), math.sqrt(grad_sq), math.sqrt(weight_sq)))
            self._wd_decoupled = decoupled_any

    def set_param_names(self, model: nn.Module) -> None:
        """id(parameter) -> qualified name (plain ints and strings: snapshots copy them cheaply)."""
        self._param_names = {id(p): n for n, p in model.named_parameters()}

    def _weight_decay(self, step: int) -> list[Finding]:
        t = self.t
        if self._wd and self._wd_first_norm is None:
            self._wd_first_norm = self._wd[0][2]
        first = self._wd_first_norm
        if self._wd_told or first is None or len(self._wd) < self._wd.maxlen or not self._stalled():  # type: ignore[operator]
            return []
        decays, grads, norms = zip(*self._wd)
        ratios = [d / g if g > 0 else math.inf for d, g in zip(decays, grads)]
        ratio = statistics.median(ratios)
        if ratio < t.weight_decay_ratio or norms[-1] > t.weight_decay_shrink * first:
            return []
        self._wd_told = True
        decoupled = self._wd_decoupled
        decay_word = "the decay step lr*wd*||w||" if decoupled else "the decay term wd*||w||"
        grad_word = "the whole update ||dw||" if decoupled else "the gradient ||g||"
        message = (f"weight decay outweighs learning: {decay_word} is {decays[-1]:.3g} against {grad_word} "
                   f"{grads[-1]:.3g} ({ratio:.2g}x, median of the last {len(ratios)} measured steps), and the "
                   f"decayed weights' norm shrank from {first:.4g} to {norms[-1]:.4g} while the loss stalled: "
                   "the decay pulls the weights to zero faster than the data can move them. Lower "
                   "weight_decay (1e-4..1e-2 with SGD/Adam, ~0.01-0.1 with AdamW), or exclude biases and norm "
                   "layers from it.")
        self._last_root_step[WEIGHT_DECAY_DOMINATES] = step
        return [Finding(step, Phase.OPTIMIZER_STEP, "", None, WEIGHT_DECAY_DOMINATES, SeverityLevel.WARNING, ratio,
                        t.weight_decay_ratio, message)]

    def _stalled(self) -> tuple[float, float, float] | None:
        """(baseline mean, recent mean, allowed) when the recent window is no better than the first one."""
        w = self.t.progress_window
        if len(self._baseline) < w or len(self._recent) < w or self._diverged:
            return None
        if self._steps_seen < 2 * w:
            return None
        if self._baseline_moments is None:  # the first window's losses no longer change
            self._baseline_moments = (statistics.fmean(self._baseline), _pvariance(self._baseline))
        base, base_var = self._baseline_moments
        recent = math.fsum(self._recent) / w  # what statistics.fmean computes
        sigma = self.t.progress_sigma
        if sigma >= 0:
            # The usual answer without the recent window's variance (this runs every step): it
            # is at most (max - min)^2 / 4, so a gain past the allowance that bound gives is past
            # the exact one too, and the loss is not stalled.
            spread = max(self._recent) - min(self._recent)
            bound = max(sigma * math.sqrt((base_var + spread * spread / 4) / w), self.t.progress_min_gain * abs(base))
            if bound > 0 and base - recent > bound * (1 + 1e-9):
                return None
        noise = math.sqrt((base_var + _pvariance(self._recent)) / w)
        allowed = max(self.t.progress_sigma * noise, self.t.progress_min_gain * abs(base))
        if base - recent > allowed:
            return None
        return base, recent, allowed

    def _no_progress(self, step: int, cause: str | None) -> list[Finding]:
        t = self.t
        stalled = self._stalled()
        if stalled is None:
            self._no_progress_told = False if len(self._recent) == t.progress_window else self._no_progress_told
            return []
        lrs = list(self._lr_recent)
        if any(b > a * (1 + 1e-9) for a, b in zip(lrs, lrs[1:])):
            return []  # a learning-rate warm-up: the loss may wait for the lr
        if self._no_progress_told:
            return []
        self._no_progress_told = True
        base, recent, allowed = stalled
        w = t.progress_window
        first = f"steps 0-{w - 1}"
        last = f"steps {step - w + 1}-{step}"
        chance = ""
        if self.classes:
            level = math.log(self.classes)
            if abs(recent - level) <= t.chance_tolerance * level:
                chance = (f" It sits at chance level: ln {self.classes} = {level:.4g} for {self.classes} classes "
                          f"({self.classes_from}), i.e. the model predicts a uniform distribution.")
        message = (f"no learning progress: the mean loss over {last} is {recent:.4g}, against {base:.4g} over "
                   f"{first} (an improvement below the {allowed:.2g} that batch noise explains).{chance} Look for "
                   "a learning rate far too small, inputs or targets that do not match (shuffled labels), a "
                   "frozen or detached model, or probabilities fed to a logits loss; check the other findings.")
        return [Finding(step, Phase.OPTIMIZER_STEP, "", None, NO_PROGRESS, SeverityLevel.WARNING, recent, base - allowed, message,
                        cause=cause)]

    def _oscillation(self, step: int) -> list[Finding]:
        t = self.t
        w = t.oscillation_window
        history = list(self._osc)
        # Data that repeats every P batches (P < window) makes the loss repeat too: compare each
        # loss with the same batch's loss P steps earlier, not with a different batch's.
        lag = self._period if self._period is not None and 1 < self._period < w else 1
        if len(history) < w + lag - 1 or self._diverged or not self._baseline:
            return []
        losses = history[-w:]
        recent = history[len(history) - w + 1 - lag:]  # each of the last w - 1 losses and the one lag before it
        diffs = [b - a for a, b in zip(recent, recent[lag:])]
        alternating = sum(1 for a, b in zip(diffs, diffs[1:]) if a * b < 0) / (len(diffs) - 1)
        firing = alternating >= t.oscillation_alternation  # the rest only then: this runs every step
        if firing:
            level = statistics.median(losses)
            change = statistics.median(abs(d) for d in diffs)
            amplitude = change / level if level > 0 else 0.0
            start = statistics.fmean(self._baseline)
            half = len(losses) // 2
            settling = statistics.fmean(losses[half:]) < (1 - t.oscillation_settle) * statistics.fmean(losses[:half])
            firing = amplitude >= t.oscillation_amplitude and change >= t.oscillation_floor * abs(start) and not settling
        if not firing:
            # Said again only after a whole quiet window: a flicker is the same oscillation.
            self._osc_quiet += 1
            if self._osc_quiet >= w:
                self._osc_told = False
            return []
        self._osc_quiet = 0
        if self._osc_told:
            return []
        self._osc_told = True
        tail = ", ".join(f"{x:.3g}" for x in losses[-8:])
        same = f" (each against the same batch {lag} steps before)" if lag > 1 else ""
        message = (f"the loss oscillates instead of settling: over steps {step - len(losses) + 1}-{step} it changed "
                   f"direction on {alternating:.0%} of the steps{same}, by a median {amplitude:.0%} of its level "
                   f"(last losses {tail}). The steps overshoot the minimum back and forth: lower the learning "
                   "rate (2-10x), add warm-up or gradient clipping, or raise the batch size; this usually comes "
                   "before a divergence.")
        return [Finding(step, Phase.OPTIMIZER_STEP, "", None, OSCILLATING_LOSS, SeverityLevel.WARNING, amplitude,
                        t.oscillation_amplitude, message)]

    # -- grouping ---------------------------------------------------------------------
    def link(self, step: int, found: list[Finding], loss: float | None) -> list[Finding]:
        """Mark the findings that follow from a root finding of this step (``cause``), roots first.

        A NaN episode (from the root's step until a step has a finite loss again) groups its
        nan_inf / loss_divergence findings under the root that started it: NaN data, or the
        first nan_inf.
        """
        if loss is not None and math.isfinite(loss) and self._nan_root is not None:
            self._nan_root = None
        if not found:  # most phases of most steps: nothing to link
            return found
        roots = {f.kind for f in found if f.cause is None and f.kind in _ROOT_KINDS}
        if any(f.kind == NON_FINITE_DATA for f in found):
            self._nan_root = NON_FINITE_DATA
        out: list[Finding] = []
        for f in found:
            cause = f.cause
            if cause is None:
                cause = self._cause_of(step, f, roots)
            if cause is not None and cause != f.kind:
                f = _with_cause(f, cause)
            elif f.kind == NAN_INF and self._nan_root is None:
                self._nan_root = NAN_INF  # the first nan_inf roots the episode
            out.append(f)
        out.sort(key=lambda f: f.cause is not None)
        return out

    def _cause_of(self, step: int, f: Finding, roots: set[str]) -> str | None:
        if f.kind in (NAN_INF, LOSS_DIVERGENCE) and (f.value is None or not math.isfinite(f.value) or f.kind == NAN_INF):
            if self._nan_root is not None:
                return self._nan_root
        if f.kind == TINY_UPDATES and self._lr_told:
            return LR_COLLAPSE
        if f.kind == HUGE_UPDATES and self._osc_told:
            return OSCILLATING_LOSS  # one cause, a learning rate too high for this loss
        if f.kind == EXPLODING_GRADIENT and EXPLODING_THROUGH_TIME in roots:
            return EXPLODING_THROUGH_TIME
        if f.kind == SATURATED_ACTIVATIONS and self._last_root_step.get(UNNORMALISED_INPUTS) == step:
            return UNNORMALISED_INPUTS
        return None


_ROOT_KINDS = {NON_FINITE_DATA, EXPLODING_THROUGH_TIME, UNNORMALISED_INPUTS, WEIGHT_DECAY_DOMINATES}


def _with_cause(f: Finding, cause: str) -> Finding:
    return replace(f, cause=cause)


def recurrent_modules(model: nn.Module) -> dict[str, str]:
    """name -> type of every RNN/LSTM/GRU layer (and their cells) in the model."""
    kinds = (nn.RNNBase, nn.RNNCellBase)
    return {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds)}

