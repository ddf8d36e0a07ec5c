"""What a client shows of one engine, as frozen data built where the engine lives.

The engine host (``workbench.session.engine_host``) runs the Engine in a child
process and builds the protocol's messages from it there: the scenario's summary
line, the module tree, a module's histograms (a ``Sample``), an error's title and
details. A client rebuilds the screen's data from those messages (``module_rows``,
``inspector_data``) whichever host sent them. A client (the TUI) renders them as they come; it
never touches the Engine, torch tensors or the user's code.
"""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.engine.breakpoints import Breakpoint
from workbench.engine.records import (
    BreakHit,
    Finding,
    ModuleNode,
    ModuleStats,
    Phase,
    RunOutcome,
    StepProgress,
    StepRecord,
)
from workbench.errors import exception_text, message_of
from workbench.scenario import ScenarioError
from workbench.session.protocol import Histogram, RunSummary, Sample, ScenarioSummary  # noqa: F401 - re-exported

if TYPE_CHECKING:
    import torch

    from workbench.engine.engine import Engine
    from workbench.engine.errors import TrainingStepError
    from workbench.scenario import ScenarioSource

TUI_SNAPSHOTS = 8  # step starts the TUI's engine keeps for rewind (bounded by EngineConfig.snapshot_budget too)
PHASE_LABEL = {
    Phase.FORWARD: "forward",
    Phase.LOSS: "loss",
    Phase.BACKWARD: "backward",
    Phase.OPTIMIZER_STEP: "optimizer step",
}
HIST_BINS = 24
# Histograms read at most this many elements of a tensor (a strided sample
# beyond it): enough for a shape, cheap for a 1 M-parameter layer.
HIST_SAMPLE = 1 << 18


@dataclass(frozen=True)
class ModuleRow:
    """One row of the model table: an engine ``ModuleNode`` placed in the hierarchy
    (its depth and parent), in execution/registration order."""

    name: str
    type_name: str
    depth: int
    parent: str | None
    children: tuple[str, ...]
    num_params: int

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1] if self.name else "(model)"


@dataclass(frozen=True)
class EngineView:
    """Everything a screen shows, read from the engine in one go on the worker."""

    summary: ScenarioSummary
    step: int
    next_phase: Phase
    # The step in progress: its module stats fill in as phases complete.
    current: StepProgress | None
    last: StepRecord | None  # the newest finished step
    history: tuple[StepRecord, ...]
    findings: tuple[Finding, ...]
    pending_break: BreakHit | None
    breakpoints: tuple[Breakpoint, ...]
    modules: tuple[ModuleRow, ...]
    done_phases: tuple[Phase, ...] = ()

    def module_stats(self) -> dict[str, ModuleStats]:
        """Module stats of the current step where measured, else of the newest step that took
        them (with stats every k-th step the steps between have none; the table shows the older
        numbers dimmed, as not ``fresh_modules``)."""
        out: dict[str, ModuleStats] = {}
        measured = self.last_measured
        if measured is not None:
            out.update({m.name: m for m in measured.modules})
        if self.current is not None:
            out.update({m.name: m for m in self.current.modules})
        return out

    @property
    def last_measured(self) -> StepRecord | None:
        """The newest finished step with module stats (``last`` when none has any)."""
        for record in reversed(self.history):
            if record.modules:
                return record
        return self.last

    def batch_size(self) -> int:
        """Samples in the batch the shown module stats came from (0 when not known: a watched
        loop does not say)."""
        if self.current is not None and self.current.modules and self.current.batch_size:
            return self.current.batch_size
        measured = self.last_measured
        return measured.batch_size if measured is not None else 0

    def fresh_modules(self) -> set[str]:
        """Modules whose activation stats were measured in the step in progress."""
        if self.current is None:
            return set()
        return {m.name for m in self.current.modules}


@dataclass(frozen=True)
class InspectorData:
    module: str
    description: str
    histograms: tuple[Histogram, ...]
    notes: tuple[str, ...] = ()
    # Non-finite activation values: positions in the output's own shape when
    # the engine's sample is the whole output, else none (a sample's indices
    # say nothing about where in the tensor they were).
    nan_positions: tuple[tuple[int, ...], ...] = ()
    nan_total: int = 0  # non-finite values among the `numel` values looked at
    numel: int = 0
    output_numel: int | None = None  # size of the whole output when only a sample was seen
    step: int | None = None  # the engine's step when this was read


