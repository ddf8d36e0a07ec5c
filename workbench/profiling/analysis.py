"""Our own analysis of a PyTorch profiler Chrome trace (no browser, no plugin).

Step-time breakdown
-------------------
Steps are the ``ProfilerStep#N`` spans ``prof.step()`` writes. On a GPU a
step is stretched to the end of the last device event launched from inside
it, and starts no earlier than the previous (stretched) step ended, as the
TensorBoard plugin does, so asynchronous kernels count in the step that
launched them.

Inside each step, time is claimed category by category in this priority
order; a category only gets time that no earlier one claimed, so nested or
overlapping events are never counted twice and the categories always sum to
the step time:

1. ``kernel``         device kernels (not NCCL)
2. ``memcpy``         device memory copies
3. ``memset``         device memory sets
4. ``communication``  NCCL kernels, and ``nccl:*`` / ``gloo:*`` host ops
5. ``runtime``        CUDA runtime/driver calls on the host (launches, syncs)
6. ``dataloader``     our ``dataloader`` range and ``enumerate(DataLoader)#...``
7. ``cpu_exec``       host operators and user ranges (``cpu_op``, ``user_annotation``)
8. ``other``          whatever is left: Python between ops, idle time

This is the plugin's Overview order with one difference: our phase ranges
(``forward``, ``loss``, ``backward``, ``optimizer_step``) cover almost the
whole step, so counting them as CPU exec would hide the Python overhead
between operators; they are left out of ``cpu_exec`` and reported per phase.

Where the loss came from
------------------------
The profile loop writes ``LossValue.source`` into the trace's metadata. When
the model computes the loss itself (``outputs.loss``, ``outputs["loss"]``),
the ``loss`` range only reads it and the loss's computation is inside the
``forward`` range: the phase rows say so (``ModuleStat.note``) rather than
pass the ~0 ms ``loss`` range off as the cost of the loss. The loss's own
time cannot be split out of ``forward`` without a range inside the model's
code, which the workbench does not patch.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from workbench.profiling import intervals
from workbench.profiling.intervals import Span
from workbench.profiling.trace import (
    DATA_TYPE_KEY,
    LOADER_WORKERS_KEY,
    DEFAULT_MAX_READ_MB,
    LOSS_SOURCE_KEY,
    TraceFile,
    find_runs,
    load_trace,
    read_loss_source,
)

# The record_function names the profile loop writes; the analysis relies on them.
PHASES = ("dataloader", "forward", "loss", "backward", "optimizer_step")

class Category(StrEnum):
    """Where a step's time went, in the order categories claim it (str-valued: the JSON's words)."""

    KERNEL = "kernel"
    MEMCPY = "memcpy"
    MEMSET = "memset"
    COMMUNICATION = "communication"
    RUNTIME = "runtime"
    DATALOADER = "dataloader"
    CPU_EXEC = "cpu_exec"
    OTHER = "other"


CATEGORIES = tuple(Category)
CATEGORY_LABELS = {
    Category.KERNEL: "Kernel",
    Category.MEMCPY: "Memcpy",
    Category.MEMSET: "Memset",
    Category.COMMUNICATION: "Communication",
    Category.RUNTIME: "Runtime",
    Category.DATALOADER: "DataLoader",
    Category.CPU_EXEC: "CPU Exec",
    Category.OTHER: "Other",
}

_STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")
_COMM_HOST_PREFIXES = ("nccl:", "gloo:")
_RUNTIME_CATS = {"cuda_runtime", "cuda_driver", "runtime"}
_KERNEL_CATS = {"kernel"}
_MEMCPY_CATS = {"gpu_memcpy", "memcpy"}
_MEMSET_CATS = {"gpu_memset", "memset"}
_HOST_OP_CATS = {"cpu_op", "operator", "user_annotation"}

# Kernel-name fragments of Tensor Core kernels, and the ops autocast would run
# on them: the plugin's lists (torch_tb_profiler/profiler/tensor_core.py).
TENSOR_CORE_KERNEL_PATTERNS = (
    "h884", "s884", "h1688", "s1688", "hmma", "i8816", "16816", "dgrad_1x1_stride_2x2",
    "first_layer_wgrad_kernel", "conv1x1", "conv2d_c1_k1", "direct_group", "xmma_implicit_gemm",
    "xmma_sparse_conv", "xmma_warp_specialized_implicit_gemm", "xmma_gemm", "xmma_sparse_gemm",
    "c1688",
    # ours: CUTLASS tensor-op kernels and Hopper warpgroup-MMA kernels (not yet checked on hardware)
    "tensorop", "gmma",
)
TENSOR_CORE_ELIGIBLE_OPS = frozenset({
    "aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::conv_tbc",
    "aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d",
    "aten::convolution", "aten::cudnn_convolution", "aten::cudnn_convolution_transpose",
    "aten::prelu", "aten::addmm", "aten::addmv", "aten::addr", "aten::matmul", "aten::mm",
    "aten::mv", "aten::linear", "aten::addbmm", "aten::baddbmm", "aten::bmm",
    "aten::chain_matmul", "aten::linalg_multi_dot", "aten::_thnn_fused_lstm_cell",
    "aten::_thnn_fused_gru_cell", "aten::lstm_cell", "aten::gru_cell", "aten::rnn_tanh_cell",
    "aten::rnn_relu_cell", "aten::addmm_", "aten::convolution_backward",
    "aten::cudnn_convolution_backward", "MmBackward0", "AddmmBackward0", "BmmBackward0",
    "ConvolutionBackward0",
})

MEMORY_CURVE_POINTS = 64


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepBreakdown:
    """One profiled step; ``categories`` (in CATEGORIES order) sum to ``duration_us``."""

    name: str
    start_us: float
    duration_us: float
    categories: tuple[tuple[Category, float], ...]
    phases: tuple[tuple[str, float], ...]  # host time of each phase range inside the step

    def time(self, category: Category | str) -> float:
        return dict(self.categories).get(Category(category), 0.0)

    def share(self, category: Category | str) -> float:
        return self.time(category) / self.duration_us if self.duration_us > 0 else 0.0


@dataclass(frozen=True)
class OperatorStat:
    """One operator (grouped by name, and by input shapes when recorded)."""

    name: str
    input_shapes: str | None
    calls: int
    self_cpu_us: float
    total_cpu_us: float
    self_device_us: float
    total_device_us: float


@dataclass(frozen=True)
class KernelStat:
    """One device kernel name: how often, how long, whether it runs on Tensor Cores."""

    name: str
    calls: int
    total_us: float
    max_us: float
    tensor_core: bool


@dataclass(frozen=True)
class ModuleStat:
    """A phase range (kind 'phase') or an nn.Module forward (kind 'module', needs --stack)."""

    name: str
    kind: str
    calls: int
    host_us: float
    self_host_us: float
    device_us: float
    note: str = ""  # a phase whose time is not what its name says (the loss inside forward)


@dataclass(frozen=True)
class MemoryCurve:
    """The [memory] events of one device. On CPU, 'allocated' counts from the
    start of profiling (the CPU allocator keeps no global total)."""

    device: str
    samples: int
    start_bytes: int
    peak_bytes: int
    end_bytes: int
    peak_reserved_bytes: int
    peak_at_ms: float  # from the first step's start
    peak_step: str | None
    peak_phase: str | None
    capacity_bytes: int | None
    points: tuple[tuple[float, int], ...]  # (ms from first step, allocated), downsampled


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    total_memory: int | None
    compute_major: int | None
    compute_minor: int | None


@dataclass(frozen=True)
class TraceAnalysis:
    path: str
    run: str
    worker: str
    span: str | None
    steps: tuple[StepBreakdown, ...]
    operators: tuple[OperatorStat, ...]  # sorted: self device time, then self CPU time
    kernels: tuple[KernelStat, ...]  # sorted by total time; empty without a GPU
    modules: tuple[ModuleStat, ...]
    memory: tuple[MemoryCurve, ...]
    devices: tuple[DeviceInfo, ...]
    record_shapes: bool
    profile_memory: bool
    with_stack: bool
    uses_dataparallel: bool
    uses_ddp: bool
    comm_libs: tuple[str, ...]
    used_device_ids: tuple[int, ...]
    kernel_us: float  # all kernel time inside the steps (busy union)
    kernel_sum_us: float  # summed kernel durations (Tensor Core shares use this)
    tensor_core_kernel_us: float
    tc_eligible_kernel_us: float
    notes: tuple[str, ...]
    # LossValue.source as the trace's metadata has it: "loss_fn", "outputs.loss", 'outputs["loss"]';
    # None for a trace that does not say (written before it was recorded, or by another tool).
    loss_source: str | None = None
    loss_inside_model: bool = False  # the model computed the loss: its time is in forward
    # What Scenario.data was ("DataLoader", "list", a class name); None when the trace does not say.
    data_type: str | None = None
    loader_workers: int | None = None  # the DataLoader's num_workers; None when not said

    @property
    def mean_step_us(self) -> float:
        return sum(s.duration_us for s in self.steps) / len(self.steps) if self.steps else 0.0

    def mean(self, category: Category | str) -> float:
        return sum(s.time(category) for s in self.steps) / len(self.steps) if self.steps else 0.0

    def share(self, category: Category | str) -> float:
        total = sum(s.duration_us for s in self.steps)
        return sum(s.time(category) for s in self.steps) / total if total > 0 else 0.0

    @property
    def has_device_events(self) -> bool:
        return bool(self.used_device_ids)

    @property
    def gpu_utilization(self) -> float | None:
        """Kernel-busy share of the step time (None without device kernels)."""
        if not self.has_device_events:
            return None
        total = sum(s.duration_us for s in self.steps)
        return self.kernel_us / total if total > 0 else None


# -- analysis ----------------------------------------------------------------------------


def analyze_file(trace: TraceFile | str | Path, max_mb: float = DEFAULT_MAX_READ_MB) -> TraceAnalysis:
    """Load (at most ``max_mb`` inflated), validate and analyse one trace file."""
    tf = trace if isinstance(trace, TraceFile) else _trace_file(Path(trace))
    return analyze_trace(load_trace(tf.path, max_mb), path=str(tf.path), run=tf.run, worker=tf.worker,
                         span=tf.span)


def _trace_file(path: Path) -> TraceFile:
    (files,) = find_runs(path).values()
    return files[0]


@dataclass
class _Events:
    """A trace's complete events, each put in one place by ``_classify`` (read once)."""

    steps: list[dict] = field(default_factory=list)  # ProfilerStep#N
    device: list[dict] = field(default_factory=list)  # kernels, memcpy, memset: in trace order
    runtime: list[dict] = field(default_factory=list)  # CUDA runtime/driver calls
    host_ops: list[dict] = field(default_factory=list)  # every host op, our phase ranges included
    phases: list[dict] = field(default_factory=list)  # our phase ranges
    modules: list[dict] = field(default_factory=list)  # nn.Module ranges (with_stack)
    spans: dict[Category, list[Span]] = field(default_factory=lambda: {c: [] for c in CATEGORIES if c is not Category.OTHER})
    comm_libs: set[str] = field(default_factory=set)


