"""Step snapshots: what the engine needs to rewind to the start of a recent step.

A snapshot is taken as a step starts: the model's state_dict (parameters and
buffers such as BatchNorm running stats), the optimizer's and scheduler's
state and the health rules' running state; then, once the step has drawn its
batch, the batch itself (as the data yielded it) and every RNG stream the step
computes with (torch CPU and CUDA, Python's ``random``). The RNG is taken after
the draw because drawing may consume it (a shuffling DataLoader seeds each new
epoch's order from it) and a replay does not draw: it reuses the kept batch and
restores the RNG of each replayed step, so a replay gives the same numbers bit
for bit on a deterministic device, whatever the data pipeline does.

Copies go to host memory, so the snapshots never take device memory nor show
in the CUDA figures of the memory panel; on CUDA they are asynchronous copies
into pinned memory with one deliberate sync per snapshot (on CPU, plain clones). A snapshot
costs about the model's plus the optimizer's size in memory, so the
ring is small, off by default (``EngineConfig(snapshots=N)``), and bounded
by a byte budget too (``snapshot_budget``): a model whose one snapshot is
over budget is not snapshotted at all, and ``rewind`` says so.

State that lives outside the model (a hidden state carried between batches in
a closure, an EMA copy) is the scenario's to hand over: ``Scenario.state()``
is deep-copied into each snapshot and ``Scenario.load_state(value)`` puts it
back. The fp16 GradScaler's scale is snapshotted too, so a replay skips the
same steps.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.scenario import Batch, Scenario


@dataclass
class Snapshot:
    step: int
    epoch: int
    batches_in_epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    health: Any  # a copy of the engine's HealthMonitor
    batch: Batch | None = None  # set by ``drawn`` once the step has its batch
    cpu_rng: torch.Tensor | None = None
    cuda_rng: list[torch.Tensor] | None = None
    python_rng: Any = None
    bytes: int = 0
    extra: Any = None  # a copy of Scenario.state(), when has_extra
    has_extra: bool = False
    scaler: dict[str, Any] | None = None  # GradScaler.state_dict() under fp16

    def drawn(self, batch: Batch, epoch: int, batches_in_epoch: int) -> None:
        """The step has drawn its batch: keep it, the data counters and the RNG as they are now."""
        self.batch, self.epoch, self.batches_in_epoch = batch, epoch, batches_in_epoch
        self.cpu_rng = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
        self.python_rng = random.getstate()

    def restore_rng(self) -> None:
        if self.cpu_rng is not None:
            torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        if self.python_rng is not None:
            random.setstate(self.python_rng)

    def restore(self, scenario: Scenario, scaler: torch.amp.GradScaler | None = None) -> None:
        """Put model, optimizer, scheduler, the scenario's own state and the GradScaler back as
        they were at this step's start (the RNG follows when the replay hands out this step's batch)."""
        scenario.model.load_state_dict(self.model)  # in place: the optimizer's params stay the same objects
        scenario.optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if scenario.scheduler is not None and self.scheduler is not None:
            scenario.scheduler.load_state_dict(copy.deepcopy(self.scheduler))
        if self.has_extra and scenario.load_state is not None:
            scenario.load_state(copy.deepcopy(self.extra))
        if scaler is not None and self.scaler is not None:
            scaler.load_state_dict(copy.deepcopy(self.scaler))
        scenario.optimizer.zero_grad(set_to_none=True)


class SnapshotTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"a snapshot would take {size} bytes")
        self.size = size


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """A host copy: a clone on CPU; from a GPU, an asynchronous copy into pinned memory
    (``take`` waits for all of them at once)."""
    if t.device.type == "cpu":
        return t.detach().clone()
    out = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
    return out.copy_(t.detach(), non_blocking=True)


def _copy_optimizer_state(sd: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of an optimizer state_dict: tensors copied to the host, the rest copied.

    Cheaper than copy.deepcopy, which walks every tensor through the pickling machinery.
    """
    state = {k: {n: (_host_copy(v) if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                 for n, v in per_param.items()}
             for k, per_param in sd["state"].items()}
    return {**{k: copy.deepcopy(v) for k, v in sd.items() if k != "state"}, "state": state}


def _state_bytes(model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> int:
    size = sum(t.numel() * t.element_size() for t in model_state.values())
    for per_param in optimizer_state["state"].values():
        size += sum(t.numel() * t.element_size() for t in per_param.values() if isinstance(t, torch.Tensor))
    return size


def size_of(scenario: Scenario) -> int:
    """Bytes a snapshot of this scenario would take (model state plus optimizer state), without copying."""
    return _state_bytes(scenario.model.state_dict(), scenario.optimizer.state_dict())


def take(scenario: Scenario, step: int, epoch: int, batches_in_epoch: int, health: Any,
         budget: int = 2**63, *, scaler: torch.amp.GradScaler | None = None) -> Snapshot:
    """Copy the step-start state; SnapshotTooLarge (nothing copied) when it is over ``budget`` bytes."""
    model_state, optimizer_state = scenario.model.state_dict(), scenario.optimizer.state_dict()
    size = _state_bytes(model_state, optimizer_state)
    if size > budget:
        raise SnapshotTooLarge(size)
    model = {k: _host_copy(v) for k, v in model_state.items()}
    optimizer = _copy_optimizer_state(optimizer_state)
    if any(v.is_cuda for v in model_state.values()):
        # Sync point: the one wait for this snapshot's device->host copies (snapshots are opt-in).
        torch.cuda.synchronize()
    scheduler = _scheduler_state(scenario.scheduler)
    snap = Snapshot(step, epoch, batches_in_epoch, model, optimizer, scheduler, copy.deepcopy(health), bytes=size)
    if scenario.state is not None:
        snap.extra, snap.has_extra = copy.deepcopy(scenario.state()), True
    if scaler is not None:
        snap.scaler = copy.deepcopy(scaler.state_dict())
    return snap


def _scheduler_state(scheduler: Any) -> dict[str, Any] | None:
    """A copy of the scheduler's state_dict; a scheduler without one (timm's have it, a
    hand-written one may not) is not snapshotted."""
    state_dict = getattr(scheduler, "state_dict", None)
    if scheduler is None or not callable(state_dict):
        return None
    return copy.deepcopy(state_dict())


@dataclass
class SnapshotRing:
    """The last ``size`` step snapshots, oldest first."""

    size: int
    budget: int = 2**63  # bytes, all snapshots together
    items: deque[Snapshot] = field(default_factory=deque)
    too_big: int | None = None  # bytes of one snapshot, when it alone was over the budget (none are taken)

    def add(self, snap: Snapshot) -> None:
        while self.items and self.items[-1].step >= snap.step:
            self.items.pop()  # a replayed step replaces its old snapshot
        self.items.append(snap)
        while len(self.items) > self.size or (len(self.items) > 1 and self.bytes > self.budget):
            self.items.popleft()

    def steps(self) -> tuple[int, ...]:
        return tuple(s.step for s in self.items)

    def get(self, step: int) -> Snapshot | None:
        return next((s for s in self.items if s.step == step), None)

    def drop_from(self, step: int) -> list[Snapshot]:
        """Remove and return the snapshots of ``step`` and later, oldest first."""
        kept = [s for s in self.items if s.step < step]
        gone = [s for s in self.items if s.step >= step]
        self.items = deque(kept)
        return gone

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.items)

    def refusal(self, target: int, origin: int, started: bool) -> str | None:
        """Why a rewind from ``origin`` (the step a resume would run next) back to the start of
        ``target`` is not possible, or None when it is. ``started``: any step has begun."""
        kept = self.steps()
        if self.get(target) is None:
            if not self.size:
                why = "snapshots are off (EngineConfig(snapshots=N) keeps the last N step starts)"
            elif self.too_big is not None:
                why = (f"one snapshot of this model and optimizer takes {self.too_big / 2**20:.1f} MB, "
                       f"over the {self.budget / 2**20:.1f} MB snapshot budget, so none are taken")
            elif not kept and not started:
                why = "no step has started yet"
            elif not kept:
                why = ("no snapshot is kept now: a rewind uses up the snapshots it goes back over, and the "
                       "replayed steps take them again")
            else:
                why = f"snapshots are kept for steps {kept[0]}..{kept[-1]} (the last {self.size})"
            return f"cannot rewind to step {target}: {why}"
        have = [x for x in kept if x >= target]
        if have != list(range(target, origin)):
            missing = sorted(set(range(target, origin)) - set(have))
            return (f"cannot rewind to step {target}: step {missing[0]} has no snapshot (it failed "
                    "before drawing its batch), so a replay would not see the same batches")
        return None