def format_error(exc: BaseException) -> tuple[str, str]:
    """(one-line title, details) for the error panel, from any exception."""
    if isinstance(exc, ScenarioError):
        text = str(exc)
        first, _, rest = text.partition("\n")
        return first, rest or text
    step_error = _step_error_type()
    if step_error is not None and isinstance(exc, step_error):  # the user's step raised: where, when
        original = exc.original
        where = f"{PHASE_LABEL[exc.phase]} of step {exc.step}" if exc.phase is not None else f"step {exc.step}"
        title = f"{type(original).__name__} in {where}: {message_of(original)}"
        if exc.user_frame is not None:
            title += f"  (at {exc.user_frame})"
        return title, exc.traceback_text
    original = exc.__cause__ or exc
    return exception_text(original), "".join(traceback.format_exception(original))


def _step_error_type() -> type[TrainingStepError] | None:
    """TrainingStepError (the engine's, the profiled loop's and the bench's step errors), when its
    module is loaded: it imports torch, which a client's process (the TUI's first frame) does not
    load for this; an exception of a module never imported is none of its."""
    errors = sys.modules.get("workbench.engine.errors")
    return errors.TrainingStepError if errors is not None else None  # type: ignore[no-any-return]


def inspect_module(engine: Engine, module_name: str, request_id: int | str = 0) -> Sample:
    """Histograms and NaN positions of one module, read from the engine (on its thread), as the
    protocol's answer to a RequestSample (a client rebuilds it with ``inspector_data``)."""
    import torch

    model = engine.scenario.model
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return Sample(request_id, module_name, "activation", engine.step, description="(no such module)")
    first_line = repr(module).splitlines()[0]
    if first_line.endswith("("):  # a container: its repr lists the children
        first_line = type(module).__name__
    description = first_line if len(first_line) < 70 else first_line[:67] + "..."
    histograms: list[Histogram] = []
    notes: list[str] = []
    act = engine.activation_sample(module_name)  # host copy: a deliberate, on-demand sync
    nan_positions: tuple[tuple[int, ...], ...] = ()
    nan = inf = numel = 0
    output_numel: int | None = None
    shape: tuple[int, ...] = ()
    if act is not None:
        histograms.append(_histogram("activation", act))
        measured = _output_shape(engine, module_name)
        whole = measured is not None and math.prod(measured) == act.numel()
        if measured is not None:
            shape = measured
            if not whole:
                output_numel = math.prod(measured)
        nan_positions, nan, inf, numel = _nan_positions(act.reshape(measured) if whole and measured else act,
                                                        with_positions=whole)
    elif engine.current.phases_done:
        notes.append("activation: not measured in this step (stats off, or the module did not run)")
    else:
        notes.append(f"activation: none yet in step {engine.step} (after its forward)")
    params = [p for p in module.parameters() if p is not None]
    if params:
        with torch.no_grad():
            weights = torch.cat([p.detach().reshape(-1) for p in params])
            histograms.append(_histogram("weight", weights))
            grads = [p.grad.detach().reshape(-1) for p in params if p.grad is not None]
            if grads:
                histograms.append(_histogram("grad", torch.cat(grads)))
            else:
                notes.append("grad: none yet (after backward)")
    else:
        notes.append("no parameters")
    return Sample(request_id, module_name, "activation", engine.step, shape=shape, nan_count=nan, inf_count=inf,
                  nan_positions=nan_positions, histograms=tuple(histograms), description=description,
                  notes=tuple(notes), numel=numel, output_numel=output_numel)


def inspector_data(sample: Sample) -> InspectorData:
    """The inspector's data from a Sample answer, whichever host sent it.

    The engine host sends labelled histograms; a watch host one histogram of the
    requested tensor as ``counts``/``edges``, which becomes one histogram here.
    """
    histograms = sample.histograms
    notes = sample.notes
    if not histograms and sample.counts and len(sample.edges) == len(sample.counts) + 1:
        histograms = (Histogram(sample.kind, sample.edges[0], sample.edges[-1], sample.counts, sample.numel
                                or sum(sample.counts) + sample.nan_count + sample.inf_count,
                                sample.nan_count, sample.inf_count, False),)
    description = sample.description
    if sample.error:
        if description:
            notes = (*notes, sample.error)
        else:
            description = f"(could not read: {sample.error})"
    numel = sample.numel or (math.prod(sample.shape) if sample.shape and not sample.histograms else 0)
    return InspectorData(sample.module, description, histograms, notes, sample.nan_positions,
                         sample.nan_count + sample.inf_count, numel, sample.output_numel, step=sample.step)


