"""The debugger-tax harness shared by ``test_debugger_tax.py`` (CPU) and ``gpu_check.py`` (CUDA).

Each *variant* is a zero-argument callable that runs one training step of its own copy
of a scenario (same seed, same pre-materialised batches, so every copy does the same
work):

* ``bare``: a user's loop: ``train_step`` (forward, loss, backward, clipping if the
  scenario clips, optimizer step, zero_grad, scheduler) then ``loss.item()``.
* ``floor``: the bare step plus what the every-16th target allows an unmeasured step
  beyond it: the total gradient norm (one fused ``_foreach_norm``), read with the loss in
  one transfer. The least any instrumented step can cost; ``engine/16`` against it shows
  how much of the tax is the engine's own bookkeeping.
* ``refs``: the bare step plus a forward hook on every module that only keeps a
  reference to its output and a tensor hook that only keeps its gradient: the floor
  any per-module instrument pays in Python.
* ``naive``: per-layer statistics as one writes them by hand: mean/std/min/max
  ``.item()`` per module output, ``.norm().item()`` per output gradient and per
  parameter gradient (a device->host sync for every number).
* ``lean``: ``naive``'s numbers computed the cheapest way (an ``aminmax``, a ``sum`` and a
  ``dot`` per output, a ``dot`` per output gradient, one fused norm for all parameter
  gradients, one transfer per phase) and nothing else: the least any instrument that
  knows what ``naive`` knows can cost, so what a target below it asks is to measure less.
* ``engine/1`` and ``engine/16``: ``Engine.step_once`` with stats every step / every
  16th step.
* ``watch/1`` and ``watch/16`` (when ``workbench.watch`` exists): the bare user loop with
  ``workbench.watch`` around it.

Timing is interleaved: in each of ``rounds`` rounds every variant runs ``block`` steps, one
step of each variant in turn (the order rotated every step), and a variant's block time is
the sum of its own steps' times. So every variant sees the same background load on a shared
machine. A row's ratio is the median block time of the variant over the median block time of
``bare``; the per-round ratios give its spread.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.engine import Engine, EngineConfig
from workbench.engine.probe import first_float_tensor
from workbench.scenario import Scenario, load, replace
from workbench.scenario.batch import tree_map
from workbench.scenario.step import (
    apply_update,
    backward,
    forward_loss,
    prepare_update,
    scheduler_after_update,
    train_step,
)

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("cnn_image", "resnet_tiny", "lstm_text", "mlp_digits", "transformer_lm")
BATCHES = 8
BLOCK = 16  # steps per block: exactly one measured step per block at stats_every=16

Step = Callable[[], object]
BlockTimer = Callable[[Step, int], float]


def perf_block(step: Step, n: int) -> float:
    """Seconds for ``n`` steps by the host clock (CPU: every step ends with loss.item())."""
    start = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - start


def scenario_copy(name: str, device: str = "cpu", batches: int = BATCHES) -> Scenario:
    """A fresh build of a bundled scenario whose data is its first ``batches`` items, kept in memory
    on ``device``: every variant then starts its steps from batches already there (the engine's
    ``Batch.to`` returns them as they are), so no variant pays a host->device copy the others do not."""
    s = load(ROOT / "scenarios" / f"{name}.py", device)
    items = [tree_map(lambda t: t.to(s.device), item) for item in itertools.islice(iter(s.data), batches)]
    return replace(s, data=items)


def _batches(s: Scenario) -> Iterator[Any]:
    device = s.device
    return itertools.cycle([s.make_batch(item).to(device) for item in s.data])


def _start(s: Scenario) -> tuple[Iterator[Any], Iterator[int]]:
    """Every variant's loop starts alike: the scenario's seed, training mode, its batches, a step counter."""
    torch.manual_seed(s.seed)
    s.model.train()
    return _batches(s), itertools.count()


def bare(s: Scenario) -> tuple[Step, Callable[[], None]]:
    """A user's loop on ``s`` (the step, and a no-op close)."""
    batches, count = _start(s)

    def step() -> None:
        loss = train_step(s, next(batches), step=next(count))
        loss.item()  # the user's one read per step (a sync on CUDA)

    return step, lambda: None


def floor(s: Scenario) -> tuple[Step, Callable[[], None]]:
    """The bare loop plus the total gradient norm, read with the loss (one transfer per step)."""
    batches, count = _start(s)
    params = [p for p in s.model.parameters() if p.requires_grad]

    def step() -> None:
        _, loss = forward_loss(s, next(batches))
        backward(loss.total)
        norm = None
        if s.clip_grad_norm is None:
            with torch.no_grad():
                grads = [p.grad for p in params if p.grad is not None]
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
        prep = prepare_update(s)
        if norm is None:  # clipping computed the total norm already (the engine reads that one too)
            assert prep.grad_norm is not None
            norm = prep.grad_norm.detach().float()
        apply_update(s)
        scheduler_after_update(s, next(count) + 1, 0, loss.total.detach())
        torch.stack([loss.total.detach().float().reshape(()), norm]).tolist()  # the one read per step

    return step, lambda: None


