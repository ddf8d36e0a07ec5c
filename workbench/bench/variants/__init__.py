"""The variant registry: names (fixed, patterned like accum-K, or aliases) to Variant objects.

Adding a variant: subclass :class:`Variant` and call :func:`register` (or
:func:`register_pattern` for a family such as ``ddp-N``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from workbench.bench.variants.base import Variant
from workbench.bench.variants.distributed import DDPVariant
from workbench.bench.variants.loader import Loader
from workbench.bench.variants.quantize import DynamicInt8
from workbench.bench.variants.training import AMP, FP32, Accumulate, ChannelsLast, Compile, DataParallel
from workbench.errors import UsageError

__all__ = ["Variant", "register", "register_pattern", "resolve", "variant", "with_numerics", "catalogue", "DEFAULT",
           "BASELINE"]

BASELINE = "fp32"

_FIXED: dict[str, Callable[[], Variant]] = {}


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    example: str
    help: str
    make: Callable[[re.Match[str]], Variant]


_PATTERNS: list[_Pattern] = []
ALIASES: dict[str, tuple[str, ...]] = {}


def register(name: str, make: Callable[[], Variant]) -> None:
    _FIXED[name] = make


def register_pattern(pattern: str, example: str, help: str, make: Callable[[re.Match[str]], Variant]) -> None:
    _PATTERNS.append(_Pattern(re.compile(pattern), example, help, make))


def _loader(m: re.Match[str]) -> Variant:
    workers, pin = int(m.group(1)), bool(m.group(2))
    return Loader(m.group(0), f"DataLoader num_workers={workers}" + (", pin_memory" if pin else ""),
                  workers=workers, pin=pin)


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"variant {name!r}: the number must be at least 1")
    return value


register("fp32", FP32)
register("amp", AMP)
register("amp-bf16", lambda: AMP("amp-bf16", "torch.autocast bf16 on CUDA (no GradScaler)", dtype="bf16"))
register("amp-fp16", lambda: AMP("amp-fp16", "torch.autocast fp16 + GradScaler on any device (on CPU: fp16 "
                                             "numerics, not speed)", dtype="fp16"))
register("channels-last", ChannelsLast)
register("compile", Compile)
register("dataparallel", DataParallel)
register("int8-dynamic", DynamicInt8)
register_pattern(
    r"accum-(\d+)", "accum-4", "gradient accumulation over K micro-batches (same effective batch)",
    lambda m: Accumulate(m.group(0), f"gradient accumulation, {m.group(1)} micro-batches per step",
                         k=_positive(m.group(0), int(m.group(1)))),
)
register_pattern(
    r"ddp-(\d+)", "ddp-2", "DistributedDataParallel with N local ranks",
    lambda m: DDPVariant(m.group(0), f"DDP, {m.group(1)} local ranks, global batch split across them",
                         world_size=_positive(m.group(0), int(m.group(1)))),
)
register_pattern(r"loader-w(\d+)(-pin)?", "loader-w2-pin", "DataLoader with N workers (and pin_memory)",
                 _loader)
ALIASES["dataloader"] = ("loader-w0", "loader-w2", "loader-w2-pin")

# compile is left out: it takes ~20 s per model on a 2-core CPU (run it with --variants compile).
DEFAULT: tuple[str, ...] = (
    "fp32", "amp", "amp-bf16", "accum-4", "channels-last", "dataparallel", "ddp-2",
    "int8-dynamic", "dataloader",
)
ALIASES["default"] = DEFAULT
ALIASES["all"] = (*DEFAULT, "compile")


def catalogue() -> list[tuple[str, str]]:
    """(name, what it does) for every fixed name, pattern and alias: for help and errors."""
    rows = [(name, make().description) for name, make in _FIXED.items()]
    rows += [(_pattern_label(p), p.help) for p in _PATTERNS]
    rows += [(alias, "= " + ", ".join(names)) for alias, names in ALIASES.items()]
    return rows


def _pattern_label(p: _Pattern) -> str:
    return {"accum-4": "accum-K", "ddp-2": "ddp-N", "loader-w2-pin": "loader-wN[-pin]"}.get(p.example, p.example)


def valid_names() -> str:
    return ", ".join([*list(_FIXED), *(_pattern_label(p) for p in _PATTERNS), *ALIASES])


def variant(name: str) -> Variant:
    """The one variant called ``name`` (a fixed name or a pattern like accum-4; no aliases)."""
    return _one(name)


def with_numerics() -> tuple[str, ...]:
    """The fixed names whose variant has numerics of its own (``workbench diff`` compares them)."""
    return tuple(name for name, make in _FIXED.items() if type(make()).numerics is not Variant.numerics)


def _one(name: str) -> Variant:
    if name in _FIXED:
        return _FIXED[name]()
    for p in _PATTERNS:
        m = p.regex.fullmatch(name)
        if m:
            return p.make(m)
    raise UsageError(f"unknown variant {name!r}; valid variants: {valid_names()} "
                     "(e.g. --variants fp32,amp,accum-4,ddp-2)")


def resolve(names: Iterable[str] | None) -> list[Variant]:
    """Variant objects for ``names`` (aliases expanded, duplicates dropped, fp32 first).

    fp32 is always run first: it is the baseline for speedup and final loss.
    """
    wanted = list(DEFAULT if names is None else names)
    expanded: list[str] = []

    def expand(name: str) -> None:
        for part in ALIASES.get(name, (name,)):
            if part in ALIASES and part != name:
                expand(part)
            else:
                expanded.append(part)

    for name in wanted:
        if name.strip():
            expand(name.strip())
    if not expanded:
        raise UsageError(f"no variants given; valid variants: {valid_names()}")
    variants = [_one(n) for n in expanded]
    seen: set[str] = set()
    unique = []
    for v in variants:
        if v.name not in seen:
            seen.add(v.name)
            unique.append(v)
    if BASELINE not in seen:
        unique.insert(0, _one(BASELINE))
    unique.sort(key=lambda v: v.name != BASELINE)
    return unique