def _classify(durations: Iterable[dict]) -> _Events:
    """Sort each event into its lists and its breakdown category, once per event."""
    ev = _Events()
    for e in durations:
        cat = str(e.get("cat", "")).lower()
        if cat == "gpu_user_annotation":
            # On CUDA, Kineto draws every record_function range a second time on the GPU
            # timeline, over the kernels it launched: ProfilerStep#N included. Those copies
            # are not more steps (nor phases); the host range is the one counted.
            continue
        name = str(e.get("name", ""))
        if _STEP_RE.match(name):
            ev.steps.append(e)
        elif cat in _KERNEL_CATS or cat in _MEMCPY_CATS or cat in _MEMSET_CATS:
            ev.device.append(e)
            if cat in _KERNEL_CATS:
                nccl = "nccl" in name.lower()
                if nccl:
                    ev.comm_libs.add("nccl")
                ev.spans[Category.COMMUNICATION if nccl else Category.KERNEL].append(_span(e))
            else:
                ev.spans[Category.MEMCPY if cat in _MEMCPY_CATS else Category.MEMSET].append(_span(e))
        elif cat in _RUNTIME_CATS:
            ev.runtime.append(e)
            ev.spans[Category.RUNTIME].append(_span(e))
        elif cat in _HOST_OP_CATS:
            ev.host_ops.append(e)
            if name in PHASES:
                ev.phases.append(e)
            if name == "dataloader" or name.startswith(("enumerate(DataLoader)#", "enumerate(DataPipe)#")):
                ev.spans[Category.DATALOADER].append(_span(e))
            elif name.startswith(_COMM_HOST_PREFIXES):
                ev.spans[Category.COMMUNICATION].append(_span(e))
                ev.comm_libs.add(name.split(":", 1)[0])
            elif name not in PHASES:  # the phase ranges are reported per phase, not as CPU exec
                ev.spans[Category.CPU_EXEC].append(_span(e))
        elif cat == "python_function" and name.startswith("nn.Module: "):
            ev.modules.append(e)
    return ev


