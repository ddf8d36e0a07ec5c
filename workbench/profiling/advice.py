"""Recommendations from a trace analysis: the TensorBoard plugin's rules, re-implemented.

Each rule reads a few plain numbers (:class:`Facts`), fires only past a
threshold it states in its output, and names the ``workbench bench``
variant that measures whether the advice helps on this scenario.

Thresholds (the plugin's, unless marked ours):

=====================  ==========================================================
dataloader             DataLoader share of step time > 5 % (the advice fits the data:
                       a DataLoader, batches in memory, another iterable)
dataparallel           nn.DataParallel seen in the trace
ddp_backend            DDP on a GPU of compute capability >= 3.5 without NCCL
communication          communication share of step time > 10 %
gpu_utilization        kernel-busy share of step time < 50 % (plugin: per GPU)
tensor_cores           compute capability >= 7.0, Tensor Core kernel time = 0,
                       Tensor-Core-eligible operators' kernel time > 0
memory                 peak allocated > 90 % of the device's memory
host_overhead (ours)   "Other" (time outside any op: Python, launch gaps) > 30 %,
                       not judged with --stack (Python tracing inflates it)
=====================  ==========================================================

Engine findings (duck-typed: any object with ``kind`` and ``message``) are
folded in as recommendations of their own, one per kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.profiling.analysis import Category, TraceAnalysis

DATALOADER_SHARE = 0.05
COMMUNICATION_SHARE = 0.10
LOW_GPU_UTILIZATION = 0.50
MEMORY_SHARE = 0.90
TENSOR_CORE_MIN_MAJOR = 7
NCCL_MIN_CAPABILITY = 3.5
HOST_OVERHEAD_SHARE = 0.30

# What to run when the engine reports a finding of this kind (None: no
# benchmark variant measures it). Numeric trouble: see whether precision is
# the cause by comparing fp32 with AMP.
ENGINE_VARIANTS: dict[str, str | None] = {
    "nan_inf": "fp32,amp",
    "exploding_gradient": "fp32,amp",
    "loss_divergence": "fp32,amp",
    "tiny_updates": "fp32,amp",
}


@dataclass(frozen=True)
class GpuFacts:
    index: int
    name: str
    compute_capability: float | None
    total_memory: int | None
    peak_allocated: int | None


@dataclass(frozen=True)
class Facts:
    """The numbers the rules read; built from a TraceAnalysis or by hand in tests."""

    dataloader_share: float = 0.0
    communication_share: float = 0.0
    other_share: float = 0.0
    uses_dataparallel: bool = False
    used_devices: int = 0
    uses_ddp: bool = False
    comm_libs: tuple[str, ...] = ()
    gpu_utilization: float | None = None  # None: no device kernels in the trace
    tensor_core_share: float | None = None  # of kernel time; None without kernels
    tc_eligible_share: float | None = None  # of kernel time, eligible ops
    gpus: tuple[GpuFacts, ...] = ()
    with_stack: bool = False  # Python tracing on: it inflates the time between ops
    data_type: str | None = None  # "DataLoader", "list", a class name; None: not known (an older trace)
    loader_workers: int | None = None  # its num_workers, for a DataLoader whose trace says

    @classmethod
    def from_analysis(cls, a: TraceAnalysis) -> Facts:
        peaks = {m.device: m.peak_bytes for m in a.memory}
        gpus = tuple(
            GpuFacts(
                index=d.index,
                name=d.name,
                compute_capability=(
                    float(f"{d.compute_major}.{d.compute_minor or 0}") if d.compute_major is not None else None
                ),
                total_memory=d.total_memory,
                peak_allocated=peaks.get(f"cuda:{d.index}"),
            )
            for d in a.devices
        )
        kernels = a.kernel_sum_us
        return cls(
            dataloader_share=a.share(Category.DATALOADER),
            communication_share=a.share(Category.COMMUNICATION),
            other_share=a.share(Category.OTHER),
            uses_dataparallel=a.uses_dataparallel,
            used_devices=len(a.used_device_ids),
            uses_ddp=a.uses_ddp,
            comm_libs=a.comm_libs,
            gpu_utilization=a.gpu_utilization,
            tensor_core_share=a.tensor_core_kernel_us / kernels if kernels > 0 else None,
            tc_eligible_share=min(a.tc_eligible_kernel_us / kernels, 1.0) if kernels > 0 else None,
            gpus=gpus,
            with_stack=a.with_stack,
            data_type=a.data_type,
            loader_workers=a.loader_workers,
        )


@dataclass(frozen=True)
class Recommendation:
    rule: str
    message: str  # what was measured and what to try
    threshold: str  # the condition that fired, in words
    measured: str
    variant: str | None  # `workbench bench SCENARIO --variants <variant>`
    source: str = "profile"  # or "engine"

    def command(self, scenario: str = "SCENARIO") -> str | None:
        if self.variant is None:
            return None
        return f"workbench bench {scenario} --variants {self.variant}"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


# Data that is already in memory: nothing for loader workers to load.
IN_MEMORY_DATA = frozenset({"list", "tuple"})


def rule_dataloader(f: Facts) -> Recommendation | None:
    if f.dataloader_share <= DATALOADER_SHARE:
        return None
    threshold, measured = f"DataLoader share > {_pct(DATALOADER_SHARE)}", _pct(f.dataloader_share)
    if f.data_type == "DataLoader" and f.loader_workers:
        n = f.loader_workers
        return Recommendation(
            "dataloader",
            f"{measured} of the step time is spent waiting for data although the DataLoader already has "
            f"{n} worker{'s' if n > 1 else ''}: they do not keep up. Raise num_workers (up to the cores "
            "free for it), make each sample cheaper to load (decode or augment less in __getitem__, or "
            "once ahead of training), or keep them busy between epochs with persistent_workers=True and "
            "a larger prefetch_factor.",
            threshold, measured, "dataloader",
        )
    if f.data_type is None or f.data_type == "DataLoader":
        return Recommendation(
            "dataloader",
            f"{measured} of the step time is spent waiting for data. Load batches in "
            "background workers (DataLoader(num_workers=N)), and on a GPU pin_memory=True with "
            "non_blocking copies.",
            threshold, measured, "dataloader",
        )
    # Not a DataLoader: `bench --variants dataloader` skips it, and DataLoader settings do not apply.
    on_gpu = bool(f.gpus) or f.gpu_utilization is not None
    if f.data_type in IN_MEMORY_DATA:
        cost = ("the copy of each batch to the device. Pin the tensors once (tensor.pin_memory()) so "
                "the copies can run non_blocking, or keep the batches on the device." if on_gpu else
                "the per-batch cost of taking each batch; larger batches spread it over more samples.")
        message = (f"{measured} of the step time is spent taking batches from the data, a {f.data_type} "
                   f"already in memory, so background loader workers have nothing to load: this is {cost}")
    else:
        pin = ", and on a GPU pin_memory=True with non_blocking copies" if on_gpu else ""
        message = (f"{measured} of the step time is spent waiting for data from a {f.data_type} (not a "
                   "DataLoader). Load its batches in background workers: wrap it in a torch.utils.data."
                   f"DataLoader (an IterableDataset or a Dataset) with num_workers=N{pin}.")
    return Recommendation("dataloader", message, threshold, measured, None)


def rule_dataparallel(f: Facts) -> Recommendation | None:
    if not f.uses_dataparallel:
        return None
    devices = f" across {f.used_devices} devices" if f.used_devices > 1 else ""
    return Recommendation(
        "dataparallel",
        f"nn.DataParallel is in use{devices}: it runs one Python thread per GPU, scatters inputs "
        "and gathers outputs on GPU 0 every step. DistributedDataParallel (one process per GPU) "
        "is faster even on a single machine.",
        "DataParallel.forward seen in the trace",
        "DataParallel",
        "ddp-2",
    )


def rule_ddp_backend(f: Facts) -> Recommendation | None:
    if not f.uses_ddp or "nccl" in f.comm_libs:
        return None
    capable = [g for g in f.gpus if g.compute_capability is not None and g.compute_capability >= NCCL_MIN_CAPABILITY]
    if not capable:
        return None
    backend = ", ".join(f.comm_libs) or "no NCCL collective"
    return Recommendation(
        "ddp_backend",
        f"DistributedDataParallel runs on {capable[0].name} with {backend}; NCCL is the fastest "
        "backend for GPU training: init_process_group(backend='nccl').",
        f"DDP on a GPU with compute capability >= {NCCL_MIN_CAPABILITY} and no NCCL",
        backend,
        "ddp-2",
    )


def rule_communication(f: Facts) -> Recommendation | None:
    if f.communication_share <= COMMUNICATION_SHARE:
        return None
    return Recommendation(
        "communication",
        f"{_pct(f.communication_share)} of the step time is communication. Synchronise less "
        "often (gradient accumulation: fewer all-reduces per sample), use larger batches, or "
        "compress gradients (DDP communication hooks). Accumulation raises the effective "
        "batch size, which can change convergence.",
        f"communication share > {_pct(COMMUNICATION_SHARE)}",
        _pct(f.communication_share),
        "accum-4",
    )


def rule_gpu_utilization(f: Facts) -> Recommendation | None:
    if f.gpu_utilization is None or f.gpu_utilization >= LOW_GPU_UTILIZATION:
        return None
    return Recommendation(
        "gpu_utilization",
        f"The GPU runs kernels only {_pct(f.gpu_utilization)} of the step time: the host "
        "cannot feed it. Fewer, bigger kernels help (torch.compile fuses them and cuts launch "
        "overhead); so does a larger batch, if convergence allows.",
        f"kernel-busy share of step time < {_pct(LOW_GPU_UTILIZATION)}",
        _pct(f.gpu_utilization),
        "compile",
    )


def rule_tensor_cores(f: Facts) -> Recommendation | None:
    if f.tensor_core_share is None or f.tensor_core_share > 0 or not f.tc_eligible_share:
        return None
    capable = [g for g in f.gpus if g.compute_capability is not None and g.compute_capability >= TENSOR_CORE_MIN_MAJOR]
    if not capable:
        return None
    return Recommendation(
        "tensor_cores",
        f"{_pct(f.tc_eligible_share)} of kernel time comes from operators that could use Tensor "
        f"Cores on {capable[0].name}, but no kernel did. Automatic mixed precision "
        "(torch.autocast with float16/bfloat16) runs them on Tensor Cores.",
        f"compute capability >= {TENSOR_CORE_MIN_MAJOR}.0, Tensor Core kernel time = 0, eligible ops' kernel time > 0",
        _pct(f.tc_eligible_share),
        "amp",
    )


def rule_memory(f: Facts) -> Recommendation | None:
    for g in f.gpus:
        if g.total_memory and g.peak_allocated is not None and g.peak_allocated > MEMORY_SHARE * g.total_memory:
            share = g.peak_allocated / g.total_memory
            return Recommendation(
                "memory",
                f"Peak memory is {_pct(share)} of {g.total_memory / 2**30:.1f} GiB on GPU {g.index} "
                f"({g.name}): at the limit. Activation checkpointing (torch.utils.checkpoint) or "
                "mixed precision frees room for larger batches; gradient accumulation keeps the "
                "effective batch with smaller micro-batches.",
                f"peak allocated > {_pct(MEMORY_SHARE)} of device memory",
                _pct(share),
                "amp",
            )
    return None


def rule_host_overhead(f: Facts) -> Recommendation | None:
    if f.other_share <= HOST_OVERHEAD_SHARE or f.with_stack:
        return None
    return Recommendation(
        "host_overhead",
        f"{_pct(f.other_share)} of the step time is outside any operator (Python between ops, "
        "small-op dispatch). torch.compile removes much of that overhead.",
        f"'Other' share > {_pct(HOST_OVERHEAD_SHARE)} (our rule, not the plugin's)",
        _pct(f.other_share),
        "compile",
    )


RULES: tuple[Callable[[Facts], Recommendation | None], ...] = (
    rule_dataloader,
    rule_dataparallel,
    rule_ddp_backend,
    rule_communication,
    rule_gpu_utilization,
    rule_tensor_cores,
    rule_memory,
    rule_host_overhead,
)

# Stated in every report, so a silent rule list is not mistaken for "nothing checked".
THRESHOLDS: tuple[tuple[str, str], ...] = (
    ("dataloader", f"DataLoader share > {_pct(DATALOADER_SHARE)}"),
    ("dataparallel", "nn.DataParallel in use"),
    ("ddp_backend", f"DDP without NCCL on a GPU (compute capability >= {NCCL_MIN_CAPABILITY})"),
    ("communication", f"communication share > {_pct(COMMUNICATION_SHARE)}"),
    ("gpu_utilization", f"GPU kernel-busy share < {_pct(LOW_GPU_UTILIZATION)}"),
    ("tensor_cores", "no Tensor Core kernels while eligible ops run (compute capability >= 7.0)"),
    ("memory", f"peak device memory > {_pct(MEMORY_SHARE)} of capacity"),
    ("host_overhead", f"time outside any op > {_pct(HOST_OVERHEAD_SHARE)} (ours)"),
)


# Rules that read device (GPU) numbers: on a CPU-only run they cannot fire, and say so.
GPU_ONLY: frozenset[str] = frozenset({"ddp_backend", "gpu_utilization", "tensor_cores", "memory"})


def _measured(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def from_findings(findings: Iterable[Any]) -> list[Recommendation]:
    """One recommendation per finding kind, from any objects with ``kind`` and
    ``message`` (the engine's Finding, or anything shaped like it)."""
    first: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    for finding in findings:
        kind = getattr(finding, "kind", None)
        message = getattr(finding, "message", None)
        if not kind or not message:
            continue
        counts[str(kind)] += 1
        first.setdefault(str(kind), finding)
    out = []
    for kind, finding in first.items():
        more = f" ({counts[kind]} findings of this kind)" if counts[kind] > 1 else ""
        severity = getattr(finding, "severity", None)
        out.append(
            Recommendation(
                f"engine:{kind}",
                f"{finding.message}{more}",
                "the engine's health rule" + (f" ({severity})" if severity else ""),
                _measured(getattr(finding, "value", None)),
                ENGINE_VARIANTS.get(kind),
                source="engine",
            )
        )
    return out


def recommend(facts: Facts | TraceAnalysis, findings: Sequence[Any] = ()) -> tuple[Recommendation, ...]:
    """Every rule that fires on these facts, then the engine's findings."""
    if isinstance(facts, TraceAnalysis):
        facts = Facts.from_analysis(facts)
    fired = [r for rule in RULES if (r := rule(facts)) is not None]
    return tuple(fired + from_findings(findings))
