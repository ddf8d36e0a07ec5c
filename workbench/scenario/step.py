"""The training-step vocabulary every command shares.

One implementation of each mechanism of a training step, used by the engine,
the bench variants (DDP ranks included), the profiler loop, diff and summary:

* :class:`DataCycle`: ``Scenario.data`` forever, as Batches, counting epochs.
* :func:`forward_loss`: the model call and the loss under the scenario's autocast.
* :func:`backward`: ``loss.backward()``, through the GradScaler under fp16.
* :func:`prepare_update`: unscale, clip the gradient norm, the ``before_step`` hook.
* :func:`apply_update`: optimizer (or scaler) step and ``zero_grad``.
* :func:`scheduler_after_update` / :func:`scheduler_at_epoch`: the scheduler as the
  scenario says (per step or per epoch, plain ``step()`` or ``scheduler_step``).
* :func:`train_step`: all of the above, for loops that need no measuring in between.
* :func:`instrumented`: hooks on a model that leave no trace (train/eval flags, RNG
  streams and hooks restored in ``finally``, as torchinfo's ``forward_pass`` does).

Nothing here syncs with the device unless a comment says so.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.scenario.batch import Batch
from workbench.scenario.contract import LossValue, Scenario
from workbench.scenario.errors import ScenarioError


# -- leaving no trace ---------------------------------------------------------------------


class Hooks:
    """Hook handles (and cleanup callbacks) removed when :func:`instrumented` exits."""

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._callbacks: list[Callable[[], None]] = []

    def add(self, handle: Any) -> Any:
        self._handles.append(handle)
        return handle

    def forward_hook(self, module: nn.Module, fn: Callable[..., Any]) -> Any:
        return self.add(module.register_forward_hook(fn))

    def forward_pre_hook(self, module: nn.Module, fn: Callable[..., Any]) -> Any:
        return self.add(module.register_forward_pre_hook(fn))

    def on_exit(self, fn: Callable[[], None]) -> None:
        self._callbacks.append(fn)

    def close(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        while self._callbacks:
            self._callbacks.pop()()


@contextlib.contextmanager
def instrumented(model: nn.Module, *, train: bool | None = None, grad: bool | None = None,
                 restore_rng: bool = True) -> Iterator[Hooks]:
    """Instrument ``model`` for the block and leave it as it was.

    ``train``: put the model in train (True) or eval (False) mode for the block.
    ``grad``: run the block with gradients on (True) or off (False). On exit,
    whatever happened inside: every hook registered through the yielded
    :class:`Hooks` is removed, each module's ``training`` flag is restored, and
    (``restore_rng``) torch's CPU and CUDA RNG streams and Python's ``random``.
    """
    flags = [(m, m.training) for m in model.modules()]
    cpu_rng = torch.get_rng_state() if restore_rng else None
    cuda = restore_rng and torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
    py_rng = random.getstate() if restore_rng else None
    hooks = Hooks()
    try:
        if train is not None:
            model.train(train)
        grad_ctx = contextlib.nullcontext() if grad is None else torch.set_grad_enabled(grad)
        with grad_ctx:
            yield hooks
    finally:
        hooks.close()
        for m, flag in flags:
            m.training = flag
        if cpu_rng is not None:
            torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if py_rng is not None:
            random.setstate(py_rng)


# -- the data -------------------------------------------------------------------------


class DataCycle:
    """``data`` (default ``scenario.data``) forever as Batches: re-iterated when exhausted.

    ``epoch`` counts completed passes, ``batches_in_epoch`` the batches drawn in
    the current one; :attr:`epoch_started` is True right after the first batch
    of every epoch but the first (where a per-epoch scheduler steps).
    """

    def __init__(self, scenario: Scenario, data: Iterable[Any] | None = None, where: str | None = None) -> None:
        self.scenario = scenario
        self.data = scenario.data if data is None else data
        self.where = where or f"{scenario.where}: data"
        self.epoch = 0
        self.batches_in_epoch = 0
        self._it: Iterator[Any] | None = None

    def next_item(self) -> Any:
        """The next raw item, as the data yielded it."""
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.data)
                self.batches_in_epoch = 0
            try:
                item = next(self._it)
            except StopIteration:
                self._it = None
                if self.batches_in_epoch > 0:
                    self.epoch += 1
                continue
            self.batches_in_epoch += 1
            return item
        raise ScenarioError(f"{self.where} yielded no batches; it must yield at least one batch.")

    def drop(self) -> None:
        """Let go of the data's iterator (the next item starts a fresh pass), shutting down a
        DataLoader's workers now: after a worker died, torch's SIGCHLD handler raises again on
        every signal for as long as the iterator keeps its dead worker registered."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)  # torch's own cleanup, what its __del__ calls
        if callable(shutdown):
            shutdown()

    def __next__(self) -> Batch:
        return self.scenario.make_batch(self.next_item(), self.where)

    def __iter__(self) -> DataCycle:
        return self

    @property
    def epoch_started(self) -> bool:
        return self.epoch > 0 and self.batches_in_epoch == 1

    def reset(self) -> None:
        """Drop the live iterator (a DataLoader's workers go with it)."""
        self._it = None