def _breakdowns(steps: list[tuple[str, float, float]], merged: dict[Category, list[Span]],
                phase_spans: dict[str, list[Span]]) -> list[StepBreakdown]:
    """Each step's time claimed category by category (the priority order above), and per phase."""
    out = []
    for name, start, end in steps:
        left = [(start, end)]
        cats = []
        for c in CATEGORIES[:-1]:
            claimed = intervals.intersect(left, merged[c])
            cats.append((c, intervals.total(claimed)))
            left = intervals.subtract(left, claimed)
        cats.append((Category.OTHER, intervals.total(left)))
        phases = tuple(
            (p, intervals.total(intervals.intersect([(start, end)], phase_spans[p])))
            for p in PHASES if phase_spans[p]
        )
        out.append(StepBreakdown(name, start, end - start, tuple(cats), phases))
    return out


def analyze_trace(
    data: dict[str, Any], *, path: str = "", run: str = "", worker: str = "", span: str | None = None
) -> TraceAnalysis:
    """Analyse a loaded trace dict (``{"traceEvents": [...], ...}``)."""
    events = [e for e in data.get("traceEvents", []) if isinstance(e, dict)]
    durations = [e for e in events if e.get("ph") == "X" and _num(e.get("dur")) is not None]
    notes: list[str] = []
    ev = _classify(durations)

    launch_ts = _launch_times(ev.device, ev.runtime)
    steps = _step_spans(ev.steps, ev.host_ops, ev.device, launch_ts, notes)
    merged = {c: intervals.merge(s) for c, s in ev.spans.items()}
    phase_spans = {p: intervals.merge(_span(e) for e in ev.phases if e.get("name") == p) for p in PHASES}
    step_union = intervals.merge((s, e) for _, s, e in steps)

    operators, tc_eligible_us = _operators(ev.host_ops, _device_time_by_external_id(ev.device, ev.runtime))
    kernels = [e for e in ev.device if str(e.get("cat", "")).lower() in _KERNEL_CATS]
    devices = tuple(_devices(data))
    memory = tuple(_memory_curves(events, steps, phase_spans, devices, steps[0][1] if steps else 0.0))
    names = {str(e.get("name", "")) for e in ev.host_ops}
    loss_source = read_loss_source(data.get(LOSS_SOURCE_KEY))
    data_type = data.get(DATA_TYPE_KEY)
    workers = data.get(LOADER_WORKERS_KEY)
    return TraceAnalysis(
        path=path,
        run=run,
        worker=worker,
        span=span,
        steps=tuple(_breakdowns(steps, merged, phase_spans)),
        operators=tuple(operators),
        kernels=tuple(_kernel_stats(kernels)),
        modules=tuple(_phase_stats(ev.phases, launch_ts, ev.device, loss_source)
                      + _module_stats(ev.modules, launch_ts, ev.device)),
        memory=memory,
        devices=devices,
        record_shapes=bool(data.get("record_shapes")) or any("Input Dims" in e.get("args", {})
                                                            for e in ev.host_ops[:200]),
        profile_memory=bool(data.get("profile_memory")) or bool(memory),
        with_stack=bool(ev.modules) or any(str(e.get("cat", "")) == "python_function" for e in durations),
        uses_dataparallel="DataParallel.forward" in names,
        uses_ddp="DistributedDataParallel.forward" in names,
        comm_libs=tuple(sorted(ev.comm_libs)),
        used_device_ids=tuple(sorted({_device_index(e) for e in ev.device})),
        kernel_us=intervals.total(intervals.intersect(step_union, merged[Category.KERNEL])),
        kernel_sum_us=sum(float(e["dur"]) for e in kernels),
        tensor_core_kernel_us=sum(float(e["dur"]) for e in kernels if _is_tensor_core_kernel(str(e.get("name", "")))),
        tc_eligible_kernel_us=tc_eligible_us,
        notes=tuple(notes),
        loss_source=loss_source,
        loss_inside_model=loss_inside_model(loss_source),
        data_type=data_type if isinstance(data_type, str) and data_type else None,
        loader_workers=int(workers) if isinstance(workers, str) and workers.isdigit() else None,
    )


