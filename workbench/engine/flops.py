"""FLOP formulas torch.utils.flop_counter lacks, for the ops transformer-family models reach.

``FlopCounterMode`` (torch 2.13) counts matmul, convolution and the CUDA SDPA kernels.
On CPU, attention silently counts 0: ``F.scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, ``nn.MultiheadAttention`` in eval
mode to the fused ``aten._native_multi_head_attention``, a ``Linear`` fed a nested
tensor (``nn.TransformerEncoder`` with a padding mask, in eval mode) to ``aten.linear``
on the nested backend rather than to ``addmm``, and ``nn.LSTM`` to oneDNN's
``aten.mkldnn_rnn_layer`` (GRU and RNN decompose into matmuls and are counted). The formulas here are handed to one
``FlopCounterMode`` through ``custom_mapping`` (nothing is registered globally) and
follow flop_counter's conventions: 2 FLOPs per multiply-add, matmuls only, attention
counted dense (a causal mask is not subtracted, as torch's own SDPA formula does).

They take raw tensors (``_get_raw``), not shapes: flop_counter's shape wrapper reads
``.shape``, which a nested tensor does not have, so a nested input is counted entry by
entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

aten = torch.ops.aten


def _entries(t: torch.Tensor) -> list[tuple[int, ...]]:
    """The shapes of a nested tensor's entries, or the one shape of a dense tensor."""
    if t.is_nested:
        return [tuple(e.shape) for e in t.unbind()]  # views: metadata only
    return [tuple(t.shape)]


def attention_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
    """Q K^T and (softmax) V: 2*N*L*S*E + 2*N*L*S*Ev, summed over nested entries.

    N is the product of the leading dims (batch x heads), L the query length, S the key
    length, E the query/key head size, Ev the value head size. Grouped-query attention
    (fewer key heads) costs the same per query head, so N comes from the query.
    """
    total = 0
    for q, k, v in zip(_entries(query), _entries(key), _entries(value)):
        n = math.prod(q[:-2])
        length, e = q[-2], q[-1]
        s, ev = k[-2], v[-1]
        total += 2 * n * length * s * e + 2 * n * length * s * ev
    return total


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
          out_val: Any = None, **kwargs: Any) -> int:
    return attention_flops(query, key, value)


def _sdpa_backward(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: four matmuls of the forward's size.
    return 2 * attention_flops(query, key, value)


def _tokens(t: torch.Tensor, width: int) -> int:
    """Rows of a (..., width) tensor, nested or not: its element count over the last dim."""
    return t.numel() // width if width else 0


def _linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *args: Any,
            out_val: Any = None, **kwargs: Any) -> int:
    # Dense inputs never get here (aten.linear decomposes into mm/addmm, which torch
    # counts); only backends with their own linear kernel, the nested one above all.
    out_features, in_features = weight.shape
    return 2 * _tokens(input, in_features) * in_features * out_features


def _native_mha(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, embed_dim: int,
                num_head: int, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    d = embed_dim
    q_tokens, kv_tokens = _tokens(query, d), _tokens(key, d)
    projections = 2 * q_tokens * d * d + 2 * (2 * kv_tokens) * d * d + 2 * q_tokens * d * d  # q, k+v, out
    # Heads split D: over all heads the attention costs as one head of size D.
    return projections + attention_flops(query, key, value)


def _mkldnn_rnn_layer(input: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, *args: Any,
                      out_val: Any = None, **kwargs: Any) -> int:
    # One layer and direction of nn.LSTM on CPU (oneDNN): every token goes through the
    # input and the hidden matmul, (4H x I) and (4H x H); the gates' element-wise math is
    # not a matmul and is not counted, as for any other layer.
    return 2 * _tokens(input, input.shape[-1]) * (w_ih.numel() + w_hh.numel())


def _raw(fn: Callable[..., int]) -> Callable[..., int]:
    fn._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass tensors, not shapes
    return fn


def _mapping() -> dict[Any, Callable[..., int]]:
    ops: dict[str, Callable[..., int]] = {
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward,
        "_scaled_dot_product_fused_attention_overrideable": _sdpa,
        "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_backward,
        "_native_multi_head_attention": _native_mha,
        "linear": _linear,
        "mkldnn_rnn_layer": _mkldnn_rnn_layer,
    }
    mapping: dict[Any, Callable[..., int]] = {}
    for name, fn in ops.items():
        if not hasattr(aten, name):
            continue  # an op a future torch drops (or renames) is simply not counted, as before
        packet = getattr(aten, name)
        mapping[packet] = _raw(fn)  # FlopCounterMode counts by packet
        # ...but decides whether to decompose an op by its overload: one it has no formula
        # for is decomposed first, and aten.linear's decomposition reads .sizes(), which a
        # nested tensor does not have ("NestedTensorImpl doesn't support sizes").
        for overload in packet.overloads():
            mapping[getattr(packet, overload)] = mapping[packet]
    return mapping


EXTRA_FORMULAS: dict[Any, Callable[..., int]] = _mapping()
