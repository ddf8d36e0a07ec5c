"""Two variants of one scenario, layer by layer, on identical batches: where do they diverge?

Both sides are built from the same scenario with the same seed, so they start
from identical weights, and see the same batches. Variant B runs under
autocast (``bf16``, ``fp16``; ``amp`` is bf16 on CPU and fp16 on CUDA, as in
``workbench bench``) or as the dynamically quantized int8 model (``int8``, CPU,
inference only). Both run in eval mode, so dropout and BatchNorm's batch
statistics do not differ between them: what differs is numerics alone.

For every module (matched by qualified name) the first tensor of its output
is compared with variant A's: relative error ``||b - a|| / ||a||``, max
absolute difference and cosine similarity, accumulated over the batches. For
training variants the loss is backpropagated on both sides and each
parameter's gradient is compared the same way. The first module in execution
order whose relative error passes the threshold is where the variants part.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.bench.context import take_batches
from workbench.engine.probe import first_float_tensor
from workbench.errors import UsageError
from workbench.scenario import Batch, Scenario, ScenarioSource, resolve_device
from workbench.scenario.step import forward_loss, instrumented

VARIANTS = ("fp32", "amp", "bf16", "fp16", "int8")
DEFAULT_THRESHOLD = 1e-2  # relative error: bf16 keeps ~3 significant digits, so ~4e-3 per op is normal


@dataclass(frozen=True)
class TensorDiff:
    name: str
    kind: str  # module type, or "grad" for a parameter's gradient
    shape: tuple[int, ...]
    rel_error: float  # ||b - a|| / ||a|| over all batches
    max_abs: float
    cosine: float
    non_finite_b: int  # NaN/Inf in variant B's values
    calls: int = 1  # forward calls of the module per batch (the first call is compared)
    non_finite_a: int = 0  # NaN/Inf in variant A's values (the sums leave out those positions)


@dataclass(frozen=True)
class Divergence:
    scenario: str
    device: str
    a: str
    b: str
    batches: int
    threshold: float
    layers: tuple[TensorDiff, ...]  # execution order of variant A
    grads: tuple[TensorDiff, ...]  # empty for inference variants
    loss_a: float
    loss_b: float
    notes: tuple[str, ...] = ()

    @property
    def first_over(self) -> TensorDiff | None:
        """The first module, in execution order, past the threshold (or non-finite)."""
        return next((d for d in self.layers if _bad(d, self.threshold)), None)

    @property
    def diverged(self) -> bool:
        return self.first_over is not None or any(_bad(d, self.threshold) for d in self.grads)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        first = self.first_over
        return {**asdict(self), "diverged": self.diverged, "first_over": first.name if first else None}


def _bad(d: TensorDiff, threshold: float) -> bool:
    """Past the threshold, or B has NaN/Inf where A has fewer."""
    return d.non_finite_b > d.non_finite_a or not math.isfinite(d.rel_error) or d.rel_error > threshold


# -- running one side --------------------------------------------------------------------


@dataclass
class _Side:
    name: str
    model: nn.Module
    autocast: torch.dtype | None
    trains: bool


def _side(variant: str, scenario: Scenario) -> _Side:
    device = scenario.device
    if variant == "fp32":
        return _Side(variant, scenario.model, None, True)
    if variant in ("amp", "bf16", "fp16"):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            variant, torch.float16 if device.type == "cuda" else torch.bfloat16)
        return _Side(variant, scenario.model, dtype, True)
    if variant == "int8":
        if device.type != "cpu":
            raise UsageError("int8 (dynamic quantization) runs on CPU only; use --device cpu.")
        from workbench.bench.variants.quantize import quantize

        return _Side(variant, quantize(scenario.model), None, False)
    raise UsageError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}.")


@dataclass
class Captured:
    """A module's output on its first call in the batch (a copy), and how often it was called."""

    output: torch.Tensor
    calls: int = 1


@contextlib.contextmanager
def _capture(model: nn.Module) -> Iterator[dict[str, Captured]]:
    """Every module's first forward output (first float tensor), by qualified name."""
    seen: dict[str, Captured] = {}

    def hook(name: str):  # noqa: ANN202
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if name in seen:
                seen[name].calls += 1  # only the first call is compared: keep no more copies
                return
            t = first_float_tensor(output)
            if t is not None:
                # A copy: a later in-place op (ReLU(inplace=True), x += residual) would
                # otherwise change what this module is recorded to have produced.
                seen[name] = Captured(t.detach().clone())
        return record

    with instrumented(model, restore_rng=False) as hooks:  # hooks removed, modes restored in finally
        for name, module in model.named_modules():
            hooks.forward_hook(module, hook(name or "(model)"))
        yield seen


def _run(side: _Side, scenario: Scenario, batch: Batch) -> tuple[dict[str, Captured], float]:
    grad = torch.enable_grad() if side.trains else torch.no_grad()
    with _capture(side.model) as seen, grad:
        _, value = forward_loss(scenario, batch, side.model, autocast=side.autocast)
        loss = value.total
        if side.trains:
            loss.float().backward()
    return seen, float(loss.detach().float())  # sync point: one loss value per side per batch


# -- comparing ---------------------------------------------------------------------------