# -- one step, piece by piece ------------------------------------------------------------


def forward_loss(scenario: Scenario, batch: Batch, model: nn.Module | None = None,
                 autocast: torch.dtype | None | str = "scenario") -> tuple[Any, LossValue]:
    """The model's outputs and the loss on ``batch``, under the scenario's autocast (or
    ``autocast``: a dtype, or None for none)."""
    with scenario.autocast(autocast):  # type: ignore[arg-type]
        outputs = scenario.call_model(batch, model)
        return outputs, scenario.compute_loss(outputs, batch)


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None = None) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()


@dataclass
class UpdatePrep:
    """What :func:`prepare_update` did: the clip norm (a device tensor, read it when you
    choose: it is a sync) and the seconds of each sub-phase."""

    grad_norm: torch.Tensor | None = None  # total norm before clipping (None: no clipping)
    clip_seconds: float = 0.0
    before_step_seconds: float = 0.0


@dataclass(frozen=True)
class ClipNorm:
    """The total gradient norm clipping scales by, with the parameters it was taken over."""

    params: list[nn.Parameter]
    norm: torch.Tensor  # on the device: read it when you choose (a sync)


def clip_total_norm(model: nn.Module) -> ClipNorm | None:
    """The total gradient 2-norm of ``model`` exactly as ``clip_grad_norm_(model.parameters())``
    computes it (the same tensors, the same reduction), or None when no parameter has a
    gradient. A caller that reads the norm anyway passes it to :func:`prepare_update`, so the
    clipping neither computes it nor walks the parameters a second time, and scales the
    gradients bit for bit as ``clip_grad_norm_`` would."""
    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    return ClipNorm(params, torch.nn.utils.get_total_norm(grads)) if grads else None


def prepare_update(scenario: Scenario, scaler: torch.amp.GradScaler | None = None,
                   *, unscaled: bool = False, grad_norm: ClipNorm | None = None) -> UpdatePrep:
    """Between backward and the optimizer step: unscale (fp16), clip, ``before_step``.

    ``unscaled``: the caller already called ``scaler.unscale_`` this step. ``grad_norm``: the
    :func:`clip_total_norm` of these (unscaled) gradients, already computed by the caller.
    """
    prep = UpdatePrep()
    if scaler is not None and not unscaled and (scenario.clip_grad_norm is not None
                                                or scenario.before_step is not None):
        # Clipping and a user's hook must see true gradients, not scaled ones.
        scaler.unscale_(scenario.optimizer)
    if scenario.clip_grad_norm is not None:
        t0 = time.perf_counter()
        if grad_norm is None:
            prep.grad_norm = torch.nn.utils.clip_grad_norm_(scenario.model.parameters(), scenario.clip_grad_norm)
        else:
            torch.nn.utils.clip_grads_with_norm_(grad_norm.params, scenario.clip_grad_norm, grad_norm.norm)
            prep.grad_norm = grad_norm.norm
        prep.clip_seconds = time.perf_counter() - t0
    if scenario.before_step is not None:
        t0 = time.perf_counter()
        scenario.before_step(scenario.model, scenario.optimizer)
        prep.before_step_seconds = time.perf_counter() - t0
    return prep


