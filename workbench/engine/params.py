"""Per-parameter gradient, weight and update stats, batched into one transfer per phase."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from workbench.engine.probe import (
    SampleIndex,
    flat_moments,
    nonfinite_counts,
    real_values,
    stack_f32,
)
from workbench.engine.records import ParamStats

# Layout of the per-parameter gradient vector.
(G_NORM, G_MEAN, G_ABS_MAX, G_STD, G_SAMPLE_N, G_WEIGHT) = range(6)


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


def grad_stats_tensor(refs: list[ParamRef], sampler: SampleIndex) -> tuple[torch.Tensor | None, list[int]]:
    """(P_with_grad, 6) stats on the device (G_* columns), and the indexes of refs that had a grad.

    The 2-norm and the abs max are exact (``_foreach_norm``, one fused launch for all
    parameters, and ``_abs_maxes``; NaN propagates through both, an Inf shows in
    both); mean and std come from a fixed sample (exact for gradients of up to
    ``sampler.size`` elements), reduced for all parameters at once. NaN/Inf counts
    are exact and computed only when the abs max is non-finite (param_stats_from_rows).
    """
    with_grad = [i for i, r in enumerate(refs) if r.param.grad is not None]
    if not with_grad:
        return None, with_grad
    with torch.no_grad():
        return _grad_stats(refs, with_grad, sampler), with_grad


def _grad_stats(refs: list[ParamRef], with_grad: list[int], sampler: SampleIndex) -> torch.Tensor:
    grads = [_grad_values(refs[i].param) for i in with_grad]
    weights: list[torch.Tensor] = [refs[i].param for i in with_grad]
    device = grads[0].device
    grad_norms = stack_f32(torch._foreach_norm(grads), device)
    abs_max = _abs_maxes(grads, device)
    weight_norms = stack_f32(torch._foreach_norm(weights), device)
    # Gradients are not modified before this phase ends: the samples may be views.
    samples = [sampler.take_flat(g) for g in grads]
    n = sampler.lengths(tuple(t.numel() for t in samples), device)
    mean, std = flat_moments(samples, n)
    return torch.stack([grad_norms, mean, abs_max, std, n, weight_norms], dim=1)


def _abs_maxes(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Exact max |x| per tensor (NaN if any NaN, Inf if any Inf), as one (P,) float32 tensor."""
    if device.type != "cpu":
        # One fused launch for every tensor: launches are what cost on an accelerator.
        return stack_f32(torch._foreach_norm(tensors, float("inf")), device)
    # On CPU the inf-norm takes a slow path (about 10x an aminmax per tensor, measured on
    # cnn_image's gradients); max(-min, max) is the same number and NaN propagates.
    zero = torch.zeros((), device=device)
    lows, highs = zip(*(torch.aminmax(t) if t.numel() else (zero, zero) for t in tensors))
    return torch.maximum(stack_f32(highs, device), stack_f32(lows, device).neg())


def total_grad_norm_tensor(refs: list[ParamRef]) -> torch.Tensor | None:
    with torch.no_grad():
        grads = [_grad_values(r.param) for r in refs if r.param.grad is not None]
        if not grads:
            return None
        return torch.linalg.vector_norm(stack_f32(torch._foreach_norm(grads)))


def param_stats_from_rows(refs: list[ParamRef], rows: list[list[float]], with_grad: list[int]) -> list[ParamStats]:
    by_index = dict(zip(with_grad, rows))
    # Exact NaN/Inf counts of the gradients whose abs max is non-finite (rare: one extra sync then).
    bad = [i for i in with_grad if not math.isfinite(by_index[i][G_ABS_MAX])]
    with torch.no_grad():
        counts = dict(zip(bad, nonfinite_counts([_grad_values(refs[i].param) for i in bad])))
    out: list[ParamStats] = []
    for i, ref in enumerate(refs):
        shape = tuple(ref.param.shape)
        row = by_index.get(i)
        if row is None:
            out.append(ParamStats(ref.name, ref.module, shape, None, None, None, None, None, None,
                                  None, has_grad=False))
            continue
        nan, inf, _ = counts.get(i, (0.0, 0.0, 0.0))
        out.append(ParamStats(
            name=ref.name, module=ref.module, shape=shape, grad_norm=row[G_NORM],
            grad_mean=row[G_MEAN], grad_std=row[G_STD], grad_abs_max=row[G_ABS_MAX],
            grad_nan=int(nan), grad_inf=int(inf), weight_norm=row[G_WEIGHT],
        ))
    return out