def _module_hooks(model: nn.Module, on_output: Callable[[str, torch.Tensor], None],
                  on_grad: Callable[[str, torch.Tensor], None]) -> list[Any]:
    handles = []
    for name, module in model.named_modules():
        def hook(_m: nn.Module, _args: Any, output: Any, name: str = name) -> None:
            out = first_float_tensor(output)
            if out is None:
                return
            on_output(name, out)
            if out.requires_grad:
                out.register_hook(lambda g, name=name: on_grad(name, g))
        handles.append(module.register_forward_hook(hook))
    return handles


def refs(s: Scenario) -> tuple[Step, Callable[[], None]]:
    """The bare loop with hooks that only keep references to outputs and their gradients."""
    outputs: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    handles = _module_hooks(s.model, lambda _n, t: outputs.append(t), lambda _n, g: grads.append(g))
    inner, _ = bare(s)

    def step() -> None:
        outputs.clear()
        grads.clear()
        inner()

    return step, lambda: [h.remove() for h in handles] and None


def naive(s: Scenario) -> tuple[Step, Callable[[], None]]:
    """Per-layer stats written by hand: ``.item()`` for every number, as it is computed."""
    stats: dict[str, float] = {}

    def on_output(name: str, t: torch.Tensor) -> None:
        with torch.no_grad():
            x = t.detach().float()
            stats[name + ".mean"] = x.mean().item()
            stats[name + ".std"] = x.std().item() if x.numel() > 1 else 0.0
            stats[name + ".min"] = x.min().item()
            stats[name + ".max"] = x.max().item()

    def on_grad(name: str, g: torch.Tensor) -> None:
        stats[name + ".grad_norm"] = g.detach().float().norm().item()

    handles = _module_hooks(s.model, on_output, on_grad)
    params = [(n, p) for n, p in s.model.named_parameters() if p.requires_grad]
    batches, count = _start(s)

    def step() -> None:
        stats.clear()
        batch = next(batches)
        with s.autocast():
            loss = s.compute_loss(s.call_model(batch), batch).total
        loss.backward()
        for name, p in params:
            if p.grad is not None:
                stats[name + ".grad_norm"] = p.grad.detach().norm().item()
        if s.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.clip_grad_norm)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        if s.scheduler is not None:
            s.scheduler.step()
        next(count)
        stats["loss"] = loss.item()

    return step, lambda: [h.remove() for h in handles] and None


def lean(s: Scenario) -> tuple[Step, Callable[[], None]]:
    """``naive``'s numbers computed the cheapest way there is with module hooks: per output one
    ``aminmax``, one ``sum`` and one ``dot`` (mean and std follow on the host), per output
    gradient one ``dot``, one fused ``_foreach_norm`` for every parameter gradient, and one
    transfer per phase instead of an ``.item()`` per number. Nothing else: no records, no
    rules, no samples. What any instrument that knows what ``naive`` knows costs at least."""
    outputs: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    wide = (torch.float32, torch.float64)

    def flat(t: torch.Tensor) -> torch.Tensor:
        f = t.detach().reshape(-1)
        return f if f.dtype in wide else f.float()

    def on_output(_name: str, t: torch.Tensor) -> None:
        f = flat(t)
        outputs.extend(torch.aminmax(f))
        outputs.append(f.sum())
        outputs.append(torch.dot(f, f))

    def on_grad(_name: str, g: torch.Tensor) -> None:
        f = flat(g)
        grads.append(torch.dot(f, f))

    handles = _module_hooks(s.model, on_output, on_grad)
    params = [p for p in s.model.parameters() if p.requires_grad]
    batches, count = _start(s)

    def step() -> None:
        outputs.clear()
        grads.clear()
        _, loss = forward_loss(s, next(batches))
        if outputs:
            torch.stack([t.float() for t in outputs]).tolist()  # the forward's one transfer
        loss.total.item()
        backward(loss.total)
        with torch.no_grad():
            norms = torch._foreach_norm([p.grad for p in params if p.grad is not None])
            torch.stack([t.float() for t in grads] + [t.float() for t in norms]).tolist()  # the backward's
        prepare_update(s)
        apply_update(s)
        scheduler_after_update(s, next(count) + 1, 0, loss.total.detach())

    return step, lambda: [h.remove() for h in handles] and None


