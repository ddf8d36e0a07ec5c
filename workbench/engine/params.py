"""Per-parameter gradient, weight and update stats, batched into one transfer per phase."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from workbench.engine.probe import S_MEAN, S_NAN, S_INF, S_STD, SampleIndex, sample_reductions
from workbench.engine.records import ParamStats

# Layout of the per-parameter gradient vector.
(G_NORM, G_MEAN, G_ABS_MAX, G_STD, G_NAN, G_INF, G_SAMPLE_N, G_WEIGHT) = range(8)


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


def _grad_values(p: nn.Parameter) -> torch.Tensor:
    """The gradient as a dense tensor of its values.

    A sparse gradient (nn.Embedding(sparse=True)) is summarised over its stored values:
    norms and the abs max are the same as the full tensor's, mean/std describe the rows
    the batch touched.
    """
    g = p.grad.detach()  # type: ignore[union-attr]
    return g.coalesce().values() if g.is_sparse else g


def grad_stats_tensor(refs: list[ParamRef], sampler: SampleIndex) -> tuple[torch.Tensor | None, list[int]]:
    """(P_with_grad, 8) stats on the device, and the indexes of refs that had a grad.

    The 2-norm and the abs max are exact (``_foreach_norm`` with ord 2 and inf:
    one fused launch each for all parameters; NaN propagates through both, an
    Inf shows in both); mean, std and NaN/Inf counts come from a fixed sample
    (exact for gradients of up to ``sampler.size`` elements), reduced for all
    parameters at once.
    """
    with_grad = [i for i, r in enumerate(refs) if r.param.grad is not None]
    if not with_grad:
        return None, with_grad
    grads = [_grad_values(refs[i].param) for i in with_grad]
    weights = [refs[i].param.detach() for i in with_grad]
    f32 = torch.float32
    device = grads[0].device
    grad_norms = torch.stack([n.to(device, f32) for n in torch._foreach_norm(grads)])
    abs_max = torch.stack([n.to(device, f32) for n in torch._foreach_norm(grads, float("inf"))])
    weight_norms = torch.stack([n.to(device, f32) for n in torch._foreach_norm(weights)])
    samples, lengths = [], []
    for g in grads:
        sample, real = sampler.take(g)
        samples.append(sample.to(device, f32))
        lengths.append(real)
    mask, n = sampler.mask(tuple(lengths), device)
    reduced = sample_reductions(torch.stack(samples), mask, n)  # (P, 5)
    stats = torch.stack([
        grad_norms, reduced[:, S_MEAN], abs_max, reduced[:, S_STD],
        reduced[:, S_NAN], reduced[:, S_INF], n, weight_norms,
    ], dim=1)
    return stats, with_grad


def total_grad_norm_tensor(refs: list[ParamRef]) -> torch.Tensor | None:
    grads = [_grad_values(r.param) for r in refs if r.param.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.to(torch.float32) for n in norms]))


def param_stats_from_rows(refs: list[ParamRef], rows: list[list[float]], with_grad: list[int]) -> list[ParamStats]:
    by_index = dict(zip(with_grad, rows))
    out: list[ParamStats] = []
    for i, ref in enumerate(refs):
        shape = tuple(ref.param.shape)
        row = by_index.get(i)
        if row is None:
            out.append(ParamStats(ref.name, ref.module, shape, None, None, None, None, None, None,
                                  None, has_grad=False))
            continue
        numel = max(ref.param.numel(), 1)
        abs_max = row[G_ABS_MAX]
        finite = math.isfinite(abs_max)
        scale = numel / max(row[G_SAMPLE_N], 1.0)
        nan = 0 if finite else max(int(round(row[G_NAN] * scale)), 1 if math.isnan(abs_max) else 0)
        inf = 0 if finite else max(int(round(row[G_INF] * scale)), 1 if math.isinf(abs_max) else 0)
        out.append(ParamStats(
            name=ref.name, module=ref.module, shape=shape, grad_norm=row[G_NORM],
            grad_mean=row[G_MEAN], grad_std=row[G_STD], grad_abs_max=abs_max,
            grad_nan=nan, grad_inf=inf, weight_norm=row[G_WEIGHT],
        ))
    return out
