"""Benchmark results: frozen dataclasses, lazy statistics, strict-JSON round trip.

Modelled on ``torch.utils.benchmark``'s ``Measurement``: a :class:`Timing`
keeps every raw sample (seconds per step) and computes median, IQR and min
on demand, so nothing derived is stored twice and a JSON file can always be
re-analysed.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

FORMAT = "torch-workbench-bench"
FORMAT_VERSION = 1

# IQR/median above this means the machine was busy while we measured.
NOISY_IQR_RATIO = 0.10

Status = Literal["ok", "skipped", "failed"]


@dataclass(frozen=True)
class Timing:
    """Per-step seconds of each timed block (block time / steps in the block)."""

    samples: tuple[float, ...]
    steps_per_sample: int = 1
    samples_per_step: int = 0  # training samples consumed by one step (the batch size)
    planned_steps: int = 0  # steps the plan asked to time (0: not recorded)
    timed_steps: int = 0  # steps actually timed; fewer than planned when the budget ran out
    budget_s: float | None = None  # the per-measurement time budget, None for "time every step"

    @property
    def cut_short(self) -> bool:
        """Timing stopped at the time budget before every planned step was timed."""
        return 0 < self.timed_steps < self.planned_steps

    @cached_property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @cached_property
    def min(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @cached_property
    def iqr(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def noisy(self) -> bool:
        return self.median > 0 and self.iqr / self.median > NOISY_IQR_RATIO

    @property
    def throughput(self) -> float | None:
        """Training samples per second at the median step time."""
        if not self.samples_per_step or not self.median or math.isnan(self.median):
            return None
        return self.samples_per_step / self.median


@dataclass(frozen=True)
class VariantResult:
    """One row of the comparison table.

    ``speedup`` compares ``timing`` with ``speedup_basis``: the fp32 training
    row for training variants, the variant's own fp32 reference (``reference``)
    otherwise, e.g. fp32 inference for int8. ``final_loss`` is the mean loss
    over the fixed benchmark batches after ``steps_trained`` optimizer steps;
    ``baseline_loss`` is fp32's loss after that same number of steps (the
    runner re-runs fp32 when a time budget stopped the rows at different steps).
    """

    name: str
    status: Status
    description: str = ""
    reason: str = ""
    timing: Timing | None = None
    reference: Timing | None = None
    speedup: float | None = None
    speedup_basis: str = ""
    peak_memory: int | None = None  # bytes
    memory_method: str = ""
    final_loss: float | None = None
    warnings: tuple[str, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)
    steps_trained: int | None = None  # warm-up + timed optimizer steps behind final_loss
    baseline_loss: float | None = None  # fp32's final loss after steps_trained steps

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Hardware:
    cpu: str
    cores: int
    threads: int  # torch.get_num_threads() during the run
    gpus: tuple[str, ...]
    torch_version: str
    cpu_capability: str = ""
    cuda_version: str | None = None

    def summary(self) -> str:
        gpus = ", ".join(self.gpus) if self.gpus else "no CUDA device"
        cap = f" ({self.cpu_capability})" if self.cpu_capability else ""
        cuda = f", CUDA {self.cuda_version}" if self.cuda_version else ""
        return (
            f"{self.cpu}{cap}, {self.cores} cores, torch threads {self.threads}; "
            f"{gpus}; torch {self.torch_version}{cuda}"
        )


@dataclass(frozen=True)
class BenchSettings:
    warmup: int
    steps: int
    block: int
    batches: int  # distinct batches reused by every variant
    batch_size: int
    threads: int
    budget_s: float | None = None  # per-row timing budget (None: every step timed)
    min_samples: int = 0  # timed blocks a budget never cuts below


@dataclass(frozen=True)
class BenchRun:
    scenario: str
    device: str
    hardware: Hardware
    settings: BenchSettings
    results: tuple[VariantResult, ...]
    started: str = ""  # ISO time
    wall_s: float = 0.0
    interrupted: bool = False
    # 1-minute load average at the start and the end: other processes on the
    # machine inflate every timing (two torch threads on 2 shared cores wait
    # for each other; measured 5x slower steps with one busy neighbour).
    load: tuple[float, float] | None = None

    def get(self, name: str) -> VariantResult | None:
        return next((r for r in self.results if r.name == name), None)


# -- JSON ----------------------------------------------------------------------------


class BenchFileError(ValueError):
    """A file given to --compare is missing, corrupt, or not a bench result."""


def to_dict(run: BenchRun) -> dict[str, Any]:
    data = dataclasses.asdict(run)
    data = {"format": FORMAT, "version": FORMAT_VERSION, **data}
    return data


def _num(value: Any) -> Any:
    # jsonable() wrote non-finite floats as strings; turn them back.
    if value in ("NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    return value


def _samples(values: Any, row: str, field: str, where: str) -> tuple[float, ...]:
    """Seconds per step, each a finite number > 0; BenchFileError names the row and the sample."""
    if not isinstance(values, (list, tuple)):
        raise BenchFileError(f"{where}: row {row!r}: {field}.samples is {type(values).__name__}, expected a list "
                             "of seconds per step.")
    out = []
    for i, raw in enumerate(values):
        value = _num(raw)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            what = "not a number" if not ok else "not finite" if not math.isfinite(value) else "not positive"
            raise BenchFileError(f"{where}: row {row!r}: {field}.samples[{i}] = {raw!r} is {what}; a step time "
                                 "must be a positive number of seconds. The run that wrote it is broken: "
                                 "re-run `workbench bench --json`.")
        out.append(float(value))
    return tuple(out)


def _timing(data: dict[str, Any] | None, row: str = "?", field: str = "timing",
            where: str = "bench file") -> Timing | None:
    if data is None:
        return None
    return Timing(
        samples=_samples(data["samples"], row, field, where),
        steps_per_sample=int(data.get("steps_per_sample", 1)),
        samples_per_step=int(data.get("samples_per_step", 0)),
        planned_steps=int(data.get("planned_steps", 0)),
        timed_steps=int(data.get("timed_steps", 0)),
        budget_s=None if data.get("budget_s") is None else float(data["budget_s"]),
    )


def from_dict(data: Any, where: str = "bench file") -> BenchRun:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BenchFileError(
            f"{where}: not a workbench bench result (expected a JSON object with "
            f'"format": "{FORMAT}"). Pass a file written by `workbench bench ... --json FILE`.'
        )
    if data.get("version") != FORMAT_VERSION:
        raise BenchFileError(
            f"{where}: bench format version {data.get('version')!r}; this workbench reads "
            f"version {FORMAT_VERSION}. Re-run `workbench bench --json` with this version."
        )
    try:
        hw = dict(data["hardware"])
        hw["gpus"] = tuple(hw.get("gpus", ()))
        results = []
        for r in data["results"]:
            r = dict(r)
            name = str(r.get("name", "?"))
            r["timing"] = _timing(r.get("timing"), name, "timing", where)
            r["reference"] = _timing(r.get("reference"), name, "reference", where)
            if r.get("status") == "ok" and (r["timing"] is None or not r["timing"].samples):
                raise BenchFileError(f"{where}: row {name!r} is ok but has no timing samples; the run that wrote "
                                     "it is broken: re-run `workbench bench --json`.")
            r["warnings"] = tuple(r.get("warnings", ()))
            for key in ("speedup", "final_loss", "baseline_loss"):
                r[key] = _num(r.get(key))
            results.append(VariantResult(**r))
        return BenchRun(
            scenario=data["scenario"],
            device=data["device"],
            hardware=Hardware(**hw),
            settings=BenchSettings(**data["settings"]),
            results=tuple(results),
            started=data.get("started", ""),
            wall_s=float(data.get("wall_s", 0.0)),
            interrupted=bool(data.get("interrupted", False)),
            load=tuple(float(x) for x in data["load"]) if data.get("load") else None,  # type: ignore[arg-type]
        )
    except BenchFileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchFileError(
            f"{where}: a bench result with a missing or malformed field ({type(exc).__name__}: "
            f"{exc}). Was it edited by hand? Re-create it with `workbench bench --json`."
        ) from exc


def load_run(path: str | Path) -> BenchRun:
    """Read a file written by ``workbench bench --json``; BenchFileError says what is wrong."""
    from workbench.inputs import InputFileError, read_json

    try:
        data = read_json(path, "bench result (`workbench bench --json`)")
    except InputFileError as exc:
        raise BenchFileError(f"{exc} Pass a JSON file written by `workbench bench --json`.") from exc
    return from_dict(data, str(path))


def save_run(path: str | Path, run: BenchRun) -> Path:
    from workbench.files import atomic_write_json

    return atomic_write_json(path, to_dict(run))