def engine(every: int) -> Callable[[Scenario], tuple[Step, Callable[[], None]]]:
    def make(s: Scenario) -> tuple[Step, Callable[[], None]]:
        eng = Engine(s, EngineConfig(stats_every=every, history=32))
        return eng.step_once, eng.close
    make.__name__ = f"engine_{every}"
    return make


def watch(every: int) -> Callable[[Scenario], tuple[Step, Callable[[], None]]] | None:
    """The bare user loop with ``workbench.watch`` around it (None when this build has no ``watch``)."""
    try:
        from workbench import watch as watch_fn
    except ImportError:
        return None

    def make(s: Scenario) -> tuple[Step, Callable[[], None]]:
        wb = watch_fn(s.model, s.optimizer, every=every, history=32)
        batches, count = _start(s)

        def step() -> None:
            batch = next(batches)
            _, loss = forward_loss(s, batch)
            backward(loss.total)
            wb.log(loss=loss.total)  # kept as a tensor: read at the optimizer step, no sync here
            prepare_update(s)
            apply_update(s)
            scheduler_after_update(s, next(count) + 1, 0, loss.total.detach())
            loss.total.item()

        return step, wb.close
    make.__name__ = f"watch_{every}"
    return make


VARIANTS: dict[str, Callable[[Scenario], tuple[Step, Callable[[], None]]]] = {
    "bare": bare, "floor": floor, "refs": refs, "naive": naive, "lean": lean, "engine/1": engine(1),
    "engine/16": engine(16),
}


@dataclass(frozen=True)
class Row:
    """One scenario's result: seconds per block of each variant, and the ratios to ``bare``."""

    scenario: str
    modules: int
    block: int
    blocks: dict[str, tuple[float, ...]]
    notes: tuple[str, ...] = field(default=())

    @property
    def bare_step(self) -> float:
        return statistics.median(self.blocks["bare"]) / self.block

    def ratio(self, variant: str) -> float:
        return statistics.median(self.blocks[variant]) / statistics.median(self.blocks["bare"])

    def spread(self, variant: str) -> tuple[float, float]:
        per_round = [v / b for v, b in zip(self.blocks[variant], self.blocks["bare"])]
        return min(per_round), max(per_round)


def measure(name: str, variants: dict[str, Callable[[Scenario], tuple[Step, Callable[[], None]]]],
            *, rounds: int, block: int = BLOCK, device: str = "cpu",
            timer: BlockTimer = perf_block) -> Row:
    """Round-robin ``rounds`` blocks of every variant on fresh copies of scenario ``name``."""
    steps: dict[str, Step] = {}
    closes: list[Callable[[], None]] = []
    modules = 0
    try:
        for label, make in variants.items():
            s = scenario_copy(name, device)
            modules = sum(1 for _ in s.model.named_modules())
            steps[label], close = make(s)
            closes.append(close)
        for step in steps.values():  # warm-up: first-call costs, caches, one measured engine step
            timer(step, block)
        times: dict[str, list[float]] = {label: [] for label in steps}
        labels = list(steps)
        for r in range(rounds):
            # Interleaved step by step (the order rotated each step): every variant's block of
            # `block` steps spans the same stretch of wall time, so a burst of background load
            # falls on all of them alike instead of on whichever block it happened to hit.
            spent = dict.fromkeys(labels, 0.0)
            for i in range(block):
                shift = (r * block + i) % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    spent[label] += timer(steps[label], 1)
            for label in labels:
                times[label].append(spent[label])
    finally:
        for close in closes:
            close()
    return Row(name, modules, block, {k: tuple(v) for k, v in times.items()})


TARGETS = {"engine/1": 1.25, "engine/16": 1.05, "watch/1": 1.25, "watch/16": 1.05}


def table_header(columns: list[str], title: str) -> list[str]:
    """The tax table's title and header lines (markdown-style, as the README shows it)."""
    head = ["scenario", "modules", "bare step"] + columns
    return [title, "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def table_row(row: Row, columns: list[str]) -> str:
    """One row: ratio of medians, per-round range, and how it stands against its target."""
    cells = [row.scenario, str(row.modules), f"{1e3 * row.bare_step:.2f} ms"]
    for col in columns:
        if col not in row.blocks:
            cells.append("n/a")
            continue
        lo, hi = row.spread(col)
        ratio = row.ratio(col)
        flag = ""
        if col in TARGETS:
            flag = " ok" if ratio <= TARGETS[col] else " OVER"
        if col in ("engine/1", "watch/1") and "naive" in row.blocks and ratio > row.ratio("naive"):
            flag += " >naive"
        cells.append(f"{ratio:.2f}x ({lo:.2f}-{hi:.2f}){flag}")
    return "| " + " | ".join(cells) + " |"
