"""Per-parameter gradient, weight and update stats, batched into one transfer per phase."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.engine.probe import (
    nonfinite_counts,
    real_values,
    std_of,
    stack_f32,
)
from workbench.engine.records import ParamStats, build



@dataclass(frozen=True)
class ParamRef:
    name: str
    module: str
    param: nn.Parameter


def param_refs(model: nn.Module) -> list[ParamRef]:
    """Trainable parameters with their qualified and owning-module names (shared ones once)."""
    refs: list[ParamRef] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            module, _, _ = name.rpartition(".")
            refs.append(ParamRef(name, module, p))
    return refs


def param_owners(model: nn.Module) -> dict[int, str]:
    """Each parameter (by id) -> the qualified name that owns it: the first one registered.

    A tied weight (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) is one tensor
    under two names; ``named_parameters`` lists it once, under this owner.
    """
    owners: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), name)
    return owners


def own_and_shared(module: nn.Module, prefix: str, owners: dict[int, str]) -> tuple[list[nn.Parameter], list[str]]:
    """(``module``'s own parameters, owner names of those it shares with another module).

    "Own" means directly registered on it and owned under its name: a per-layer total made
    of these counts a tied weight once, where its owner is.
    """
    own: list[nn.Parameter] = []
    shared: list[str] = []
    for name, p in module.named_parameters(recurse=False, remove_duplicate=False):
        qualified = f"{prefix}.{name}" if prefix else name
        owner = owners.get(id(p), qualified)
        if owner == qualified:
            own.append(p)
        elif owner not in shared:
            shared.append(owner)
    return own, shared


def owned_count(module: nn.Module, prefix: str, owners: dict[int, str]) -> int:
    """Elements of the parameters under ``module`` that it owns (its subtree, ``prefix``).

    A tied weight owned outside the subtree (``lm_head.weight`` is ``transformer.wte``'s)
    is left out, so per-layer totals add up to the model's total.
    """
    inside = prefix + "."
    return sum(p.numel() for p in module.parameters() if not prefix or owners.get(id(p), inside).startswith(inside))


def _grad_values(p: nn.Parameter) -> torch.Tensor:
    """The gradient as a dense tensor of its values.

    A sparse gradient (nn.Embedding(sparse=True)) is summarised over its stored values:
    norms and the abs max are the same as the full tensor's, mean/std describe the rows
    the batch touched. A complex gradient is summarised through its magnitudes |g| (same
    norm and abs max; the mean and std are of |g|), since min/max have no complex kernel.
    """
    # Callers run under torch.no_grad(), so no .detach() per parameter (a gradient made with
    # create_graph=True builds no graph there either).
    g = p.grad
    assert g is not None
    return real_values(g.coalesce().values() if g.is_sparse else g)


@dataclass(frozen=True, slots=True)
class GradRow:
    """One parameter's gradient (and weight) as the backward's one transfer read it."""

    norm: float  # exact 2-norm (NaN/Inf when the gradient holds one)
    mean: float  # exact, from the gradient's sum
    std: float  # exact, from the sum and the 2-norm
    abs_max: float  # exact
    weight_norm: float


@dataclass(frozen=True)
class GradReadings:
    """The 0-d device tensors a measured backward reads for its parameters, to be stacked with
    the phase's other numbers into its one transfer; :meth:`rows` decodes them."""

    scalars: list[torch.Tensor]
    with_grad: list[int]  # indexes into the refs of the parameters that have a gradient
    lengths: tuple[int, ...]  # each gradient's element count
    split_abs: bool  # the abs max came as (min, max) pairs (CPU), not as inf-norms

    def rows(self, values: Sequence[float]) -> list[GradRow]:
        """``values``: the floats of ``scalars``, in order. Arithmetic on the host: a handful of
        tiny device operations per phase cost more (about 5 us each on CPU) than the data."""
        p = len(self.with_grad)
        blocks = [values[k * p:(k + 1) * p] for k in range(len(values) // p)]
        abs_max: Sequence[float]
        if self.split_abs:
            norms, lows, highs, weights, sums = blocks
            abs_max = [max(-lo, hi) if not (math.isnan(lo) or math.isnan(hi)) else math.nan
                       for lo, hi in zip(lows, highs)]
        else:
            norms, abs_max, weights, sums = blocks
        out = []
        for norm, amax, w, total, n in zip(norms, abs_max, weights, sums, self.lengths):
            mean = total / n
            # Unshifted: gradients centre near zero, so E[g^2] - E[g]^2 loses no precision.
            out.append(GradRow(norm, mean, std_of(mean, norm * norm / n), amax, w))
        return out


_HALF = frozenset((torch.float16, torch.bfloat16))


def norms_f32(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norm of each tensor (``_foreach_norm``: one fused launch), accumulated in float32
    when there are 16-bit tensors: an fp16 norm is inf past 65504 and a bf16 one keeps about
    three digits. (float32 output from float64 input would be narrowing, which it refuses.)"""
    dtypes = {t.dtype for t in tensors}
    if dtypes & _HALF and torch.float64 not in dtypes:
        return list(torch._foreach_norm(tensors, 2, dtype=torch.float32))
    return list(torch._foreach_norm(tensors))


def abs_max_by_aminmax(device: torch.device) -> bool:
    """Whether a gradient's abs max is read as (min, max) on ``device`` (CPU) rather than as its
    inf-norm in one fused launch (an accelerator). A function, so a test can take either path."""
    return device.type == "cpu"


def grad_readings(refs: list[ParamRef]) -> GradReadings | None:
    """What a measured backward reads of every parameter with a gradient (None: none has one).

    All exact: the 2-norm (``_foreach_norm``, one fused launch for all parameters), the abs
    max (one ``aminmax`` each on CPU; NaN propagates through both, an Inf shows in both),
    and the sum, which with the 2-norm gives the mean and std on the host. One sum per
    gradient costs less than the sample it replaced (a view or a gather, then a sum and a
    norm of it): on these sizes an operation's fixed cost is more than its pass over the
    data. NaN/Inf counts are exact and computed only when the abs max is non-finite
    (param_stats_from_rows).
    """
    with_grad = [i for i, r in enumerate(refs) if r.param.grad is not None]
    if not with_grad:
        return None
    with torch.no_grad():
        grads = [_grad_values(refs[i].param) for i in with_grad]
        weights: list[torch.Tensor] = [refs[i].param for i in with_grad]
        scalars = norms_f32(grads)
        # An empty gradient has no inf-norm (_foreach_norm refuses it): (min, max) then, for all.
        split_abs = abs_max_by_aminmax(grads[0].device) or any(g.numel() == 0 for g in grads)
        if split_abs:
            # On CPU the inf-norm takes a slow path (about 10x an aminmax per tensor, measured
            # on cnn_image's gradients); max(-min, max) is the same number and NaN propagates.
            zero = torch.zeros((), device=grads[0].device)
            lows, highs = zip(*(torch.aminmax(g) if g.numel() else (zero, zero) for g in grads))
            scalars += [*lows, *highs]
        else:
            # One fused launch for every tensor: launches are what cost on an accelerator.
            scalars += torch._foreach_norm(grads, float("inf"))
        scalars += norms_f32(weights)
        scalars += [g.sum(dtype=torch.float32) for g in grads]
    return GradReadings(scalars, with_grad, tuple(max(g.numel(), 1) for g in grads), split_abs)


def total_grad_norm_tensor(refs: list[ParamRef]) -> tuple[torch.Tensor | None, int]:
    """(the 2-norm of every gradient together as a device tensor, how many parameters have a
    gradient): an unmeasured step's one number, and whether any parameter went without one."""
    with torch.no_grad():
        grads = [g for r in refs if (g := r.param.grad) is not None]
        if not grads:
            return None, 0
        try:
            # Dense gradients as they are (a complex one's norm is its magnitudes' already);
            # no per-gradient check of the layout on this path, which runs every step.
            norms = norms_f32(grads)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:  # a sparse gradient (no fused norm for it): the stored values
            norms = norms_f32([_grad_values(r.param) for r in refs if r.param.grad is not None])
        return torch.linalg.vector_norm(stack_f32(norms)), len(grads)


def param_stats_from_rows(refs: list[ParamRef], rows: list[GradRow], with_grad: list[int]) -> list[ParamStats]:
    by_index = dict(zip(with_grad, rows))
    # Exact NaN/Inf counts of the gradients whose abs max is non-finite (rare: one extra sync then).
    bad = [i for i in with_grad if not math.isfinite(by_index[i].abs_max)]
    with torch.no_grad():
        counts = dict(zip(bad, nonfinite_counts([_grad_values(refs[i].param) for i in bad])))
    out: list[ParamStats] = []
    for i, ref in enumerate(refs):
        shape = tuple(ref.param.shape)
        row = by_index.get(i)
        if row is None:
            out.append(ParamStats(name=ref.name, module=ref.module, shape=shape, grad_norm=None, grad_mean=None,
                                  grad_std=None, grad_abs_max=None, grad_nan=None, grad_inf=None,
                                  weight_norm=None, has_grad=False))  # rare: the plain constructor
            continue
        nan, inf, _ = counts.get(i, (0.0, 0.0, 0.0))
        out.append(build(
            ParamStats, name=ref.name, module=ref.module, shape=shape, grad_norm=row.norm,
            grad_mean=row.mean, grad_std=row.std, grad_abs_max=row.abs_max,
            grad_nan=int(nan), grad_inf=int(inf), weight_norm=row.weight_norm,
        ))
    return out


def lr_values(groups: Iterable[Mapping[str, Any]], default: float = math.nan) -> tuple[float, ...]:
    """Each param group's learning rate as a float (``default`` where a group has none).

    An lr may be a tensor (capturable optimizers, schedules written for torch.compile). On
    the CPU reading it is immediate; on an accelerator it is a transfer, so every such lr
    is read in one, instead of one wait for the device per group.
    """
    values: list[Any] = [g.get("lr", default) for g in groups]
    on_device = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor) and v.device.type != "cpu"]
    if on_device:
        tensors = [values[i].detach().reshape(()).float() for i in on_device]
        try:
            stacked = torch.stack(tensors)
        except RuntimeError:  # on several devices: each its own transfer
            read = [float(t) for t in tensors]
        else:
            read = stacked.tolist()  # Sync point (an lr held on an accelerator only): all of them at once
        for i, value in zip(on_device, read):
            values[i] = value
    return tuple(float(v) for v in values)
