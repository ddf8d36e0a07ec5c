"""The ``Watch``: the engine's instruments hooked onto a loop the user owns, and its step boundaries.

How a step is told apart and where each measurement happens: the package's docstring
(``workbench.session.watch``). The outputs, breakpoints and unwrapping it uses live beside it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import sys
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.engine import memory
from workbench.engine.breakpoints import Breakpoint
from workbench.engine.diagnosis import find_non_finite
from workbench.engine.instruments import Instruments, StepState
from workbench.engine.params import ParamRef, lr_values
from workbench.engine.records import BreakHit, Finding, Phase, StepProgress, StepRecord
from workbench.engine.thresholds import HealthThresholds
from workbench.scenario.outputs import output_loss
from workbench.session.watch import breaks
from workbench.session.watch.breaks import ON_BREAK, Break, parse_breakpoints
from workbench.session.watch.losses import FRAMEWORK, LOGGED, MODEL_OUTPUT, StepLoss
from workbench.session.watch.outputs import Outputs, sample_reply, script_title
from workbench.session.watch.ranks import current_rank
from workbench.session.watch.wrapped import param_holder, unwrap_model, unwrap_optimizer


class Watch:
    """A watched training loop; made by :func:`watch` (see the ``workbench.session.watch`` docstring)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        *,
        every: int = 16,
        report: str | os.PathLike[str] | None = None,
        tensorboard: str | os.PathLike[str] | None = None,
        histogram_every: int = 10,
        break_on: Iterable[str | Breakpoint] | str = (),
        on_break: str = "raise",
        on_finding: Callable[[Finding], Any] | None = None,
        serve: bool | str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        title: str | None = None,
        history: int = 256,
        max_findings: int = 2000,
        sample_size: int = 4096,
        thresholds: HealthThresholds | None = None,
        step_pre_hooks: bool = True,
        close_on_break: bool = False,
        scaler: Any = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"workbench.watch: every must be >= 1, got {every}")
        if on_break not in ON_BREAK:
            raise ValueError(f"workbench.watch: on_break must be one of {', '.join(map(repr, ON_BREAK))}, "
                             f"got {on_break!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"workbench.watch: expected an nn.Module, got {type(model).__name__}")
        if on_break == "wait" and not serve:
            raise ValueError("workbench.watch: on_break='wait' waits for a live client to say continue; "
                             "give serve=True (or serve='127.0.0.1:PORT') so one can attach "
                             "(`workbench attach RUN_DIR`).")
        self.model = unwrap_model(model)
        if optimizer is None:
            opts: list[torch.optim.Optimizer] = []
        elif isinstance(optimizer, (list, tuple)):
            opts = [unwrap_optimizer(o) for o in optimizer]
        else:
            opts = [unwrap_optimizer(optimizer)]
        self.optimizers = tuple(opts)
        self.every = every
        self.on_break = on_break
        self.on_finding = on_finding
        self.close_on_break = close_on_break  # integrations whose framework cannot close the watch on an exception
        if scaler is not None and not (callable(getattr(scaler, "get_scale", None))
                                       and callable(getattr(scaler, "is_enabled", None))):
            raise TypeError(f"workbench.watch: scaler= takes the torch.amp.GradScaler the loop scales its loss "
                            f"with, got {type(scaler).__name__}")
        self.scaler = scaler  # the user's fp16 GradScaler: output-gradient norms are reported unscaled
        self.breakpoints: list[Breakpoint] = parse_breakpoints(break_on)
        self.epoch = 0  # an integration that knows the epoch sets it
        self.rank, self.world_size = current_rank()
        self.title = title or script_title()
        self._inst = Instruments(self.model, sample_size=sample_size, thresholds=thresholds)
        # No replay in a loop the watch does not own: more stats is the way to see where a NaN starts.
        self._inst.health.full_stats_hint = (f"take stats every step (workbench.watch(..., every=1)) to see which "
                                             f"module makes it (this watch measures one step in {every})")
        self._holder: Any = param_holder(self.model, self.optimizers)
        self._refs: list[list[ParamRef]] = []
        self._groups_key: tuple[int, ...] = ()
        self._split_params()
        self._history: deque[StepRecord] = deque(maxlen=history)
        self._findings: deque[Finding] = deque(maxlen=max_findings)
        self._logged: list[dict[str, float]] = []  # per emitted step, what wb.log gave (bounded like history)
        self._device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self._closed = False
        self._handles: list[Any] = []  # hooks that live as long as the watch
        self._arm_handles: list[Any] = []  # the measured step's root hooks (with the probe's)
        self._step = 0
        self._s = self._new_state()
        self._scale: Any = None
        self._armed = False
        self._forward_open = False  # a measured forward started and its stats are not read yet
        self._forward_seen = False  # this step's training forward of the root has run
        self._inputs: tuple[Any, Any] | None = None  # the measured forward's (args, kwargs), for a NaN diagnosis
        self._loss = StepLoss()  # this step's, over its micro-batches
        self._logs: dict[str, Any] = {}
        self._stepped: set[int] = set()
        self._before: dict[int, list[torch.Tensor] | None] = {}
        self._hits: set[str] = set()  # breakpoints already fired this step
        self._skipped: set[int] = set()  # steps whose update did not happen (a Break, a client's skip)
        self._pre_hooks_run = 0  # optimizer pre-step hooks so far: did scaler.step() call step()?
        self._pending: tuple[StepState, dict[str, Any], StepLoss] | None = None
        self._t_step = time.perf_counter()
        self._t_forward: float | None = None  # the step's training forward started
        self._t_resume: float | None = None  # the watch's last hook work ended: the user's code runs again
        self._t_boundary: float | None = None
        self.break_hits: list[BreakHit] = []  # every breakpoint that fired, in order
        self._out = Outputs()  # the report, TensorBoard log and live session asked for
        self._samples: dict[str, torch.Tensor | None] = {}  # the last measured step's output samples
        try:
            self._open_outputs(report, tensorboard, histogram_every, serve, run_dir)
            self._attach(step_pre_hooks)
        except BaseException:
            self._remove_hooks()
            self._abort_outputs()  # nothing was measured: no report is left behind
            raise
        self._arm()
        # A script that ends without close() (an uncaught exception outside a `with`) still
        # leaves its report: written at interpreter exit, marked as such. The error that was
        # last uncaught before the watch began (`python -i`, a notebook) is not this run's.
        self._last_before = id(getattr(sys, "last_value", None))
        ref = weakref.ref(self)

        def at_exit() -> None:
            watched = ref()
            if watched is not None:
                watched._at_exit()

        self._atexit = at_exit
        atexit.register(self._atexit)

    # -- public -----------------------------------------------------------------------------
    @property
    def history(self) -> tuple[StepRecord, ...]:
        return tuple(self._history)

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(self._findings)

    @property
    def step_index(self) -> int:
        """The step in progress (0-based)."""
        return self._step

    @property
    def logged(self) -> tuple[dict[str, float], ...]:
        """What ``wb.log`` gave, per recorded step (as floats), aligned with ``history``."""
        return tuple(self._logged)

    @property
    def break_hit(self) -> BreakHit | None:
        """The first breakpoint that fired (the one the report names), or None."""
        return self.break_hits[0] if self.break_hits else None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def report_path(self) -> Path | None:
        """This rank's JSON report, when one was asked for."""
        return self._out.report_path

    @property
    def tensorboard_dir(self) -> Path | None:
        """This rank's TensorBoard log directory, when one was asked for."""
        return self._out.tensorboard_dir

    @property
    def run_dir(self) -> Path | None:
        """The live session's files, when serving."""
        return self._out.run_dir

    @property
    def address(self) -> str | None:
        """Where a client attaches (``workbench attach ADDRESS``), when serving."""
        return self._out.address

    @property
    def module_tree(self) -> Any:
        return self._inst.module_tree

    def activation_sample(self, name: str) -> torch.Tensor | None:
        """CPU copy of module ``name``'s output sample from the last measured forward (a deliberate sync)."""
        return self._inst.activation_sample(name)

    def log(self, **scalars: Any) -> None:
        """Named scalars for this step (a loss part, the lr, a metric). Tensors stay on the
        device until the step's record is written (one transfer for all of them); ``loss=``
        is the step's loss when the model did not return one."""
        self._check_open()
        target = self._pending[1] if self._pending is not None else self._logs
        for name, value in scalars.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"wb.log({name}=...): expected a scalar, got a tensor of shape "
                                     f"{tuple(value.shape)}. Log value.mean() or one element.")
                target[name] = value.detach()
            else:
                try:
                    target[name] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"wb.log({name}=...): expected a number or a one-element tensor, got "
                                     f"{type(value).__name__}") from None
            if name == "loss" and target is self._logs:
                # Before the optimizer step: the step's loss for its rules and loss>X breakpoints
                # (logged once per micro-batch, their mean).
                self._loss.add(torch.as_tensor(target[name]), "wb.log", LOGGED)

    def set_loss(self, loss: torch.Tensor, source: str = "loss") -> None:
        """This step's loss, when neither the model's output nor ``wb.log`` carries it (an
        integration passes the loss its framework is about to call backward on). No sync."""
        self._check_open()
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._loss.add(loss, source, FRAMEWORK)

    def step(self) -> None:
        """End a step where no optimizer is watched: after backward, before the update."""
        self._check_open()
        if self.optimizers:
            raise RuntimeError("wb.step(): this watch ends its steps on the optimizers' own step() calls; "
                               "wb.step() is for loops without an optimizer (watch(model) alone).")
        self._backward_boundary(None)
        self._finish_step(skipped=False)
        self._serve_commands()

    def before_optimizer_step(self, optimizer: Any) -> None:
        """The backward boundary of ``optimizer``'s step (integrations whose step() runs the
        forward and backward inside it, such as Lightning's closure, call this at the right time)."""
        self._check_open()
        self._backward_boundary(self._index_of(optimizer))

    def begin_step(self) -> None:
        """A new batch starts: forget anything measured since the last step boundary (an
        evaluation forward) so the measured forward is this batch's."""
        self._check_open()
        self._emit_pending()
        if self._armed and not self._forward_seen:
            self._restart_forward()

    def close(self, exc: BaseException | None = None) -> None:
        """Remove every hook and write the outputs. Idempotent; ``exc``: why the loop ended."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit)
        try:
            self._remove_hooks()
            # A finished step is kept whatever ended the loop (its logged tensors may be unreadable
            # after a device error: the records matter more than those).
            with contextlib.suppress(Exception):
                self._emit_pending(act=False)
        finally:
            if isinstance(exc, KeyboardInterrupt):
                self._close_outputs("interrupted", {"type": "KeyboardInterrupt", "message": "interrupted",
                                                    "phase": None, "step": self._step, "traceback": None})
            elif isinstance(exc, Break) or (exc is None and self.break_hit is not None
                                            and self.on_break == "raise"):
                # A Break the loop caught ends it at the breakpoint; a wait, pdb or log
                # breakpoint lets the loop go on, and such a run ends "finished".
                self._close_outputs("breakpoint", None)
            elif exc is not None:
                from workbench.report.json_report import error_json

                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                if self._out.live is not None:
                    self._out.live.error(exc, text, self._step)
                self._close_outputs("error", error_json(exc, text, step=self._step))
            else:
                self._close_outputs("finished", None)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.close(exc)

    # -- hooks ------------------------------------------------------------------------------
    def _attach(self, step_pre_hooks: bool) -> None:
        root = self.model
        self._handles.append(root.register_forward_pre_hook(self._root_pre, with_kwargs=True))
        self._handles.append(root.register_forward_hook(self._root_post))
        for i, opt in enumerate(self.optimizers):
            if step_pre_hooks:
                self._handles.append(opt.register_step_pre_hook(functools.partial(self._step_pre_hook, i)))
            self._handles.append(opt.register_step_post_hook(functools.partial(self._step_post_hook, i)))
        if step_pre_hooks and self.scaler is not None and self.optimizers:
            self._handles.append(_ScalerSteps(self))

    def _step_pre_hook(self, index: int, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._pre_hooks_run += 1
        self._backward_boundary(index)

    def _skipped_by_scaler(self, optimizer: Any) -> None:
        """``scaler.step(optimizer)`` found inf/NaN gradients and did not call ``optimizer.step()``:
        no step hook ran, so the round is closed here, as the skipped step it is (its gradients
        measured, the fp16 overflow said as such), instead of merging into the next one."""
        if self._closed:
            return
        try:
            index = self._index_of(optimizer)
        except ValueError:  # an optimizer the watch does not know: not its step
            return
        self._backward_boundary(index)
        self._s.amp_skipped = True
        self._before.pop(index, None)
        self._stepped.add(index)
        if len(self._stepped) == len(self.optimizers):
            self._skipped.add(self._s.step)
            self._finish_step(skipped=False)  # written at the next step, as any: a loss logged after still counts
            self._serve_commands()

    def _step_post_hook(self, index: int, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._after_update(index)

    def _remove_hooks(self) -> None:
        self._disarm()
        while self._handles:
            self._handles.pop().remove()

    def _arm(self) -> None:
        """A measured step starts: the probe's module hooks go on, plus a root hook after them."""
        if not self._s.measured or self._armed:
            return
        inst = self._inst
        inst.probe.attach()
        # Registered after the probe's, so it runs after the probe has summarised the root's output.
        self._arm_handles.append(self.model.register_forward_hook(self._measured_post))
        self._armed = True
        self._scale = inst.begin_forward(self._s)
        self._forward_open = True

    def _restart_forward(self) -> None:
        """Forget what the probe saw since the step started and measure the next forward."""
        self._inst.end_forward(self._s, self._scale)
        self._scale = self._inst.begin_forward(self._s)
        self._forward_open = True

    def _disarm(self) -> None:
        if self._forward_open:
            self._inst.end_forward(self._s, self._scale)
            self._forward_open = False
        if self._armed:
            if self._out.live is not None and self._s.modules:
                # Between steps a client may ask for a module's values: keep this step's samples
                # (references to the probe's fixed-size copies, not new copies).
                self._samples = {m.name: self._inst.probe.sample_of(m.name) for m in self._s.modules}
            self._inst.probe.detach()
            while self._arm_handles:
                self._arm_handles.pop().remove()
            self._armed = False
        self._inputs = None

    def _root_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._closed or not torch.is_grad_enabled():
            return
        if self._pending is not None:
            self._emit_pending()
        if kwargs.get("num_items_in_batch") is not None:
            self._loss.summed = True  # a Hugging Face loss divided by the whole step's item count
        if self._forward_seen:
            return
        self._forward_seen = True
        now = time.perf_counter()
        self._s.data_seconds = now - self._t_step
        self._t_forward = now
        if self._forward_open:
            self._inputs = (args, kwargs)

    def _root_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._closed or not torch.is_grad_enabled():
            return
        if self._loss.rank <= MODEL_OUTPUT:
            loss, source = output_loss(output)
            if loss is not None and loss.numel() == 1:
                # Read at the optimizer step, with nothing else syncing (each micro-batch's: their mean).
                self._loss.add(loss, source, MODEL_OUTPUT)
        if self._t_forward is not None and Phase.FORWARD not in self._s.phase_seconds:
            # The user's forward: its wall time less the probe's hooks inside it.
            hooks = self._inst.probe.seconds if self._forward_open else 0.0
            self._s.phase_seconds[Phase.FORWARD] = max(time.perf_counter() - self._t_forward - hooks, 0.0)
        self._t_resume = time.perf_counter()

    def _measured_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._forward_open:
            return
        if not torch.is_grad_enabled():
            # An evaluation forward inside a measured step: not the one to measure; start over.
            self._restart_forward()
            return
        self._end_measured_forward()

    def _end_measured_forward(self) -> None:
        s, inst = self._s, self._inst
        self._forward_open = False
        t0, charged = time.perf_counter(), s.charged
        inst.end_forward(s, self._scale)
        inst.begin_phase()
        inst.forward_stats(s, self._scale, self._bad_inputs)
        self._inputs = None
        self._found(inst.phase_findings)
        s.phases_done.append(Phase.FORWARD)
        self._charge_self(s, t0, charged)
        self._t_resume = time.perf_counter()

    def _bad_inputs(self) -> list[Finding]:
        if self._inputs is None:
            return []
        args, kwargs = self._inputs
        parts = [("inputs", list(args))] + [(f"inputs[{k!r}]", v) for k, v in kwargs.items()]
        if len(args) == 1 and not kwargs:
            parts = [("inputs", args[0])]
        elif not args and len(kwargs) == 1 and isinstance(next(iter(kwargs.values())), dict):
            parts = [("inputs", next(iter(kwargs.values())))]
        bad = find_non_finite(parts, 0)
        label = f"the batch of step {self._s.step}"
        return self._inst.health.diagnosis.non_finite_data(self._s.step, Phase.FORWARD, bad, label)

    def _split_params(self) -> None:
        """Each optimizer's share of the measured parameters; those no optimizer holds go with the
        first (the unowned-parameter rule names them)."""
        ids = {id(r.param): r for r in self._inst.params}
        self._refs = []
        claimed: set[int] = set()
        for o in self.optimizers:
            refs = [ids[id(p)] for g in o.param_groups for p in g["params"] if id(p) in ids and id(p) not in claimed]
            claimed.update(id(r.param) for r in refs)
            self._refs.append(refs)
        if self._refs:
            self._refs[0] += [r for r in self._inst.params if id(r.param) not in claimed]
        self._groups_key = self._optimizer_groups()

    def _optimizer_groups(self) -> tuple[int, ...]:
        return tuple(len(g["params"]) for o in self.optimizers for g in o.param_groups)

    def _refresh_params(self) -> None:
        """A layer unfrozen (requires_grad, add_param_group) since the last step: measured from now."""
        if self._inst.refresh_params() or self._optimizer_groups() != self._groups_key:
            self._split_params()

    # -- boundaries -------------------------------------------------------------------------
    def _index_of(self, optimizer: Any) -> int:
        opt = unwrap_optimizer(optimizer)
        for i, o in enumerate(self.optimizers):
            if o is opt:
                return i
        raise ValueError("this optimizer is not watched: pass it to workbench.watch(model, optimizer)")

    def _backward_boundary(self, index: int | None) -> None:
        """After backward, before the optimizer ``index`` (None: wb.step()) changes the weights."""
        if self._closed:
            return
        t0 = time.perf_counter()
        if self._pending is not None:
            self._emit_pending()
        if index is not None and index in self._stepped:
            self._finish_step(skipped=False)  # that optimizer steps again: the last round was incomplete
        s, inst = self._s, self._inst
        charged = s.charged
        if Phase.BACKWARD not in s.phase_seconds:
            # The loss and backward as the loop runs them (without a root forward: the whole step so far).
            since = self._t_resume if self._t_forward is not None and self._t_resume is not None else self._t_step
            s.phase_seconds[Phase.BACKWARD] = max(t0 - since, 0.0)
        if self._forward_open:
            self._end_measured_forward()  # the root module was never called: end the forward here
        first = not self._stepped and Phase.BACKWARD not in s.phases_done
        if first:
            self._refresh_params()
        inst.begin_phase()
        total = self._loss.value() if first and s.loss is None else None
        if total is not None:
            inst.loss_value(s, total, None, self._loss.source)
        refs = self._refs[index] if index is not None else inst.params
        several = len(self.optimizers) > 1
        earlier, earlier_total = s.params, s.total_grad_norm
        if first and self.scaler is not None and self.scaler.is_enabled():
            # Sync point (fp16 only): the scale this backward used (the scaler's update() comes
            # after the step), to unscale the output-gradient norms the probe saw.
            s.grad_scale = float(self.scaler.get_scale())
        inst.backward_stats(s, self._holder, self.scaler, refs, total_rule=not several)
        if several and self._stepped:
            # Another optimizer of this step measured its parameters already: keep both.
            names = {r.name for r in refs}
            s.params = tuple(p for p in earlier if p.name not in names) + s.params
            if earlier_total is not None and s.total_grad_norm is not None:
                s.total_grad_norm = math.hypot(earlier_total, s.total_grad_norm)
        if Phase.BACKWARD not in s.phases_done:
            s.phases_done.append(Phase.BACKWARD)
        tb = self._out.tb
        if tb is not None and tb.wants_histograms(s.step) and first:
            tb.histograms(self.model, s.step)
        if index is not None:
            self._before[index] = inst.before_update(s, refs)
        self._found(inst.phase_findings)
        self._charge_self(s, t0, charged)
        self._t_boundary = time.perf_counter()
        hit = self._check_breakpoints(Phase.BACKWARD, s.findings)
        if hit is not None:
            self._on_hit(hit, index)

    def _after_update(self, index: int) -> None:
        if self._closed:
            return
        t0 = time.perf_counter()
        s, inst = self._s, self._inst
        charged = s.charged
        if index not in self._before:
            # No pre-hook ran for it (an integration that calls before_optimizer_step missed it).
            self._before[index] = None
        last = len(self._stepped | {index}) == len(self.optimizers)
        s.lrs = lr_values(g for o in self.optimizers for g in o.param_groups)
        if self._t_boundary is not None:
            s.phase_seconds[Phase.OPTIMIZER_STEP] = (s.phase_seconds.get(Phase.OPTIMIZER_STEP, 0.0)
                                                     + max(t0 - self._t_boundary, 0.0))
        inst.begin_phase()
        inst.update_stats(s, self._before.pop(index), self._holder, None, self.epoch, self._refs[index],
                          window_rules=last)
        self._stepped.add(index)
        self._found(inst.phase_findings)
        self._charge_self(s, t0, charged)
        phase_findings = list(inst.phase_findings)
        if last:
            self._finish_step(skipped=False)
        hit = self._check_breakpoints(Phase.OPTIMIZER_STEP, phase_findings)
        if hit is not None:
            self._on_hit(hit, None)
        if last:
            self._serve_commands()

    # -- steps ------------------------------------------------------------------------------
    def _new_state(self) -> StepState:
        return StepState(step=self._step, measured=self._step % self.every == 0)

    def _finish_step(self, *, skipped: bool) -> None:
        """Close the step in progress; its record is written when the next one starts (a loss
        logged after ``optimizer.step()`` still belongs to it), or now when ``skipped``."""
        s = self._s
        if self._stepped:
            s.phases_done.append(Phase.OPTIMIZER_STEP)
        if skipped:
            self._skipped.add(s.step)
        self._disarm()
        self._pending = (s, self._logs, self._loss)
        self._step += 1
        self._s = self._new_state()
        self._logs, self._loss = {}, StepLoss()
        self._stepped, self._before, self._hits = set(), {}, set()
        self._forward_seen = False
        self._t_forward = self._t_boundary = self._t_resume = None
        self._t_step = time.perf_counter()
        if skipped:
            self._emit_pending()
        self._arm()

    def _emit_pending(self, act: bool = True) -> None:
        """Write the finished step's record. A loss that came only now (``wb.log(loss=...)`` after
        ``optimizer.step()``) gets its rules and loss breakpoints here, at the next step's start:
        a hit then stops the loop after that update (``act``: False when the watch is closing,
        which records the hit only)."""
        if self._pending is None:
            return
        s, logs, loss = self._pending
        self._pending = None
        t0 = time.perf_counter()
        tensors = {k: v for k, v in logs.items() if isinstance(v, torch.Tensor)}
        values = {k: v for k, v in logs.items() if not isinstance(v, torch.Tensor)}
        if "loss" in tensors and s.loss is not None and s.loss_source == "wb.log":
            values["loss"] = s.loss  # read already, with the backward boundary's loss transfer
            del tensors["loss"]
        if tensors:
            # Sync point: wb.log's tensors, all at once, when the step's record is written.
            numbers = torch.stack([t.float().reshape(()).to(self._device) for t in tensors.values()]).tolist()
            values.update(zip(tensors, numbers))
        late: list[Finding] | None = None  # the loss arrived after the update: its rules' findings
        if s.loss is None and "loss" in values:
            self._inst.begin_phase()
            s.loss, s.loss_source = float(values["loss"]), "wb.log"
            self._inst.loss_rules(s)
            late = list(self._inst.phase_findings)
            self._found(late)
        elif s.loss is None and (total := loss.value()) is not None:
            self._inst.begin_phase()
            self._inst.loss_value(s, total, None, loss.source)
            self._found(self._inst.phase_findings)
        mem = memory.sample(self._device, s.activation_bytes,
                            rss=memory.rss_for(s.measured, self._history[-1] if self._history else None))
        s.charge("watch", time.perf_counter() - t0)
        record = StepRecord(
            step=s.step, loss=s.loss, total_grad_norm=s.total_grad_norm, lrs=s.lrs,
            phase_seconds=dict(s.phase_seconds), memory=mem, modules=s.modules, params=s.params,
            findings=tuple(s.findings), skipped=s.step in self._skipped,
            instrument_seconds=s.charged, instrument_breakdown=dict(s.instrument),
            epoch=self.epoch, batch_size=0, measured=s.measured, data_seconds=s.data_seconds,
            loss_source=s.loss_source if s.loss is not None else "", grad_scale=s.grad_scale,
            amp_skipped=s.amp_skipped,
        )
        self._history.append(record)
        self._logged.append(values)
        if len(self._logged) > (self._history.maxlen or 0):
            del self._logged[0]
        self._out.record(record, values)
        if late is not None:
            hit = breaks.late_loss_hit(self.breakpoints, s, late)
            if hit is not None:
                if act:
                    self._on_hit(hit, None, s)
                else:
                    self.break_hits.append(hit)
                    if self._out.live is not None:
                        self._out.live.publish(hit)

    def _found(self, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        self._findings.extend(findings)
        self._out.findings(findings)
        if self.on_finding is not None:
            for f in findings:
                self.on_finding(f)

    def _charge_self(self, s: StepState, t0: float, charged: float) -> None:
        """Charge ``s`` with the watch's own time since ``t0`` that no instrument charged
        (``charged``: the sum of ``s.instrument`` at ``t0``)."""
        spent = time.perf_counter() - t0
        own = spent - (s.charged - charged)
        s.charge("watch", max(own, 0.0))

    # -- breakpoints ------------------------------------------------------------------------
    def _check_breakpoints(self, phase: Phase, candidates: Sequence[Finding]) -> BreakHit | None:
        # After the optimizer step of a step's last optimizer, that step is the pending one.
        s = self._s if phase is Phase.BACKWARD else (self._pending[0] if self._pending else self._s)
        return breaks.first_hit(self.breakpoints, phase, s, candidates, self._hits, once=s is self._s)

    def _on_hit(self, hit: BreakHit, index: int | None, state: StepState | None = None) -> None:
        """``state``: the step the hit is about, when not the one in progress (a late loss's)."""
        self.break_hits.append(hit)
        if self._out.live is not None:
            self._out.live.publish(hit)
        if self.on_break == "log":
            return
        if self.on_break == "raise":
            if hit.phase is Phase.BACKWARD:
                # The optimizer step will not happen (raised from its pre-hook, or from wb.step()):
                # the step ends here; with an optimizer it is marked skipped.
                if index is None:
                    self._stepped.clear()
                self._finish_step(skipped=index is not None)
            error = Break(hit)
            if self.close_on_break:
                self.close(error)
            raise error
        if self.on_break == "pdb":
            breaks.debug(hit, self.model, self, state or self._s, self._inst.activation_sample)
            return
        if self._out.live is None:
            # A rank other than 0 serves no session, so nobody could tell it to go on: the hit is
            # logged, and the rank waits for rank 0 (which holds) at its next collective.
            return
        self._wait(hit, index, state)

    def _held_progress(self, hit: BreakHit, state: StepState | None) -> StepProgress | None:
        """The held step as far as it got, for the clients' screens: its module stats, loss and
        findings (the step in progress, or the finished one a later hit is about)."""
        s = state
        if s is None:
            s = self._s if hit.step == self._s.step else (self._pending[0] if self._pending else None)
        if s is None or s.step != hit.step:
            return None
        # A watch does not time the loss apart from the backward (the loop computes it), and an
        # unmeasured step's forward runs no hook: at a hold all of them have run.
        done = [Phase.FORWARD, Phase.LOSS, Phase.BACKWARD]
        if hit.phase is not Phase.BACKWARD:
            done.append(Phase.OPTIMIZER_STEP)
        return StepProgress(step=s.step, next_phase=Phase.OPTIMIZER_STEP, phases_done=tuple(done), loss=s.loss,
                            total_grad_norm=s.total_grad_norm, phase_seconds=dict(s.phase_seconds),
                            modules=s.modules, params=s.params, findings=tuple(s.findings),
                            measured=s.measured, batch_size=s.batch_size)

    def _wait(self, hit: BreakHit, index: int | None, state: StepState | None = None) -> None:
        from workbench.session.live import Stopped

        def skip() -> None:
            if index is not None:
                # torch's optimizers skip parameters without a gradient: this step() changes nothing.
                for ref in self._refs[index]:
                    ref.param.grad = None
                self._skipped.add(hit.step)

        assert self._out.live is not None  # _on_hit waits only where this process serves
        note = ""
        if hit.phase is not Phase.BACKWARD:
            note = f"held at {hit.breakpoint} after step {hit.step}'s update: a client continues"
        try:
            self._out.live.wait_at_break(hit, skip, self._held_progress(hit, state), note)
        except Stopped as stop:
            raise Break(stop.hit) from None

    # -- outputs ----------------------------------------------------------------------------
    def _open_outputs(self, report: Any, tensorboard: Any, histogram_every: int, serve: Any, run_dir: Any) -> None:
        self._out.open_files(report, tensorboard, histogram_every, rank=self.rank, world=self.world_size,
                             title=self.title, device=str(self._device), every=self.every)
        if serve and self.rank == 0:  # the live session is rank 0's; every rank writes its report
            self._out.serve(serve, run_dir, title=self.title, device=str(self._device), every=self.every,
                            modules=tuple(self._inst.module_tree.values()),
                            breakpoints=tuple(b.describe() for b in self.breakpoints),
                            set_breakpoints=self._set_breakpoints, sample=self._sample)

    def _set_breakpoints(self, conditions: Sequence[str]) -> None:
        self.breakpoints = parse_breakpoints(conditions)

    def _serve_commands(self) -> None:
        """Between steps: what clients asked for (pause blocks here until continue)."""
        live = self._out.live
        if live is None:
            return
        from workbench.session.live import Stopped

        try:
            live.serve(self._step)
        except Stopped as stop:
            raise Break(stop.hit) from None

    def _sample(self, request: Any) -> Any:
        return sample_reply(request, self._inst, self.model, self._samples, self._step)

    def _close_outputs(self, stopped_by: str, error: dict[str, Any] | None) -> None:
        self._out.close(stopped_by, error, self.break_hit)

    def _abort_outputs(self) -> None:
        self._closed = True
        self._out.abort()

    def _at_exit(self) -> None:
        """The interpreter exits and close() never ran: keep what was measured."""
        # An uncaught exception ending the script is left in sys.last_value by the interpreter;
        # without one the script simply ended without close(): its steps are complete.
        exc = getattr(sys, "last_value", None)
        ours = isinstance(exc, BaseException) and id(exc) != self._last_before
        self.close(exc if ours else None)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this workbench.watch is closed; start a new one")


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    **options: Any,
) -> Watch:
    """Watch a training loop you own with the engine's instruments; see :class:`Watch`.

    ``every``: module/parameter stats every k-th step (default 16; the others record the loss,
    the total gradient norm, lr and memory). ``report``: a JSON report of schema
    workbench.run/1, as ``workbench run --json`` writes (per rank under torch.distributed:
    ``exp.rank1.json``). ``tensorboard``: a log directory. ``break_on``: conditions as
    ``run --break-on`` takes them. ``on_break``: "raise" (``workbench.Break``, before the
    optimizer step), "pdb", "wait" (needs ``serve``; on a rank other than 0, which serves
    nothing, a hit is logged and the rank waits for rank 0 at its next collective) or "log".
    ``on_finding``: called with every finding. ``scaler``: the ``torch.amp.GradScaler`` the
    loop scales its loss with, so the output-gradient norms are reported unscaled (without it
    they carry the scale; the parameters' gradients are unscaled by ``scaler.step`` before the
    watch reads them). ``serve``: True (127.0.0.1, a free port) or an address ("HOST:PORT",
    "unix:PATH"): publish the session live for ``workbench attach`` (rank 0 only), with its
    files under ``run_dir`` (default runs/watch/SCRIPT-TIME-PID).
    """
    return Watch(model, optimizer, **options)


class _ScalerSteps:
    """The watched loop's ``scaler.step``, wrapped for as long as the watch is open (removed like
    a hook handle): a step the GradScaler skips calls no ``optimizer.step()``, so no step hook
    tells the watch; this does (see Watch._skipped_by_scaler)."""

    def __init__(self, watched: Watch) -> None:
        self.scaler = watched.scaler
        original = self.scaler.step
        ref = weakref.ref(watched)

        def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            w = ref()
            before = w._pre_hooks_run if w is not None else 0
            result = original(optimizer, *args, **kwargs)
            if w is not None and w._pre_hooks_run == before and self.scaler.is_enabled():
                w._skipped_by_scaler(optimizer)
            return result

        self.step = step
        self.scaler.step = step  # the instance's attribute, in front of the class's method

    def remove(self) -> None:
        if self.scaler.__dict__.get("step") is self.step:
            del self.scaler.step