def loss_inside_model(loss_source: str | None) -> bool:
    """The loss came from the model's output (``outputs.loss`` ...), not from ``loss_fn``."""
    return loss_source is not None and loss_source != "loss_fn"


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _span(e: dict[str, Any]) -> Span:
    ts = float(e["ts"])
    return (ts, ts + float(e["dur"]))


def _args(e: dict[str, Any]) -> dict[str, Any]:
    args = e.get("args")
    return args if isinstance(args, dict) else {}


def _external_id(e: dict[str, Any]) -> Any:
    args = _args(e)
    return args.get("External id", args.get("external id"))


def _device_index(e: dict[str, Any]) -> int:
    args = _args(e)
    dev = args.get("device", e.get("pid"))
    try:
        return int(dev) if dev is not None else 0
    except (TypeError, ValueError):
        return 0


def _launch_times(device_events: list[dict], runtime_events: list[dict]) -> dict[int, float]:
    """id(device event) -> host time of the runtime call that launched it."""
    by_corr = {}
    for r in runtime_events:
        corr = _args(r).get("correlation")
        if corr is not None:
            by_corr[corr] = float(r["ts"])
    out = {}
    for d in device_events:
        corr = _args(d).get("correlation")
        if corr in by_corr:
            out[id(d)] = by_corr[corr]
    return out


