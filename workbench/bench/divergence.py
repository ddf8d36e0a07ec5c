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

A gradient whose true value is zero, such as the bias of a score that a softmax
shifts away, has a relative error of pure rounding noise. So a gradient more
than a thousand times smaller than its layer's gradient scale (the RMS over the
parameters of the module that owns it, or a tenth of the model's, whichever is
larger) is judged relative to that scale instead. Rows judged so say so.

Outputs the instruments cannot reduce as they are are compared in a form they
can: a nested tensor (``nn.TransformerEncoder``'s padding-mask fast path)
zero-padded, with the padding left out of the sums; a complex tensor as its
real and imaginary parts; a sparse gradient densified.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.bench.context import seeded_build, take_batches
from workbench.engine.probe import dense, first_float_tensor
from workbench.errors import UsageError, exception_text, user_location
from workbench.scenario import Batch, Scenario, ScenarioSource, resolve_device
from workbench.scenario.outputs import output_loss, output_tensors, prediction_tensor
from workbench.scenario.step import forward_loss, instrumented

# diff's short names for the bench variants they stand for.
SHORT_NAMES = {"bf16": "amp-bf16", "fp16": "amp-fp16", "int8": "int8-dynamic"}
DEFAULT_THRESHOLD = 1e-2  # relative error: bf16 keeps ~3 significant digits, so ~4e-3 per op is normal
# A gradient below NEAR_ZERO of its reference scale (its layer's gradient RMS, or
# MODEL_SHARE of the model's, whichever is larger) is judged against that scale.
NEAR_ZERO = 1e-3
MODEL_SHARE = 0.1


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
    floored: bool = False  # ||A|| was below the floor: rel_error is ||B - A|| / floor
    raw_rel_error: float | None = None  # ||B - A|| / ||A||, when floored


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
        return next((d for d in self.layers if past_threshold(d, self.threshold)), None)

    @property
    def diverged(self) -> bool:
        return self.first_over is not None or any(past_threshold(d, self.threshold) for d in self.grads)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        first = self.first_over
        return {**asdict(self), "diverged": self.diverged, "first_over": first.name if first else None}


def diff_variants() -> tuple[str, ...]:
    """What ``workbench diff`` compares: every bench variant with numerics of its own
    (``Variant.numerics``), and the short names bf16, fp16, int8."""
    from workbench.bench import variants

    return (*variants.with_numerics(), *SHORT_NAMES)


def past_threshold(d: TensorDiff, threshold: float) -> bool:
    """Past the threshold, or B has NaN/Inf where A has fewer."""
    return d.non_finite_b > d.non_finite_a or not math.isfinite(d.rel_error) or d.rel_error > threshold


# -- running one side --------------------------------------------------------------------


@dataclass
class _Side:
    name: str
    model: nn.Module
    autocast: torch.dtype | None
    trains: bool


def _float64_under_autocast(*sides: _Side) -> str:
    """The names of the autocast sides whose model is float64 ("" when none is)."""
    return " and ".join(s.name for s in sides if s.autocast is not None
                        and any(p.dtype == torch.float64 for p in s.model.parameters()))


def _side(name: str, scenario: Scenario) -> _Side:
    """The numerics of the bench variant called ``name`` (or one of diff's short names)."""
    from workbench.bench import variants

    if name not in diff_variants():
        raise UsageError(f"unknown variant {name!r}; expected one of {', '.join(diff_variants())}.")
    numerics = variants.variant(SHORT_NAMES.get(name, name)).numerics(scenario)
    assert numerics is not None  # diff_variants lists only variants with numerics
    return _Side(name, numerics.model, numerics.autocast, numerics.trains)


@dataclass
class Captured:
    """A module's output on its first call in the batch (a copy), and how often it was called.

    ``output`` is dense and real (see :func:`comparable`); ``mask`` marks its real positions
    when it came from a nested tensor (None: all of them).
    """

    output: torch.Tensor
    calls: int = 1
    mask: torch.Tensor | None = None


def comparable(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A copy of ``t`` the comparison sums can take, and its mask of real positions.

    Nested: zero-padded, with the mask (aminmax, isfinite and sums have no nested
    kernels); complex: its real and imaginary parts as a trailing dim of 2 (the norms
    and the dot product are then the complex ones); sparse: densified.
    """
    t = t.detach()
    if t.is_sparse:
        t = t.to_dense()
    t, mask = dense(t)
    if t.is_complex():
        t = torch.view_as_real(t)
        mask = mask[..., None].expand(t.shape) if mask is not None else None
    # A copy: a later in-place op (ReLU(inplace=True), x += residual) would otherwise
    # change what this module is recorded to have produced.
    return t.clone(), mask


@contextlib.contextmanager
def _capture(model: nn.Module, fields: list[Any] | None = None) -> Iterator[dict[str, Captured]]:
    """Every module's first forward output (first float tensor), by qualified name."""
    seen: dict[str, Captured] = {}
    # Filled, when given, with where the root output keeps a loss it computed (or None),
    # its tensor fields, and the field compared.
    fields = [] if fields is None else fields

    def hook(name: str):  # noqa: ANN202
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if name in seen:
                seen[name].calls += 1  # only the first call is compared: keep no more copies
                return
            t = None
            if module is model:
                # What the model computed, not a loss it computed too (HF ModelOutput.loss).
                fields[:] = [output_loss(output)[1] or None, output_tensors(output)]
                t = prediction_tensor(output)
            if t is None:
                t = first_float_tensor(output)
            if t is not None:
                copy, mask = comparable(t)
                seen[name] = Captured(copy, mask=mask)
                if module is model and fields and fields[0] is not None:
                    fields.append(next((n for n, v in fields[1].items() if v is t), ""))
        return record

    with instrumented(model, restore_rng=False) as hooks:  # hooks removed, modes restored in finally
        for name, module in model.named_modules():
            hooks.forward_hook(module, hook(name or "(model)"))
        yield seen


FP16_LOSS_SCALE = 2.0**16  # torch.amp.GradScaler's initial scale


def _fp16_backward(loss: torch.Tensor, model: nn.Module) -> None:
    """The backward of an fp16 side as fp16 training runs it: the loss scaled (GradScaler's
    initial 2^16, halved while the gradients overflow, as the scaler halves it on a skipped
    step), then the gradients unscaled. Without the scale, gradients below fp16's smallest
    values flush to zero in the half-precision backward, an error the user's training (which
    scales) does not have.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    scale = FP16_LOSS_SCALE
    while True:
        for p in params:
            p.grad = None
        (loss.float() * scale).backward(retain_graph=scale > 1.0)
        grads = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
        if not grads:
            return
        # float32 whatever the default dtype (a build() may set float64): the op takes no other.
        found_inf = torch.zeros(1, dtype=torch.float32, device=grads[0].device)
        inv_scale = torch.full((1,), 1.0 / scale, dtype=torch.float32, device=grads[0].device)
        # GradScaler's own fused check: unscales in place, and counts any Inf/NaN.
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        # Sync point (fp16 side, once per try): did this scale overflow?
        if not found_inf.item() or scale <= 1.0:
            return
        scale /= 2.0


# The precision settings of fp32 work on CUDA (torch's per-backend API; reading it never raises,
# where the legacy allow_tf32 flags can once the two APIs were mixed), and the modules each governs.
_TF32_SETTINGS: tuple[tuple[str, Callable[[], Any], tuple[type[nn.Module], ...]], ...] = (
    ("torch.backends.cudnn.conv", lambda: getattr(torch.backends.cudnn, "conv"),  # not in the stubs
     (nn.modules.conv._ConvNd,)),
    ("torch.backends.cudnn.rnn", lambda: getattr(torch.backends.cudnn, "rnn"), (nn.RNNBase,)),
    ("torch.backends.cuda.matmul", lambda: torch.backends.cuda.matmul, (nn.Module,)),
)


def tf32_settings(model: nn.Module, device: torch.device) -> tuple[str, ...]:
    """The fp32 precision settings in TF32 on CUDA that govern modules of ``model``.

    cuDNN convolutions default to TF32 on Ampere and later (10 mantissa bits, fp16's), so
    an "fp32" side computed so is not an IEEE fp32 reference. diff says so rather than change
    process-wide settings the user's build() may have chosen. Elsewhere (CPU): none.
    """
    if device.type != "cuda":
        return ()
    kinds = {type(m) for m in model.modules()}
    return tuple(name for name, backend, governs in _TF32_SETTINGS
                 if backend().fp32_precision == "tf32" and any(issubclass(k, governs) for k in kinds))


class VariantFailed(RuntimeError):
    """One side's forward or backward raised; ``variant`` names it, ``reference_ran`` says whether
    the other side had run the same batch (then the variant itself is what this device lacks).
    The message ends with the user's line that raised, when it is the user's code."""

    def __init__(self, variant: str, error: Exception, reference_ran: bool) -> None:
        at = user_location(error)
        super().__init__(exception_text(error).rstrip(". ") + (f" (at {at})" if at else ""))
        self.variant, self.error, self.reference_ran = variant, error, reference_ran


def _run_side(name: str, side: _Side, scenario: Scenario, batch: Batch,
              reference_ran: bool) -> tuple[dict[str, Captured], float, list[Any]]:
    try:
        return _run(side, scenario, batch)
    except Exception as exc:  # the user's forward and loss may raise anything: said as this side's failure
        raise VariantFailed(name, exc, reference_ran) from exc


def _run(side: _Side, scenario: Scenario, batch: Batch) -> tuple[dict[str, Captured], float, list[Any]]:
    grad = torch.enable_grad() if side.trains else torch.no_grad()
    fields: list[Any] = []
    with _capture(side.model, fields) as seen, grad:
        _, value = forward_loss(scenario, batch, side.model, autocast=side.autocast)
        loss = value.total
        if side.trains and side.autocast is torch.float16:
            _fp16_backward(loss, side.model)
        elif side.trains:
            loss.float().backward()
    return seen, float(loss.detach().float()), fields  # sync point: one loss value per side per batch


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

    def result(self, name: str, floor_aa: float = 0.0) -> TensorDiff:
        """The diff; ``floor_aa`` (when > 0) is the ||A||^2 to divide by instead of A's own."""
        rel = math.sqrt(self.dd / self.aa) if self.aa > 0 else (0.0 if self.dd == 0 else math.inf)
        denom = math.sqrt(self.aa * self.bb)
        cos = self.ab / denom if denom > 0 else (1.0 if self.dd == 0 else 0.0)
        floored = floor_aa > 0
        return TensorDiff(name, self.kind, self.shape, math.sqrt(self.dd / floor_aa) if floored else rel,
                          self.max_abs, cos, self.bad_b, self.calls, self.bad_a,
                          floored=floored, raw_rel_error=rel if floored else None)


def _stats(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sums over the positions finite on both sides (and in ``mask``), plus each side's NaN/Inf count."""
    a, b = a.float(), b.to(a.device).float()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if mask is not None:
        # Padding is not data: neither its values nor a NaN in it count.
        mask = mask.to(a.device)
        fa, fb = fa | ~mask, fb | ~mask
    both = fa & fb if mask is None else fa & fb & mask
    a0, b0 = torch.where(both, a, 0.0), torch.where(both, b, 0.0)
    d = b0 - a0
    return torch.stack([(a0 * a0).sum(), (d * d).sum(), (a0 * b0).sum(), (b0 * b0).sum(),
                        d.abs().max() if d.numel() else a.new_zeros(()),
                        (~fa).sum().float(), (~fb).sum().float()])


def _align(ca: Captured, cb: Captured) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(A, B, mask of the positions to compare) on one shape, or None when they do not line up.

    Equal shapes compare everywhere both masks allow. A nested side (masked) and a dense
    side differ in shape when the longest entry is shorter than the dense length: both are
    zero-padded to the larger shape and only the nested side's real positions count.
    """
    a, b = ca.output, cb.output
    if a.shape == b.shape:
        masks = [m for m in (ca.mask, cb.mask) if m is not None]
        return a, b, (masks[0] & masks[1]) if len(masks) == 2 else (masks[0] if masks else None)
    if (ca.mask is None and cb.mask is None) or a.dim() != b.dim():
        return None
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))

    def grow(t: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        for have, want in zip(reversed(t.shape), reversed(shape)):
            pad += [0, want - have]
        return torch.nn.functional.pad(t, pad)

    ma = ca.mask if ca.mask is not None else torch.ones_like(a, dtype=torch.bool)
    mb = cb.mask if cb.mask is not None else torch.ones_like(b, dtype=torch.bool)
    return grow(a), grow(b), grow(ma) & grow(mb)


def _grad_floors(grads: dict[str, _Acc]) -> dict[str, float]:
    """Per parameter, the ||A||^2 its relative error is divided by instead of its own, or 0.

    A gradient whose RMS is below NEAR_ZERO of its reference scale (its layer's gradient
    RMS over the parameters of the module that owns it, or MODEL_SHARE of the model's,
    whichever is larger) is zero in truth, rounding noise in A: its error is then taken
    relative to that reference scale, the one the layer's other gradients live on. Any
    other gradient keeps ||B - A|| / ||A||, however small (a layer whose whole gradient
    vanishes is judged against itself).
    """
    def numel(acc: _Acc) -> int:
        return math.prod(acc.shape) if acc.shape else 1

    layer_aa: dict[str, list[float]] = {}
    for name, acc in grads.items():
        sums = layer_aa.setdefault(name.rpartition(".")[0], [0.0, 0.0])
        sums[0] += acc.aa
        sums[1] += numel(acc)
    total_aa = sum(v[0] for v in layer_aa.values())
    total_n = sum(v[1] for v in layer_aa.values())
    model_ms = total_aa / total_n if total_n else 0.0
    floors = {}
    for name, acc in grads.items():
        aa, n = layer_aa[name.rpartition(".")[0]]
        reference_ms = max(aa / n if n else 0.0, MODEL_SHARE ** 2 * model_ms)
        near_zero = acc.aa < NEAR_ZERO ** 2 * reference_ms * numel(acc)
        floors[name] = reference_ms * numel(acc) if near_zero else 0.0
    return floors


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
        if v not in diff_variants():
            raise UsageError(f"unknown variant {v!r}; expected one of {', '.join(diff_variants())}.")
    if a == b:
        raise UsageError(f"compare two different variants (got {a} twice), e.g. --a fp32 --b amp.")
    if batches < 1:
        raise UsageError(f"--batches must be >= 1, got {batches}.")
    if not threshold > 0:
        raise UsageError(f"--threshold must be > 0, got {threshold}.")
    dev = resolve_device(device)
    first, second = seeded_build(source, dev), seeded_build(source, dev)  # identical weights, seeded or not
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
        for side in (side_a, side_b):
            side.model.zero_grad(set_to_none=True)
        seen_a, la, fields = _run_side(a, side_a, first, batch, reference_ran=False)
        seen_b, lb, _ = _run_side(b, side_b, second, batch, reference_ran=True)
        loss_a += la / len(data)
        loss_b += lb / len(data)
        aligned = {n: _align(seen_a[n], seen_b[n]) for n in seen_a if n in seen_b}
        names = [n for n, pair in aligned.items() if pair is not None]
        if not notes:
            skipped = sorted(set(seen_a) ^ set(seen_b))
            if skipped:
                notes.append(f"not compared (only one side produced them): {', '.join(skipped[:6])}"
                             + (" …" if len(skipped) > 6 else ""))
            reshaped = [n for n, pair in aligned.items() if pair is None]
            if reshaped:
                notes.append(f"not compared (the output shapes differ): {', '.join(reshaped[:6])}"
                             + (" …" if len(reshaped) > 6 else ""))
            padded = [n for n in names if seen_a[n].mask is not None or seen_b[n].mask is not None]
            if padded:
                notes.append(f"nested outputs compared zero-padded, padding left out: {', '.join(padded[:6])}"
                             + (" …" if len(padded) > 6 else ""))
            tf32 = tf32_settings(side_a.model, dev) if None in (side_a.autocast, side_b.autocast) else ()
            if tf32:
                notes.append(f"the fp32 side computed in TF32 where {', '.join(tf32)} is 'tf32' (cuDNN's "
                             "default for convolutions): not an IEEE fp32 reference; for one, set "
                             "<setting>.fp32_precision = 'ieee' in build()")
            wide = _float64_under_autocast(side_a, side_b)
            if wide:
                notes.append(f"the model is float64 and autocast leaves float64 as it is: the {wide} side "
                             "computed in float64 too, so no precision difference can show; build the model "
                             "in float32 (no torch.set_default_dtype(torch.float64) in build()) to compare")
            if len(fields) == 3 and fields[0] is not None:
                notes.append(f"the model computes its own loss ({fields[0]}): the (model) row compares "
                             f"outputs.{fields[2] or '?'}, what it computed")
        pairs = [(n, *aligned[n]) for n in names]  # type: ignore[misc]
        if side_a.trains:
            params_b = dict(side_b.model.named_parameters())
            for n, p in side_a.model.named_parameters():
                q = params_b.get(n)
                if p.grad is not None and q is not None and q.grad is not None:
                    pairs.append((f"grad:{n}", comparable(p.grad)[0], comparable(q.grad)[0], None))
        if not pairs:
            continue
        # Sync point: one device->host transfer per batch, all modules and gradients at once.
        rows = torch.stack([_stats(x, y, m) for _, x, y, m in pairs]).tolist()
        for (n, x, _, _), row in zip(pairs, rows):
            if n.startswith("grad:"):
                acc = grads.setdefault(n[5:], _Acc("grad", tuple(x.shape), 1))
            else:
                if n not in layers:
                    order.append(n)
                    kind = type(modules.get("" if n == "(model)" else n, side_a.model)).__name__
                    layers[n] = _Acc(kind, tuple(x.shape), seen_a[n].calls)
                acc = layers[n]
            acc.add(row)
    floors = _grad_floors(grads)
    return Divergence(
        scenario=source.label, device=str(dev), a=a, b=b, batches=len(data), threshold=threshold,
        layers=tuple(layers[n].result(n) for n in order),
        grads=tuple(acc.result(n, floors[n]) for n, acc in grads.items()),
        loss_a=loss_a, loss_b=loss_b, notes=tuple(notes),
    )