def abandon_update(scaler: torch.amp.GradScaler | None) -> None:
    """End a step that will not reach :func:`apply_update` (skipped, failed, or rewound) with
    the scaler as the next step needs it: ``unscale_`` marks the optimizer until the scaler's
    ``update()``, and a second ``unscale_`` before that raises. ``update`` with the current
    scale forgets this step's unscaling and inf checks and leaves the scale as it was.
    """
    if scaler is None or not scaler.is_enabled() or getattr(scaler, "_scale", None) is None:
        return  # no scaler, or it has scaled nothing yet: nothing to forget
    # Sync point (fp16 only, on this rare path): the current scale, to set it back unchanged.
    scaler.update(new_scale=scaler.get_scale())


def apply_update(scenario: Scenario, scaler: torch.amp.GradScaler | None = None) -> None:
    """``optimizer.step()`` (through the scaler under fp16, which skips a step whose
    gradients are not finite) and ``zero_grad``."""
    if scaler is not None:
        scaler.step(scenario.optimizer)
        scaler.update()
    else:
        scenario.optimizer.step()
    scenario.optimizer.zero_grad(set_to_none=True)


def _default_scheduler_step(scheduler: Any, loss: Any) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if loss is None:
            return  # nothing to judge a plateau by yet
        # float() of a device tensor is a sync; only for ReduceLROnPlateau, which needs a number.
        scheduler.step(float(loss))
        return
    scheduler.step()


def _step_scheduler(scenario: Scenario, step: int, epoch: int, loss: Any) -> None:
    if scenario.scheduler_step is not None:
        scenario.scheduler_step(scenario.scheduler, step, epoch)
    elif scenario.scheduler is not None:
        _default_scheduler_step(scenario.scheduler, loss)


def scheduler_after_update(scenario: Scenario, step: int, epoch: int, loss: Any = None) -> None:
    """After optimizer step number ``step`` (counted from 1) in ``epoch``: a per-step
    scheduler (the default interval) steps."""
    if scenario.scheduler_interval != "epoch":
        _step_scheduler(scenario, step, epoch, loss)


def scheduler_at_epoch(scenario: Scenario, step: int, epoch: int, loss: Any = None) -> None:
    """Epoch ``epoch`` (counted from 1) has ended after ``step`` optimizer steps: a
    per-epoch scheduler steps (call it before the next epoch's first update)."""
    if scenario.scheduler_interval == "epoch":
        _step_scheduler(scenario, step, epoch, loss)


def train_step(scenario: Scenario, batch: Batch, *, model: nn.Module | None = None,
               scaler: torch.amp.GradScaler | None = None, autocast: torch.dtype | None | str = "scenario",
               step: int = 0, epoch: int = 0) -> torch.Tensor:
    """One full training step on ``batch``; the loss tensor (not read: no sync).

    ``step`` is the number of optimizer steps done before this one.
    """
    _, loss = forward_loss(scenario, batch, model, autocast)
    backward(loss.total, scaler)
    prepare_update(scenario, scaler)
    apply_update(scenario, scaler)
    scheduler_after_update(scenario, step + 1, epoch, loss.total.detach())
    return loss.total


def micro_batches(scenario: Scenario, batch: Batch, k: int) -> list[tuple[Batch, float]]:
    """``batch`` as ``k`` micro-batches along the batch dimension, each with the weight its
    loss gets so the accumulated gradient equals the full batch's: its share of the
    samples for a mean-reduced loss, 1 for a summed one."""
    summed = scenario.loss_is_summed
    total = batch.size
    return [(m, 1.0 if summed else m.size / total) for m in batch.split(k)]


def accumulate_step(scenario: Scenario, micros: list[tuple[Batch, float]], *,
                    scaler: torch.amp.GradScaler | None = None, autocast: torch.dtype | None | str = "scenario",
                    step: int = 0, epoch: int = 0, update: bool = True) -> torch.Tensor:
    """Gradient accumulation: backward on each weighted micro-batch, then (``update``)
    one optimizer step. Returns the weighted loss total (not read: no sync)."""
    total: torch.Tensor | None = None
    for micro, weight in micros:
        _, loss = forward_loss(scenario, micro, autocast=autocast)
        weighted = loss.total * weight
        backward(weighted, scaler)
        total = weighted.detach() if total is None else total + weighted.detach()
    assert total is not None
    if update:
        prepare_update(scenario, scaler)
        apply_update(scenario, scaler)
        scheduler_after_update(scenario, step + 1, epoch, total)
    return total
