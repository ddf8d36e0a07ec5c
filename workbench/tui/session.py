"""The TUI's handle on one Engine: every call here runs on a worker thread.

The UI thread never calls the engine. A worker takes ``Session.lock``, calls
the engine, and turns what it finds into an immutable :class:`EngineView`
that is posted to the UI. Records from the engine are frozen dataclasses, so
sharing them across threads is safe; the sequences are copied into tuples.

Nothing here imports Textual, so the whole stepping path is testable
without an app.
"""

from __future__ import annotations

import math
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workbench.engine.breakpoints import Breakpoint
from workbench.engine.records import Phase
from workbench.scenario import ScenarioError, ScenarioSource

if TYPE_CHECKING:
    import torch

    from workbench.engine.engine import Engine, EngineConfig

PHASES = (Phase.FORWARD, Phase.LOSS, Phase.BACKWARD, Phase.OPTIMIZER_STEP)
TUI_SNAPSHOTS = 8  # step starts kept for rewind (bounded by EngineConfig.snapshot_budget too)
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


class WorkbenchStepError(Exception):
    """A phase raised inside the user's code; carries what the error panel shows."""

    def __init__(self, title: str, details: str) -> None:
        super().__init__(title)
        self.title = title
        self.details = details


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


class Session:
    """One scenario in one engine, driven by worker threads one at a time."""

    def __init__(self, source: ScenarioSource, device: str, config: EngineConfig | None = None) -> None:
        self.source = source
        self.device = device
        # The last few step starts are kept so `u` can rewind and replay them.
        # None: the TUI's default, made in open() on the worker (EngineConfig's module loads torch).
        self.config = config
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.engine: Engine | None = None
        self._modules: tuple[ModuleNode, ...] = ()
        self._summary: ScenarioSummary | None = None

    # -- lifecycle ---------------------------------------------------------------
    def open(self) -> EngineView:
        """Build the scenario and its engine (raises ScenarioError on a bad scenario)."""
        from workbench.engine.engine import Engine, EngineConfig

        with self.lock:
            self._close_locked()
            if self.config is None:
                self.config = EngineConfig(snapshots=TUI_SNAPSHOTS)
            engine = Engine.from_source(self.source, self.device, self.config)
            self.engine = engine
            self._modules = _module_nodes(engine)
            self._summary = _summary(self.source, engine)
            return self._view_locked()

    def close(self) -> None:
        with self.lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.close()

    # -- stepping (each returns the new view) --------------------------------------
    def advance(self) -> EngineView:
        with self.lock:
            self._engine().advance()
            return self._view_locked()

    def step(self) -> EngineView:
        with self.lock:
            self._engine().step_once()
            return self._view_locked()

    def run(
        self,
        steps: int | None,
        on_progress: Callable[[EngineView], None],
        min_interval: float = 0.1,
    ) -> tuple[EngineView, RunSummary]:
        """Run ``steps`` steps (None: until a breakpoint or pause).

        ``on_progress`` gets a fresh view at most every ``min_interval``
        seconds so a long run cannot flood the UI; the final state is
        returned, never dropped.
        """
        import time

        with self.lock:
            engine = self._engine()
            self.stop.clear()
            last = [time.monotonic()]

            def on_step(record: Any) -> None:
                now = time.monotonic()
                if now - last[0] >= min_interval:
                    last[0] = now
                    on_progress(self._view_locked())

            outcome = engine.run(
                steps, until_break=True, should_stop=self.stop.is_set, on_step=on_step
            )
            error = getattr(outcome, "error", None)
            if error is not None:
                raise error
            summary = RunSummary(outcome.steps_done, outcome.stopped_by, _reason(outcome))
            return self._view_locked(), summary

    def skip(self) -> EngineView:
        with self.lock:
            self._engine().skip_step()
            return self._view_locked()

    def rewind(self, steps: int = 1) -> tuple[EngineView, str]:
        """Back to a recent step's start (ValueError says why not); the view and a status line."""
        with self.lock:
            engine = self._engine()
            target = engine.rewind(steps)
            replay = engine.replay_steps
            kept = engine.rewindable_steps
            more = f"; u again goes back to step {target - 1}" if kept else ""
            note = (f"rewound to the start of step {target}: steps {target}..{replay[-1] if replay else target} "
                    f"replay on the same batches with full stats{more}")
            return self._view_locked(), note

    def set_breakpoints(self, conditions: Iterable[str]) -> EngineView:
        """Replace the engine's breakpoints with the parsed conditions."""
        parsed = [Breakpoint.parse(c) for c in conditions]  # raises before any change
        with self.lock:
            engine = self._engine()
            for bp in list(engine.breakpoints):
                engine.remove_breakpoint(bp)
            for bp in parsed:
                engine.add_breakpoint(bp)
            return self._view_locked()

    def view(self) -> EngineView:
        with self.lock:
            return self._view_locked()

    # -- inspector ---------------------------------------------------------------
    def inspect(self, module_name: str) -> InspectorData:
        with self.lock:
            return self.inspect_locked(module_name)

    def inspect_locked(self, module_name: str) -> InspectorData:
        """``inspect`` for a caller already holding ``lock`` (a run's progress callback)."""
        import torch

        engine = self._engine()
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

    # -- helpers ------------------------------------------------------------------
    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("no scenario is loaded")
        return self.engine

    def _view_locked(self) -> EngineView:
        engine = self._engine()
        assert self._summary is not None
        current = engine.current
        done = tuple(current.phases_done) if current is not None else ()
        return EngineView(
            summary=self._summary,
            step=engine.step,
            next_phase=Phase(engine.next_phase),
            current=current,
            last=engine.history[-1] if len(engine.history) else None,
            history=tuple(engine.history),
            findings=tuple(engine.findings),
            pending_break=engine.pending_break,
            breakpoints=tuple(engine.breakpoints),
            modules=self._modules,
            done_phases=done,
        )


def _reason(outcome: Any) -> str:
    hit = getattr(outcome, "break_hit", None)
    if outcome.stopped_by == "breakpoint" and hit is not None:
        return f"breakpoint {hit.breakpoint}: {hit.reason}"
    if outcome.stopped_by == "stopped":
        return f"paused after {outcome.steps_done} step(s)"
    return f"{outcome.steps_done} step(s) done"


def _summary(source: ScenarioSource, engine: Engine) -> ScenarioSummary:
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


def _module_nodes(engine: Engine) -> tuple[ModuleNode, ...]:
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


def group_grad_norms(params: Sequence[Any]) -> dict[str, float | None]:
    """Grad norm per owning module from the engine's per-parameter norms.

    The norm of a module's gradient is the root of the sum of its parameters'
    squared norms; parents get their children's parameters too.
    """
    sums: dict[str, float] = {}
    seen: set[str] = set()
    for p in params:
        if p.grad_norm is None:
            continue
        module = p.module or ""
        parts = module.split(".") if module else []
        prefixes = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]
        for prefix in prefixes:
            sums[prefix] = sums.get(prefix, 0.0) + float(p.grad_norm) ** 2
            seen.add(prefix)
    return {name: math.sqrt(v) if math.isfinite(v) else v for name, v in sums.items()}