def _step_spans(
    steps_raw: list[dict], host_events: list[dict], device_events: list[dict],
    launch_ts: dict[int, float], notes: list[str],
) -> list[tuple[str, float, float]]:
    host = sorted(((str(e["name"]), *_span(e)) for e in steps_raw), key=lambda s: s[1])
    if not host:
        if not host_events:
            notes.append("no host operators or ProfilerStep spans in the trace: nothing to break down")
            return []
        notes.append("no ProfilerStep#N spans (was prof.step() called?): the whole trace is one step")
        start = min(float(e["ts"]) for e in host_events)
        end = max(_span(e)[1] for e in host_events)
        return [("whole trace", start, end)]
    if not launch_ts:
        return host
    # Stretch each step to the last device event it launched (async kernels).
    starts = [s for _, s, _ in host]
    device_end = [float("-inf")] * len(host)
    for d in device_events:
        launched = launch_ts.get(id(d))
        if launched is None:
            continue
        i = bisect.bisect_right(starts, launched) - 1
        if i >= 0 and launched < host[i][2]:
            device_end[i] = max(device_end[i], _span(d)[1])
    out = []
    prev_end = float("-inf")
    for (name, start, end), dev_end in zip(host, device_end):
        start = max(start, prev_end)
        end = max(end, dev_end, start)
        out.append((name, start, end))
        prev_end = end
    return out


def _device_time_by_external_id(device_events: list[dict], runtime_events: list[dict]) -> dict[Any, float]:
    """Device time per launching operator (its External id), via the kernel's own
    External id or, failing that, the runtime call with the same correlation id."""
    runtime_ext = {}
    for r in runtime_events:
        args = _args(r)
        if args.get("correlation") is not None:
            runtime_ext[args["correlation"]] = _external_id(r)
    out: dict[Any, float] = defaultdict(float)
    for d in device_events:
        ext = _external_id(d)
        if ext is None:
            ext = runtime_ext.get(_args(d).get("correlation"))
        if ext is not None:
            out[ext] += float(d["dur"])
    return out


@dataclass
class _Open:
    """An event while the nesting walk is inside it: what its children add up to."""

    event: dict
    end: float
    child_us: float = 0.0  # host time of the direct children
    device_us: float = 0.0  # device time launched by the whole subtree (operators)
    eligible_below: bool = False  # a Tensor Core eligible operator somewhere below


def _nesting(events: Iterable[dict]) -> Iterator[tuple[_Open, _Open | None]]:
    """Each event with the one directly around it on its thread (None at the top), children
    before their parent, so a parent's totals are complete when it comes."""
    by_thread: dict[tuple[Any, Any], list[dict]] = defaultdict(list)
    for e in events:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack: list[_Open] = []
        for e in evs:
            start, end = _span(e)
            while stack and stack[-1].end <= start:
                done = stack.pop()
                yield done, stack[-1] if stack else None
            stack.append(_Open(e, end))
        while stack:
            done = stack.pop()
            yield done, stack[-1] if stack else None


