"""What a client shows of one engine, as frozen data built where the engine lives.

The engine host (``workbench.session.engine_host``) runs the Engine in a child
process and builds these from it there: the scenario's summary line, the module
tree as rows, a module's histograms for the inspector, an error as the error
panel's title and details. A client (the TUI) renders them as they come; it
never touches the Engine, torch tensors or the user's code.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.engine.breakpoints import Breakpoint
from workbench.engine.records import Phase
from workbench.scenario import ScenarioError

if TYPE_CHECKING:
    import torch

    from workbench.engine.engine import Engine
    from workbench.scenario import ScenarioSource

PHASES = (Phase.FORWARD, Phase.LOSS, Phase.BACKWARD, Phase.OPTIMIZER_STEP)
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
class ModuleNode:
    """One row of the model hierarchy, in execution/registration order."""

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
class ScenarioSummary:
    label: str
    name: str
    description: str
    model_class: str
    parameters: int
    device: str
    threads: int
    optimizer: str


@dataclass(frozen=True)
class EngineView:
    """Everything a screen shows, read from the engine in one go on the worker."""

    summary: ScenarioSummary
    step: int
    next_phase: Phase
    # The step in progress: its module stats fill in as phases complete.
    current: Any
    last: Any  # the newest finished StepRecord, or None
    history: tuple[Any, ...]
    findings: tuple[Any, ...]
    pending_break: Any
    breakpoints: tuple[Breakpoint, ...]
    modules: tuple[ModuleNode, ...]
    done_phases: tuple[Phase, ...] = ()

    def module_stats(self) -> dict[str, Any]:
        """Module stats of the current step where measured, else of the last step."""
        out: dict[str, Any] = {}
        if self.last is not None:
            out.update({m.name: m for m in self.last.modules})
        if self.current is not None:
            out.update({m.name: m for m in (getattr(self.current, "modules", ()) or ())})
        return out

    def fresh_modules(self) -> set[str]:
        """Modules whose activation stats were measured in the step in progress."""
        if self.current is None:
            return set()
        return {m.name for m in (getattr(self.current, "modules", ()) or ())}


@dataclass(frozen=True)
class RunSummary:
    steps_done: int
    stopped_by: str
    reason: str


@dataclass(frozen=True)
class Histogram:
    label: str
    lo: float
    hi: float
    counts: tuple[int, ...]
    numel: int
    nan: int
    inf: int
    sampled: bool


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
    phase = getattr(exc, "phase", None)
    step = getattr(exc, "step", None)
    original = getattr(exc, "original", None) or getattr(exc, "__cause__", None) or exc
    where = ""
    if phase is not None:
        where = f" in {PHASE_LABEL.get(Phase(phase), str(phase))}"
        if step is not None:
            where += f" of step {step}"
    title = f"{type(original).__name__}{where}: {original}"
    frame = getattr(exc, "user_frame", None)
    if isinstance(frame, str):
        title += f"  (at {frame})"
    details = getattr(exc, "traceback_text", None)
    if not isinstance(details, str):
        details = "".join(traceback.format_exception(original))
    return title, details


def inspect_module(engine: Engine, module_name: str) -> InspectorData:
    """Histograms and NaN positions of one module, read from the engine (on its thread)."""
    import torch

    model = engine.scenario.model
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return InspectorData(module_name, "(no such module)", ())
    first_line = repr(module).splitlines()[0]
    if first_line.endswith("("):  # a container: its repr lists the children
        first_line = type(module).__name__
    description = first_line if len(first_line) < 70 else first_line[:67] + "..."
    histograms: list[Histogram] = []
    notes: list[str] = []
    act = engine.activation_sample(module_name)  # host copy: a deliberate, on-demand sync
    nan_positions: tuple[tuple[int, ...], ...] = ()
    nan_total = numel = 0
    output_numel: int | None = None
    if act is not None:
        histograms.append(_histogram("activation", act))
        shape = _output_shape(engine, module_name)
        whole = shape is not None and math.prod(shape) == act.numel()
        if shape is not None and not whole:
            output_numel = math.prod(shape)
        nan_positions, nan_total, numel = _nan_positions(act.reshape(shape) if whole else act,
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
    return InspectorData(module_name, description, tuple(histograms), tuple(notes),
                         nan_positions, nan_total, numel, output_numel, step=engine.step)


def run_reason(outcome: Any) -> str:
    hit = getattr(outcome, "break_hit", None)
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


def module_nodes(engine: Engine) -> tuple[ModuleNode, ...]:
    """The engine's module tree as rows, parents before children."""
    tree = engine.module_tree
    order = list(engine.module_names)
    if "" not in order:
        order.insert(0, "")
    nodes = []
    for name in order:
        info = tree.get(name)
        children = tuple(_get(info, "children", ()) or ())
        parent = None if name == "" else (name.rsplit(".", 1)[0] if "." in name else "")
        depth = 0 if name == "" else name.count(".") + 1
        nodes.append(ModuleNode(
            name=name,
            type_name=str(_get(info, "type_name", None) or _get(info, "type", "") or ""),
            depth=depth,
            parent=parent,
            children=children,
            num_params=int(_get(info, "total_params", 0) or 0),
        ))
    return tuple(nodes)


def _get(obj: Any, key: str, default: Any) -> Any:
    return default if obj is None else getattr(obj, key, default)


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
                   with_positions: bool = True) -> tuple[tuple[tuple[int, ...], ...], int, int]:
    import torch

    bad = ~torch.isfinite(tensor.detach())
    total = int(bad.sum())  # the tensor is a host copy already: no device sync
    if total == 0 or not with_positions:
        return (), total, tensor.numel()
    idx = bad.nonzero()[:limit].tolist()
    return tuple(tuple(i) for i in idx), total, tensor.numel()