class _Acc:
    """Sums over batches of ||a||^2, ||b-a||^2, a.b, ||b||^2, max|b-a|, non-finite count."""

    def __init__(self, kind: str, shape: tuple[int, ...], calls: int) -> None:
        self.kind, self.shape, self.calls = kind, shape, calls
        self.aa = self.dd = self.ab = self.bb = self.max_abs = 0.0
        self.bad_a = self.bad_b = 0

    def add(self, row: list[float]) -> None:
        aa, dd, ab, bb, mx, bad_a, bad_b = row
        self.aa += aa
        self.dd += dd
        self.ab += ab
        self.bb += bb
        self.max_abs = max(self.max_abs, mx)
        self.bad_a += int(bad_a)
        self.bad_b += int(bad_b)

    def result(self, name: str) -> TensorDiff:
        rel = math.sqrt(self.dd / self.aa) if self.aa > 0 else (0.0 if self.dd == 0 else math.inf)
        denom = math.sqrt(self.aa * self.bb)
        cos = self.ab / denom if denom > 0 else (1.0 if self.dd == 0 else 0.0)
        return TensorDiff(name, self.kind, self.shape, rel, self.max_abs, cos, self.bad_b, self.calls, self.bad_a)


def _stats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sums over the positions finite on both sides, plus each side's NaN/Inf count."""
    a, b = a.float(), b.to(a.device).float()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    both = fa & fb
    a0, b0 = torch.where(both, a, 0.0), torch.where(both, b, 0.0)
    d = b0 - a0
    return torch.stack([(a0 * a0).sum(), (d * d).sum(), (a0 * b0).sum(), (b0 * b0).sum(),
                        d.abs().max() if d.numel() else a.new_zeros(()),
                        (~fa).sum().float(), (~fb).sum().float()])


def compare_variants(
    source: ScenarioSource,
    a: str = "fp32",
    b: str = "amp",
    *,
    device: str | torch.device = "cpu",
    batches: int = 2,
    threshold: float = DEFAULT_THRESHOLD,
) -> Divergence:
    """Variant ``a`` vs ``b`` of ``source``, layer by layer, on the same ``batches`` batches."""
    for v in (a, b):
        if v not in VARIANTS:
            raise UsageError(f"unknown variant {v!r}; expected one of {', '.join(VARIANTS)}.")
    if a == b:
        raise UsageError(f"compare two different variants (got {a} twice), e.g. --a fp32 --b amp.")
    if batches < 1:
        raise UsageError(f"--batches must be >= 1, got {batches}.")
    if not threshold > 0:
        raise UsageError(f"--threshold must be > 0, got {threshold}.")
    dev = resolve_device(device)
    first, second = source.build(dev), source.build(dev)  # same seed: identical weights
    for s in (first, second):
        s.model.eval()  # numerics only: no dropout masks, BatchNorm on its running stats
    side_a, side_b = _side(a, first), _side(b, second)
    if not (side_a.trains and side_b.trains):
        side_a.trains = side_b.trains = False  # int8 is inference: compare the forward alone
    data = take_batches(first, first.data, batches, f"{source.label}: data")
    modules = dict(side_a.model.named_modules())
    layers: dict[str, _Acc] = {}
    order: list[str] = []
    grads: dict[str, _Acc] = {}
    loss_a = loss_b = 0.0
    notes: list[str] = []
    for batch in data:
        batch = batch.to(dev)
        for s in (side_a, side_b):
            s.model.zero_grad(set_to_none=True)
        seen_a, la = _run(side_a, first, batch)
        seen_b, lb = _run(side_b, second, batch)
        loss_a += la / len(data)
        loss_b += lb / len(data)
        names = [n for n in seen_a if n in seen_b and seen_a[n].output.shape == seen_b[n].output.shape]
        if not notes:
            skipped = sorted(set(seen_a) ^ set(seen_b))
            if skipped:
                notes.append(f"not compared (only one side produced them): {', '.join(skipped[:6])}"
                             + (" …" if len(skipped) > 6 else ""))
            reshaped = [n for n in seen_a if n in seen_b and seen_a[n].output.shape != seen_b[n].output.shape]
            if reshaped:
                notes.append(f"not compared (the output shapes differ): {', '.join(reshaped[:6])}"
                             + (" …" if len(reshaped) > 6 else ""))
        pairs = [(n, seen_a[n].output, seen_b[n].output) for n in names]
        if side_a.trains:
            params_b = dict(side_b.model.named_parameters())
            for n, p in side_a.model.named_parameters():
                q = params_b.get(n)
                if p.grad is not None and q is not None and q.grad is not None:
                    pairs.append((f"grad:{n}", p.grad, q.grad))
        if not pairs:
            continue
        # Sync point: one device->host transfer per batch, all modules and gradients at once.
        rows = torch.stack([_stats(x, y) for _, x, y in pairs]).tolist()
        for (n, x, _), row in zip(pairs, rows):
            if n.startswith("grad:"):
                acc = grads.setdefault(n[5:], _Acc("grad", tuple(x.shape), 1))
            else:
                if n not in layers:
                    order.append(n)
                    kind = type(modules.get("" if n == "(model)" else n, side_a.model)).__name__
                    layers[n] = _Acc(kind, tuple(x.shape), seen_a[n].calls)
                acc = layers[n]
            acc.add(row)
    return Divergence(
        scenario=source.label, device=str(dev), a=a, b=b, batches=len(data), threshold=threshold,
        layers=tuple(layers[n].result(n) for n in order),
        grads=tuple(acc.result(n) for n, acc in grads.items()),
        loss_a=loss_a, loss_b=loss_b, notes=tuple(notes),
    )