def _operators(host_ops: list[dict], device_by_ext: dict[Any, float]) -> tuple[list[OperatorStat], float]:
    """Self/total CPU and device time per operator, from the nesting on each thread.

    Returns the operator table and the device time of Tensor Core eligible
    operators that are not inside another eligible one (the plugin's rule).
    """
    acc: dict[tuple[str, str | None], list[float]] = {}
    tc_eligible_us = 0.0
    for node, parent in _nesting(host_ops):
        e = node.event
        name = str(e.get("name", ""))
        self_device = device_by_ext.get(_external_id(e), 0.0)
        total_device = node.device_us + self_device
        eligible = name in TENSOR_CORE_ELIGIBLE_OPS
        if eligible and not node.eligible_below:
            tc_eligible_us += total_device
        if parent is not None:
            parent.child_us += float(e["dur"])
            parent.device_us += total_device
            parent.eligible_below = parent.eligible_below or eligible or node.eligible_below
        if str(e.get("cat", "")).lower() == "user_annotation" or _STEP_RE.match(name):
            continue
        row = acc.setdefault((name, _shapes(e)), [0, 0.0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += float(e["dur"]) - node.child_us
        row[2] += float(e["dur"])
        row[3] += self_device
        row[4] += total_device
    stats = [
        OperatorStat(name, shapes, int(r[0]), max(r[1], 0.0), r[2], r[3], r[4])
        for (name, shapes), r in acc.items()
    ]
    stats.sort(key=lambda s: (-s.self_device_us, -s.self_cpu_us, s.name))
    return stats, tc_eligible_us


def _kernel_stats(kernels: list[dict]) -> list[KernelStat]:
    acc: dict[str, list[float]] = {}
    for k in kernels:
        row = acc.setdefault(str(k.get("name", "")), [0, 0.0, 0.0])
        row[0] += 1
        row[1] += float(k["dur"])
        row[2] = max(row[2], float(k["dur"]))
    stats = [KernelStat(n, int(r[0]), r[1], r[2], _is_tensor_core_kernel(n)) for n, r in acc.items()]
    stats.sort(key=lambda k: (-k.total_us, k.name))
    return stats


def _shapes(e: dict[str, Any]) -> str | None:
    dims = _args(e).get("Input Dims")
    if not isinstance(dims, list) or not any(dims):
        return None
    parts = [str(list(d)) if isinstance(d, list) else str(d) for d in dims]
    while parts and parts[-1] == "[]":  # trailing scalars/None arguments: noise in a table
        parts.pop()
    return ", ".join(parts)


def _is_tensor_core_kernel(name: str) -> bool:
    return any(p in name for p in TENSOR_CORE_KERNEL_PATTERNS)


def _device_time_in(span: Span, launches: list[tuple[float, float]]) -> float:
    """Device time of events launched (host time) inside ``span``; launches sorted."""
    i = bisect.bisect_left(launches, (span[0], float("-inf")))
    total = 0.0
    while i < len(launches) and launches[i][0] < span[1]:
        total += launches[i][1]
        i += 1
    return total


def _sorted_launches(launch_ts: dict[int, float], device_events: list[dict]) -> list[tuple[float, float]]:
    return sorted((launch_ts[id(d)], float(d["dur"])) for d in device_events if id(d) in launch_ts)


def phase_notes(loss_source: str | None) -> dict[str, str]:
    """What the forward and loss rows hold when the model computed the loss ({} otherwise)."""
    if not loss_inside_model(loss_source):
        return {}
    return {
        "forward": f"includes the loss the model computes inside its forward ({loss_source})",
        "loss": f"inside forward: this range only reads {loss_source}",
    }


def _phase_stats(phase_events: list[dict], launch_ts: dict[int, float], device_events: list[dict],
                 loss_source: str | None = None) -> list[ModuleStat]:
    launches = _sorted_launches(launch_ts, device_events)
    notes = phase_notes(loss_source)
    out = []
    for phase in PHASES:
        evs = [e for e in phase_events if e.get("name") == phase]
        if not evs:
            continue
        host = sum(float(e["dur"]) for e in evs)
        device = sum(_device_time_in(_span(e), launches) for e in evs)
        out.append(ModuleStat(phase, "phase", len(evs), host, host, device, notes.get(phase, "")))
    return out


def _module_stats(modules_raw: list[dict], launch_ts: dict[int, float], device_events: list[dict]) -> list[ModuleStat]:
    launches = _sorted_launches(launch_ts, device_events)
    acc: dict[str, list[float]] = {}
    for node, parent in _nesting(modules_raw):
        e = node.event
        if parent is not None:
            parent.child_us += float(e["dur"])
        row = acc.setdefault(str(e["name"])[len("nn.Module: "):], [0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += float(e["dur"])
        row[2] += float(e["dur"]) - node.child_us
        row[3] += _device_time_in(_span(e), launches)
    stats = [ModuleStat(n, "module", int(r[0]), r[1], max(r[2], 0.0), r[3]) for n, r in acc.items()]
    stats.sort(key=lambda m: (-m.host_us, m.name))
    return stats


def _devices(data: dict[str, Any]) -> Iterable[DeviceInfo]:
    for i, props in enumerate(data.get("deviceProperties") or []):
        if not isinstance(props, dict):
            continue
        yield DeviceInfo(
            index=int(props.get("id", i)),
            name=str(props.get("name", f"device {i}")),
            total_memory=_int_or_none(props.get("totalGlobalMem")),
            compute_major=_int_or_none(props.get("computeMajor")),
            compute_minor=_int_or_none(props.get("computeMinor")),
        )


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _memory_curves(
    events: list[dict], steps: Sequence[tuple[str, float, float]], phase_spans: dict[str, list[Span]],
    devices: Sequence[DeviceInfo], origin: float,
) -> Iterable[MemoryCurve]:
    per_device: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for e in events:
        if e.get("name") != "[memory]":
            continue
        args = _args(e)
        alloc = _int_or_none(args.get("Total Allocated"))
        if alloc is None or _num(e.get("ts")) is None:
            continue
        kind = _int_or_none(args.get("Device Type")) or 0
        index = _int_or_none(args.get("Device Id"))
        device = "cpu" if kind == 0 or index is None or index < 0 else f"cuda:{index}"
        reserved = _int_or_none(args.get("Total Reserved")) or 0
        per_device[device].append((float(e["ts"]), alloc, reserved))
    capacity = {f"cuda:{d.index}": d.total_memory for d in devices}
    for device, samples in sorted(per_device.items()):
        samples.sort()
        peak_ts, peak, _ = max(samples, key=lambda s: (s[1], -s[0]))
        step = next((n for n, s, e in steps if s <= peak_ts < e), None)
        phase = next((p for p, spans in phase_spans.items() if any(s <= peak_ts < e for s, e in spans)), None)
        yield MemoryCurve(
            device=device,
            samples=len(samples),
            start_bytes=samples[0][1],
            peak_bytes=peak,
            end_bytes=samples[-1][1],
            peak_reserved_bytes=max(s[2] for s in samples),
            peak_at_ms=(peak_ts - origin) / 1e3,
            peak_step=step,
            peak_phase=phase,
            capacity_bytes=capacity.get(device),
            points=_downsample(samples, origin),
        )


def _downsample(samples: list[tuple[float, int, int]], origin: float) -> tuple[tuple[float, int], ...]:
    """At most MEMORY_CURVE_POINTS points; each bucket keeps its maximum so peaks survive."""
    if len(samples) <= MEMORY_CURVE_POINTS:
        return tuple(((ts - origin) / 1e3, a) for ts, a, _ in samples)
    size = len(samples) / MEMORY_CURVE_POINTS
    out = []
    for b in range(MEMORY_CURVE_POINTS):
        bucket = samples[int(b * size): int((b + 1) * size)] or samples[-1:]
        ts, a, _ = max(bucket, key=lambda s: s[1])
        out.append(((ts - origin) / 1e3, a))
    return tuple(out)


def top_operators(ops: Sequence[OperatorStat], n: int = 15, by: str = "auto") -> list[OperatorStat]:
    """The n heaviest operators: by self device time when any op has some, else self CPU."""
    if by == "auto":
        by = "self_device_us" if any(o.self_device_us > 0 for o in ops) else "self_cpu_us"
    return sorted(ops, key=lambda o: (-getattr(o, by), o.name))[:n]
