"""Hooks on every module: forward output stats and output-gradient norms, batched.

Design (see ../shared/ENVIRONMENT.md for the measurements behind it):

* A forward pre-hook and a forward hook on every module from
  ``named_modules()`` (the root included, as ``""``). Gradients are watched
  with TENSOR hooks registered on each output from inside the forward hook:
  full backward hooks break on in-place modules (``ReLU(inplace=True)``
  after BatchNorm) and tensor hooks do not.
* Every reduction stays on the device as a small tensor; the phase ends with
  ``torch.stack`` and ONE ``.tolist()`` (the only host-device sync of the
  phase), whatever the number of layers.
* Per tensor: ``sum`` and ``aminmax`` over the whole tensor (one pass each,
  the cheap reductions on CPU; a NaN anywhere turns min/max into NaN, an Inf
  shows in min or max, so finiteness is exact); std, zero fraction, NaN/Inf
  counts and saturation on an evenly strided sample of ``sample_size``
  elements (``std``/``var_mean`` over a whole activation costs several
  passes). ReLU-family outputs add one ``amax`` over the batch for dead units.
* NaN/Inf root cause: each call remembers whether its inputs were finite,
  reusing the finiteness already computed for the tensor that produced them
  (looked up by identity and version, so in-place modules are handled), and
  which call produced each input, so backward can tell where a gradient
  first turned non-finite.

A module called several times in one forward (a shared ReLU) contributes one
*call* per use; ModuleStats reports the LAST call and the number of calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# Layout of the per-call forward stats vector.
(F_SUM, F_MIN, F_MAX, F_STD, F_ZERO, F_NAN, F_INF, F_SAMPLE_N, F_IN_FINITE, F_DEAD, F_SAT) = range(11)
F_WIDTH = 11

# Outputs exactly zero for negative inputs: a unit can die.
RELU_FAMILY: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)
# Bounded outputs that saturate, with their bounds.
SATURATING: dict[type[nn.Module], tuple[float, float]] = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0)}

_NAN = float("nan")


def first_float_tensor(value: Any) -> torch.Tensor | None:
    """The first floating-point tensor in an output: Tensor, or nested tuple/list/dict.

    LSTM/GRU return ``(output, (h, c))``: this picks ``output``.
    """
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else None
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_float_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return first_float_tensor(list(value.values()))
    return None


def float_tensors(values: Iterable[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for v in values:
        if isinstance(v, torch.Tensor):
            if v.is_floating_point():
                out.append(v)
        elif isinstance(v, (tuple, list)):
            out.extend(float_tensors(v))
    return out


def strided_sample(t: torch.Tensor, size: int) -> torch.Tensor:
    """At most ``size`` evenly strided elements of ``t``, flattened."""
    flat = t.reshape(-1)
    n = flat.numel()
    if n <= size:
        return flat
    # Contiguous copy of a few thousand elements: reductions over a strided view are
    # several times slower than the copy itself.
    return flat[:: (n + size - 1) // size].contiguous()


@dataclass
class CallInfo:
    """Host-side facts about one module call (no sync needed to know them)."""

    index: int
    name: str
    module: nn.Module
    shape: tuple[int, ...] = ()
    dtype: str = ""
    device: str = ""
    numel: int = 0
    nbytes: int = 0
    sampled: bool = False
    measured: bool = False  # an output tensor was summarised
    producers: tuple[int, ...] = ()  # calls whose outputs fed this call
    input_flags: list[torch.Tensor] = field(default_factory=list)
    is_leaf: bool = True
    out_id: int | None = None


@dataclass
class _Cached:
    tensor: torch.Tensor  # held so the id cannot be reused during the phase
    version: int
    finite: torch.Tensor  # 0-d float: 1.0 finite, 0.0 not
    producer: int | None


class ActivationProbe:
    """Attach to a model; collect batched forward and output-gradient stats per step."""

    def __init__(self, model: nn.Module, sample_size: int = 4096) -> None:
        self.model = model
        self.sample_size = sample_size
        self.names: dict[nn.Module, str] = {}
        for name, module in model.named_modules():
            # A module registered under two names keeps the first (as named_modules does).
            self.names.setdefault(module, name)
        self._leaf = {m: not any(True for _ in m.children()) for m in self.names}
        self._handles: list[Any] = []
        self.active = False  # measuring this forward
        self.generation = 0  # tensor hooks from an older step do nothing
        self.calls: list[CallInfo] = []
        self.vectors: list[torch.Tensor] = []
        self.grad_calls: list[int] = []  # backward firing order
        self.grad_norms: list[torch.Tensor] = []
        self._cache: dict[int, _Cached] = {}
        self._pending_inputs: dict[int, list[tuple[tuple[int, ...], list[torch.Tensor]]]] = {}
        self.execution_order: list[str] = []
        self._seen: set[str] = set()
        self.seconds = 0.0  # time spent inside hooks this phase
        self.model_output_call: int | None = None

    # -- lifecycle ----------------------------------------------------------------
    def attach(self) -> None:
        if self._handles:
            return
        for module in self.names:
            self._handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.reset()
        self.generation += 1

    def begin_forward(self, measure: bool) -> None:
        self.reset()
        self.generation += 1
        self.active = measure

    def reset(self) -> None:
        self.active = False
        self.calls = []
        self.vectors = []
        self.grad_calls = []
        self.grad_norms = []
        self._cache.clear()
        self._pending_inputs.clear()
        self.seconds = 0.0
        self.model_output_call = None

    def end_forward(self) -> None:
        # Inputs and outputs are kept alive by autograd as needed; drop our references.
        self._cache.clear()
        self._pending_inputs.clear()
        self.active = False

    # -- hooks ------------------------------------------------------------------------
    def _finite_flag(self, t: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        cached = self._cache.get(id(t))
        if cached is not None and cached.tensor is t and cached.version == t._version:
            return cached.finite, cached.producer
        # A tensor no module produced (the batch, or a functional op in a forward()).
        mn, mx = torch.aminmax(t.detach())
        flag = (torch.isfinite(mn) & torch.isfinite(mx)).to(torch.float32)
        self._cache[id(t)] = _Cached(t, t._version, flag, None)
        return flag, None

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        name = self.names.get(module)
        if name is None:
            return
        if name not in self._seen:
            self._seen.add(name)
            self.execution_order.append(name)
        if not self.active:
            return
        start = time.perf_counter()
        with torch.no_grad():
            flags: list[torch.Tensor] = []
            producers: list[int] = []
            for t in float_tensors(args):
                flag, producer = self._finite_flag(t)
                flags.append(flag)
                if producer is not None:
                    producers.append(producer)
        self._pending_inputs.setdefault(id(module), []).append((tuple(producers), flags))
        self.seconds += time.perf_counter() - start

    def _post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.active:
            return
        name = self.names.get(module)
        if name is None:
            return
        start = time.perf_counter()
        pending = self._pending_inputs.get(id(module))
        producers, flags = pending.pop() if pending else ((), [])
        call = CallInfo(len(self.calls), name, module, producers=producers, is_leaf=self._leaf[module])
        self.calls.append(call)
        out = first_float_tensor(output)
        with torch.no_grad():
            if flags:
                in_finite = torch.stack(flags).amin()
            else:
                in_finite = torch.ones((), device=out.device if out is not None else "cpu")
            if out is None:
                vec = torch.full((F_WIDTH,), _NAN, device=in_finite.device)
                vec[F_IN_FINITE] = in_finite
            else:
                vec = self._summarise(module, out.detach(), in_finite, call)
                finite = (torch.isfinite(vec[F_MIN]) & torch.isfinite(vec[F_MAX])).to(torch.float32)
                self._cache[id(out)] = _Cached(out, out._version, finite, call.index)
                call.out_id = id(out)
                if out.requires_grad:
                    gen = self.generation
                    out.register_hook(lambda g, i=call.index, gen=gen: self._grad_hook(g, i, gen))
        self.vectors.append(vec)
        if module is self.model:
            self.model_output_call = call.index
        self.seconds += time.perf_counter() - start

    def _summarise(self, module: nn.Module, t: torch.Tensor, in_finite: torch.Tensor, call: CallInfo) -> torch.Tensor:
        call.shape = tuple(t.shape)
        call.dtype = str(t.dtype).replace("torch.", "")
        call.device = str(t.device)
        call.numel = t.numel()
        call.nbytes = t.numel() * t.element_size()
        call.measured = True
        if t.numel() == 0:
            vec = torch.full((F_WIDTH,), _NAN, device=t.device)
            vec[F_IN_FINITE] = in_finite
            vec[F_NAN] = 0
            vec[F_INF] = 0
            vec[F_SAMPLE_N] = 0
            return vec
        f32 = torch.float32
        total = t.sum(dtype=f32)
        mn, mx = torch.aminmax(t)
        sample = strided_sample(t, self.sample_size).to(f32)
        call.sampled = sample.numel() < t.numel()
        n = sample.numel()
        std = sample.std(correction=0)
        zero = (sample == 0).sum(dtype=f32)
        nan = torch.isnan(sample).sum(dtype=f32)
        inf = torch.isinf(sample).sum(dtype=f32)
        dead = torch.full((), _NAN, device=t.device)
        sat = torch.full((), _NAN, device=t.device)
        if isinstance(module, RELU_FAMILY) and t.dim() >= 2:
            # A unit (feature of a 2-D output, channel of N,C,... outputs) is dead when
            # it is zero for every sample and position of the batch.
            dims = tuple(d for d in range(t.dim()) if d != (t.dim() - 1 if t.dim() == 2 else 1))
            dead = (t.amax(dim=dims) <= 0).to(f32).mean()
        else:
            for kind, (lo, hi) in SATURATING.items():
                if isinstance(module, kind):
                    band = 1e-3 * (hi - lo)
                    sat = ((sample <= lo + band) | (sample >= hi - band)).to(f32).mean()
                    break
        return torch.stack([
            total, mn.to(f32), mx.to(f32), std, zero / n, nan, inf,
            in_finite.new_full((), float(n)).to(t.device), in_finite.to(t.device), dead, sat,
        ])

    def _grad_hook(self, grad: torch.Tensor, call_index: int, generation: int) -> None:
        if generation != self.generation:
            return
        start = time.perf_counter()
        with torch.no_grad():
            # The norm is non-finite exactly when the gradient holds a NaN or an Inf.
            self.grad_norms.append(torch.linalg.vector_norm(grad.detach(), dtype=torch.float32))
        self.grad_calls.append(call_index)
        self.seconds += time.perf_counter() - start

    # -- batched results ------------------------------------------------------------------
    def stacked_forward(self) -> torch.Tensor | None:
        """All calls' stats as one (calls, F_WIDTH) tensor on the device, or None."""
        if not self.vectors:
            return None
        device = self.vectors[0].device
        return torch.stack([v.to(device) for v in self.vectors])

    def stacked_grads(self) -> torch.Tensor | None:
        if not self.grad_norms:
            return None
        device = self.grad_norms[0].device
        return torch.stack([g.to(device) for g in self.grad_norms])