def run_reason(outcome: RunOutcome) -> str:
    hit = outcome.break_hit
    if outcome.stopped_by == "breakpoint" and hit is not None:
        return f"breakpoint {hit.breakpoint}: {hit.reason}"
    if outcome.stopped_by == "stopped":
        return f"paused after {outcome.steps_done} step(s)"
    return f"{outcome.steps_done} step(s) done"


def scenario_summary(source: ScenarioSource, engine: Engine) -> ScenarioSummary:
    import torch

    s = engine.scenario
    return ScenarioSummary(
        label=source.label,
        name=s.name,
        description=s.description,
        model_class=type(s.model).__name__,
        parameters=s.num_parameters(),
        device=str(s.device),
        threads=torch.get_num_threads(),
        optimizer=type(s.optimizer).__name__,
    )


def module_tree(engine: Engine) -> tuple[ModuleNode, ...]:
    """The engine's module tree in execution/registration order, as the Hello carries it."""
    tree = engine.module_tree
    order = list(engine.module_names)
    if "" not in order:
        order.insert(0, "")
    return tuple(tree[name] for name in order if name in tree)


def module_rows(tree: Sequence[ModuleNode]) -> tuple[ModuleRow, ...]:
    """A Hello's module tree as the model table's rows, parents before children."""
    nodes = list(tree)
    if not any(n.name == "" for n in nodes):
        nodes.insert(0, ModuleNode("", "", (), 0, 0))
    rows = []
    for info in nodes:
        name = info.name
        parent = None if name == "" else (name.rsplit(".", 1)[0] if "." in name else "")
        depth = 0 if name == "" else name.count(".") + 1
        rows.append(ModuleRow(name=name, type_name=info.type_name, depth=depth, parent=parent,
                               children=tuple(info.children), num_params=int(info.total_params)))
    return tuple(rows)


def _histogram(label: str, tensor: torch.Tensor) -> Histogram:
    import torch

    flat = tensor.detach().reshape(-1).float()
    numel = flat.numel()
    sampled = numel > HIST_SAMPLE
    if sampled:
        flat = flat[:: math.ceil(numel / HIST_SAMPLE)]
    finite_mask = torch.isfinite(flat)
    nan = int(torch.isnan(flat).sum())  # host sync: the count is shown as text
    inf = int((~finite_mask).sum()) - nan
    finite = flat[finite_mask]
    if finite.numel() == 0:
        return Histogram(label, 0.0, 0.0, (0,) * HIST_BINS, numel, nan, inf, sampled)
    lo, hi = (float(v) for v in torch.aminmax(finite))  # host sync: bin edges
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(finite, bins=HIST_BINS, min=lo, max=hi)
    return Histogram(label, lo, hi, tuple(int(c) for c in counts.tolist()), numel, nan, inf, sampled)


def _output_shape(engine: Engine, name: str) -> tuple[int, ...] | None:
    """Shape of the module's last measured output (the step in progress first)."""
    for modules in (engine.current.modules, engine.history[-1].modules if engine.history else ()):
        for m in modules or ():
            if m.name == name:
                return tuple(m.shape)
    return None


def _nan_positions(tensor: torch.Tensor, limit: int = 3,
                   with_positions: bool = True) -> tuple[tuple[tuple[int, ...], ...], int, int, int]:
    """(first positions of non-finite values, NaN count, inf count, values looked at)."""
    import torch

    t = tensor.detach()
    bad = ~torch.isfinite(t)
    total = int(bad.sum())  # the tensor is a host copy already: no device sync
    if total == 0:
        return (), 0, 0, t.numel()
    nan = int(torch.isnan(t).sum())
    if not with_positions:
        return (), nan, total - nan, t.numel()
    idx = bad.nonzero()[:limit].tolist()
    return tuple(tuple(i) for i in idx), nan, total - nan, t.numel()
