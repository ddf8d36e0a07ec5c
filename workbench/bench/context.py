"""What every variant gets: the scenario source, fixed batches, the timing plan."""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from workbench.bench.results import Hardware
from workbench.bench.timing import Plan, Tick
from workbench.scenario import Batch, Scenario, ScenarioError, ScenarioSource

EVAL_BATCHES = 4
BUILD_SEED = 0  # every comparison build starts from this RNG state


def seeded_build(source: ScenarioSource, device: torch.device | str) -> Scenario:
    """``source.build(device)`` from the same random state every time (torch's generators on every
    device, Python's ``random``, NumPy's when loaded).

    A build() that does not seed draws its initial weights from whatever state it finds: the
    second build of a diff, or each bench row after the rows before it, then started from other
    weights, and the difference of two initialisations read as amp's or int8's (a 150% error at
    the first layer). A build() that seeds itself is unaffected.
    """
    torch.manual_seed(BUILD_SEED)
    random.seed(BUILD_SEED)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(BUILD_SEED)
    return source.build(device)


def take_batches(scenario: Scenario, data: Iterable[object], count: int, where: str) -> tuple[Batch, ...]:
    """The first ``count`` items of ``data``, validated; fewer if the data is shorter.

    Every variant reuses these same batches, so rows differ only in how the
    step is run, not in what it sees. They stay on the CPU; each variant moves
    them to its device once, outside the timed region.
    """
    batches = tuple(
        scenario.make_batch(item, where) for item in itertools.islice(iter(data), count)
    )
    if not batches:
        raise ScenarioError(f"{where} yielded no batches; the benchmark needs at least one.")
    return batches


@dataclass(frozen=True)
class BenchContext:
    source: ScenarioSource
    device: torch.device
    plan: Plan
    batches: tuple[Batch, ...]
    eval_batches: tuple[Batch, ...]
    hardware: Hardware
    tick: Tick | None = None
    # The CPU RNG state ``batches`` were drawn from (right after the probe's build): a row
    # that draws from the scenario's data itself (loader-wN) replays it, so a shuffled
    # DataLoader yields these same batches. None: the row draws from whatever state it finds.
    data_rng: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.batches[0].size

    def build(self) -> Scenario:
        """A fresh scenario (same seed, identical weights) with the RNG reset.

        The RNG reset makes dropout masks identical across variants, so their
        final losses differ only through how the step was computed.
        """
        scenario = seeded_build(self.source, self.device)
        torch.manual_seed(scenario.seed)
        return scenario

    def device_batches(self, convert: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[Batch]:
        out = []
        for b in self.batches:
            b = b.to(self.device)
            if convert is not None:
                b = b.map(convert, inputs_only=True)
            out.append(b)
        return out


def collect(scenario: Scenario, steps: int) -> tuple[tuple[Batch, ...], tuple[Batch, ...]]:
    """The training batches (one per step, up to the data's length) and held-out batches."""
    where = f"{scenario.name}: data"
    batches = take_batches(scenario, scenario.data, steps, where)
    if scenario.eval_data is not None:
        eval_batches = take_batches(scenario, scenario.eval_data, EVAL_BATCHES, f"{scenario.name}: eval_data")
    else:
        eval_batches = batches[:EVAL_BATCHES]
    return batches, eval_batches
