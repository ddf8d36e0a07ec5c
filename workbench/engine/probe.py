"""Hooks on every module: forward output stats and output-gradient norms, batched.

Design (see ../shared/ENVIRONMENT.md for the measurements behind it):

* A forward pre-hook and a forward hook on every module from
  ``named_modules()`` (the root included, as ``""``). Gradients are watched
  with a pre-hook on the autograd node that made each output, registered from
  inside the forward hook (what a tensor hook does, for less): full backward
  hooks break on in-place modules (``ReLU(inplace=True)`` after BatchNorm)
  and these do not.
* Every reduction stays on the device as a small tensor; the phase ends with
  ``torch.stack`` and ONE ``.tolist()`` (the only host-device sync of the
  phase), whatever the number of layers.
* Per tensor, exactly one pass over the whole tensor: ``aminmax`` (a NaN
  anywhere turns min/max into NaN, an Inf shows in one of them, so min, max
  and finiteness are exact), or for ReLU-family outputs the per-unit ``amax``
  over the batch (dead units, exact max and finiteness). Mean, std, zero
  fraction, NaN/Inf counts and saturation come from a fixed-size sample of
  ``sample_size`` elements (``std``/``var_mean`` over a whole activation
  costs several passes on CPU), reduced for all calls at once.
* No pass at all for an output that is the same memory as a measured input
  (Flatten, reshape-only modules: contiguous, same start, size and dtype,
  unmodified since): it shares that call's stats, like a container returning
  its child's output does.
* NaN/Inf root cause: each call remembers whether its inputs were finite,
  reusing the finiteness already computed for the tensor that produced them
  (looked up by identity and version, so in-place modules are handled), and
  which call produced each input, so backward can tell where a gradient
  first turned non-finite.

A module called several times in one forward (a shared ReLU) contributes one
*call* per use; ModuleStats reports the LAST call and the number of calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.scenario.outputs import LOSS_FIELD, prediction_tensor


@dataclass(frozen=True, slots=True)
class OutputStats:
    """One call's output as the forward's one transfer read it.

    ``min``/``max`` are exact (NaN when the output holds a NaN); ``mean``, ``std`` and
    ``zero_fraction`` come from the call's sample of ``sample_n`` elements; ``nan``/``inf``
    are counted (in the sample) only for a non-finite output, else 0.
    """

    mean: float
    std: float
    min: float
    max: float
    zero_fraction: float
    nan: float
    inf: float
    sample_n: float
    dead_fraction: float | None = None  # ReLU family: units zero for the whole batch
    saturated_fraction: float | None = None  # Sigmoid/Tanh: outputs pinned at their bounds

    @property
    def finite(self) -> bool:
        return math.isfinite(self.min) and math.isfinite(self.max)


@dataclass(frozen=True, slots=True)
class CallStats:
    """What :meth:`ActivationProbe.decode_forward` says of one call (completion order)."""

    inputs_finite: bool  # every floating input of the call was finite
    output: OutputStats | None  # None: the call's output was not summarised (no float tensor)

# Outputs exactly zero for negative inputs: a unit can die.
RELU_FAMILY: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)
# Bounded outputs that saturate, with their bounds.
SATURATING: dict[type[nn.Module], tuple[float, float]] = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0)}


def measurable(t: torch.Tensor) -> bool:
    """A tensor whose values the instruments read: floating point or complex (as |z|)."""
    return t.is_floating_point() or t.is_complex()


def first_float_tensor(value: Any) -> torch.Tensor | None:
    """The first floating-point (or complex) tensor in an output: Tensor, or nested tuple/list/dict.

    LSTM/GRU return ``(output, (h, c))``: this picks ``output``. A mapping (a Hugging Face
    ``ModelOutput`` included) gives its prediction (``scenario.outputs.prediction_tensor``):
    a model that computes its own loss returns it first, but what the model computed is
    the logits. A nested tensor (``nn.TransformerEncoder``'s fast path with a padding
    mask) is returned as it is: see :func:`dense` and :func:`real_values`.
    """
    if isinstance(value, torch.Tensor):
        return value if measurable(value) else None
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_float_tensor(item)
            if found is not None:
                return found
    if isinstance(value, Mapping):
        found = prediction_tensor(value)
        if found is None:  # nested deeper, or nothing but the loss: the loss last
            found = first_float_tensor([v for k, v in value.items() if k != LOSS_FIELD])
        return found if found is not None else first_float_tensor(value.get(LOSS_FIELD))
    return None


def real_values(t: torch.Tensor) -> torch.Tensor:
    """The elements of ``t`` that hold data, as a tensor reductions accept.

    A nested tensor's flat buffer (no padding; reductions such as ``aminmax`` have no
    nested kernel); a complex tensor's magnitudes (``aminmax`` is not implemented for
    complex dtypes, and |z| is what saturates or overflows); any other tensor as it is.
    """
    if t.is_nested:
        t = t.contiguous().values()
    if t.is_complex():
        t = t.abs()
    return t


def padded_shape(t: torch.Tensor) -> tuple[int, ...]:
    """The shape of ``t``; for a nested tensor, the padded shape (the longest entry per dim)."""
    if not t.is_nested:
        return tuple(t.shape)
    parts = t.unbind()  # views: shape metadata only, no copy
    if not parts:
        return (0,)
    return (len(parts), *(max(int(p.shape[d]) for p in parts) for d in range(parts[0].dim())))


def dense(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(``t`` as a dense tensor, mask of its real positions or None).

    A nested tensor becomes its zero-padded form, with the mask saying which positions are
    padding (so a comparison leaves them out); any other tensor is returned unchanged.
    """
    if not t.is_nested:
        return t, None
    padded = torch.nested.to_padded_tensor(t, 0.0)
    mask = torch.nested.to_padded_tensor(torch.ones_like(t), 0.0) > 0
    return padded, mask


def float_tensors(values: Iterable[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for v in values:
        if isinstance(v, torch.Tensor):
            if measurable(v):
                out.append(v)
        elif isinstance(v, (tuple, list)):
            out.extend(float_tensors(v))
    return out


def dense_flat(t: torch.Tensor) -> torch.Tensor:
    """``t``'s elements as a 1-D tensor, in memory order, without a copy where one is not needed.

    A contiguous tensor gives its view; a permuted but gap-free one (``batch_first`` LSTM
    output, a transpose, channels-last) a flat view of the memory it fills, where
    ``reshape(-1)`` would copy it all in logical order. The same elements either way, so
    min/max and a sample of positions are unchanged; only an overlapping or gapped tensor
    (an expanded or sliced view) is copied.
    """
    if t.is_contiguous():
        return t.view(-1)
    n = t.numel()
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return t.reshape(-1)
        expected *= size
    return t.as_strided((n,), (1,), t.storage_offset())


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor built from Python numbers, copied to ``device`` without waiting for it.

    A plain ``.to("cuda")`` copies from pageable memory and then waits for the stream: every
    kernel already queued (the model's forward so far) finishes first, a hidden sync. From
    pinned memory the copy is queued like a kernel (torch's pinned-memory cache keeps the
    source until it has run). CPU and any other device: the ordinary copy.
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def stack_f32(tensors: Iterable[torch.Tensor], device: torch.device | None = None) -> torch.Tensor:
    """Same-shaped tensors stacked as float32 on ``device`` (default: the first one's).

    Only those of another dtype or device are converted: a ``.to`` that changes nothing still
    costs a dispatch, and these stacks gather one tensor per module or parameter every
    measured step.
    """
    items = list(tensors)
    dev = items[0].device if device is None else device
    f32 = torch.float32
    try:
        # One stack as they are (dtypes promote exactly), then one conversion: checking each
        # tensor's dtype and device from Python cost about 0.5 us apiece, hundreds per phase.
        out = torch.stack(items)
    except RuntimeError:  # on several devices (a model split across accelerators)
        return torch.stack([t if t.dtype == f32 and t.device == dev else t.to(dev, f32) for t in items])
    return out if out.dtype == f32 and out.device == dev else out.to(dev, f32)


class SampleIndex:
    """Fixed-size samples of flat tensors, so a phase's samples stack into one matrix.

    A tensor larger than ``size`` gives ``size`` elements at a fixed
    pseudo-random set of positions per tensor size (sorted, for locality): an
    even stride aliases with NCHW layouts (a stride of H*W samples one pixel
    of every plane). A smaller tensor is copied whole and padded with copies of
    its first element; its length is kept with the sample, so the padding never
    counts, and its stats are exact.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._cache: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._arange: dict[torch.device, torch.Tensor] = {}
        self._masks: dict[tuple[torch.device, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
        self._lengths: dict[tuple[torch.device, tuple[int, ...]], torch.Tensor] = {}

    def take(self, flat: torch.Tensor, n: int | None = None,
             device: torch.device | None = None) -> tuple[torch.Tensor, int]:
        """(a copy of ``size`` elements of the 1-D ``flat``, how many of them are real).

        ``n`` and ``device``: ``flat``'s element count and device, when the caller has read them.
        A small tensor is padded with copies of its FIRST element (not zeros): shifted by that
        element, the padding is exactly zero, so :func:`sample_sums` needs no mask pass. Either
        way it is one gather with an index cached per size: a fixed set of positions, or for a
        small tensor every position and then the first one repeated.
        """
        if n is None:
            n = flat.numel()
        key = (n, flat.device if device is None else device)
        idx = self._cache.get(key)
        if idx is None:
            idx = self._index(n, key[1])
        return flat.index_select(0, idx), min(n, self.size)

    def _index(self, n: int, device: torch.device) -> torch.Tensor:
        if n > self.size:
            g = torch.Generator().manual_seed(n)  # its own generator: the user's RNG is untouched
            idx = torch.randint(0, n, (self.size,), generator=g).sort().values
            if len(self._cache) > 512:  # shapes that change every step (variable lengths)
                self._cache.clear()
            # One host->device copy per tensor size (queued, not waited for), then reused.
            idx = to_device(idx, device)
        else:
            # Every position, then the first one again: made on the device from one kept
            # arange (no host copy for a new length, which variable-length batches give often).
            base = self._arange.get(device)
            if base is None:
                base = self._arange[device] = to_device(torch.arange(self.size), device)
            idx = base.masked_fill(base >= n, 0)
            small = [k for k in self._cache if k[0] <= self.size]
            if len(small) > 512:
                for k in small:
                    del self._cache[k]
        self._cache[(n, device)] = idx
        return idx

    def lengths(self, lengths: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """(rows,) float lengths on ``device``, cached per layout (no per-step host->device copy)."""
        key = (device, lengths)
        cached = self._lengths.get(key)
        if cached is None:
            cached = to_device(torch.tensor(lengths, dtype=torch.float32), device)
            if len(self._lengths) > 64:
                self._lengths.clear()
            self._lengths[key] = cached
        return cached

    def mask(self, lengths: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, size) bool mask of real elements and (rows,) float lengths, cached per layout.

        Cached: a new layout (a new sequence length) costs one queued host->device copy
        (:func:`to_device`, no wait for the device); a layout seen before costs nothing.
        """
        key = (device, lengths)
        cached = self._masks.get(key)
        if cached is None:
            n = self.lengths(lengths, device)
            mask = torch.arange(self.size, device=device)[None, :] < n[:, None]
            if len(self._masks) > 64:
                self._masks.clear()
            cached = (mask, n)
            self._masks[key] = cached
        return cached


def sample_sums(samples: torch.Tensor) -> torch.Tensor:
    """(rows, S) samples from :meth:`SampleIndex.take` -> (rows, 4): the row's first element,
    the sum and the 2-norm of the row shifted by it, and the row's count of non-zeros.

    :func:`sample_moments` turns them into mean, std and zero fraction on the host, after the
    phase's one transfer: the arithmetic there costs nothing, and each tiny device operation
    costs about 5 us on CPU. Shifted by its first element, a row's padding (copies of that
    element) is exactly zero, and E[d^2] - E[d]^2 keeps its precision for a row whose mean is
    far from zero (a saturated sigmoid). NaN/Inf counts are not here: they only matter for a
    non-finite tensor, which min/max already reveal, so ``nonfinite_counts`` computes them (and
    that row's exact zero count) on those rare steps.
    """
    first = samples[:, :1]
    shifted = samples - first
    nonzero = samples.sign().abs_().sum(dim=1)
    return torch.stack([first[:, 0], shifted.sum(dim=1), torch.linalg.vector_norm(shifted, dim=1), nonzero], dim=1)


def std_of(mean: float, mean_square: float) -> float:
    """sqrt(E[x^2] - E[x]^2), in double on the host: 0 where rounding leaves it a hair below
    zero, NaN when either moment is NaN."""
    var = mean_square - mean * mean
    return math.sqrt(var) if var > 0 else (math.nan if math.isnan(var) else 0.0)


def sample_moments(first: float, d_sum: float, d_norm: float, nonzero: float, length: int,
                   size: int) -> tuple[float, float, float]:
    """(mean, std, zero fraction) of a sample of ``length`` real elements padded to ``size``,
    from its :func:`sample_sums` row."""
    d_mean = d_sum / length
    std = std_of(d_mean, d_norm * d_norm / length)
    # Non-zeros of the whole row, less the padding's (which are zeros only when the first is).
    real_nonzero = nonzero - (size - length) * (first != 0)
    return first + d_mean, std, (length - real_nonzero) / length


def nonfinite_counts(tensors: list[torch.Tensor]) -> list[tuple[float, float, float]]:
    """(NaN count, Inf count, zero count) of each tensor.

    A deliberate extra device->host sync, made only on a step whose min/max already
    showed a NaN/Inf somewhere (never on a healthy step).
    """
    if not tensors:
        return []
    device = tensors[0].device
    counts = torch.stack([torch.stack([torch.isnan(t).sum(), torch.isinf(t).sum(), (t == 0).sum()]).to(device)
                          for t in tensors])
    return [(float(nan), float(inf), float(zero)) for nan, inf, zero in counts.tolist()]


_DOT_DTYPES = (torch.float32, torch.float64)  # an output gradient whose squared norm is one dot()
_DTYPE_NAMES: dict[torch.dtype, str] = {}
_DEVICE_NAMES: dict[torch.device, str] = {}


def _dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32`` (cached: str() of a dtype per call costs)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).replace("torch.", "")
    return name


def _device_name(device: torch.device) -> str:
    """``cuda:0`` for that device (cached like the dtype names: str() of a device costs too)."""
    name = _DEVICE_NAMES.get(device)
    if name is None:
        name = _DEVICE_NAMES[device] = str(device)
    return name


@dataclass(slots=True)
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
    measured: bool = False  # an output tensor was summarised (row = its position in the stats)
    row: int = -1
    producers: tuple[int, ...] = ()  # calls whose outputs fed this call
    external: tuple[int, ...] = ()  # inputs no module produced (rows of the external stats)
    is_leaf: bool = True
    out_id: int | None = None
    storage: int = 0  # data_ptr of the output's storage: views and pass-throughs share it
    storage_bytes: int = 0  # that storage's size, counted once however many outputs lie in it
    relu_row: int = -1  # position among ReLU-family calls (dead units)
    alias_of: int | None = None  # returned another call's output unchanged: shares its stats
    view_of: int | None = None  # returned a view of another call's output (same memory): shares its stats
    saturation: tuple[float, float] | None = None


@dataclass
class _Cached:
    tensor: torch.Tensor  # held so the id cannot be reused during the phase
    version: int
    producer: int | None  # call index, or None for an external input
    external: int | None  # row in the external stats


class ActivationProbe:
    """Attach to a model; collect batched forward and output-gradient stats per step.

    Per call, the hook launches only ``sum``, ``aminmax`` and one
    ``index_select`` (plus ``amax`` over the batch for ReLU-family outputs);
    everything else is computed once per phase on the stacked results.
    """

    def __init__(self, model: nn.Module, sample_size: int = 4096, saturation_band: float = 1e-3) -> None:
        self.model = model
        self.sample_size = sample_size
        # A Sigmoid/Tanh output within this share of its range from a bound counts as pinned
        # there (HealthThresholds.saturation_band).
        self.saturation_band = saturation_band
        self._sampler = SampleIndex(sample_size)
        self.names: dict[nn.Module, str] = {}
        for name, module in model.named_modules():
            # A module registered under two names keeps the first (as named_modules does).
            self.names.setdefault(module, name)
        self._leaf = {m: not any(True for _ in m.children()) for m in self.names}
        # What kind of output each module gives, decided once (isinstance per call costs).
        self._relu = {m: isinstance(m, RELU_FAMILY) for m in self.names}
        self._bounds = {m: next((b for k, b in SATURATING.items() if isinstance(m, k)), None) for m in self.names}
        self._handles: list[Any] = []
        self._attached = False
        self.active = False  # measuring this forward
        self.generation = 0  # tensor hooks from an older step do nothing
        self.execution_order: list[str] = []
        self._seen: set[str] = set()
        self._const_cache: dict[Any, tuple[torch.Tensor, ...]] = {}
        self._dirty = True
        self.model_output_call: int | None = None
        self.reset()

    # -- lifecycle ----------------------------------------------------------------
    def attach(self) -> None:
        """Hook every module now; each ``begin_forward`` then keeps the hooks for a measured forward
        and takes them off for one that takes no stats.

        A forward without stats thus runs with no hook at all (any hook sends every module call
        through torch's slow path, a fixed cost per module and step). Hooks another caller
        registers after ``attach`` run after the probe's as long as the forwards are measured.
        """
        self._attached = True
        self._install_hooks()

    def detach(self) -> None:
        self._attached = False
        self._remove_hooks()
        self.reset()
        self.generation += 1

    def _install_hooks(self) -> None:
        if self._handles:
            return
        for module in self.names:
            self._handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def begin_forward(self, measure: bool) -> None:
        if self._dirty:
            self.reset()
        else:  # nothing was captured since the last reset (an unmeasured step): only the clock
            self.seconds = 0.0
            self.model_output_call = None
        self.generation += 1
        self.active = measure and self._attached
        if self.active:
            self._dirty = True
            self._install_hooks()
        else:
            self._remove_hooks()

    def reset(self) -> None:
        self.active = False
        self._dirty = False  # set by a measured forward: its lists are filled until the next reset
        self.calls: list[CallInfo] = []
        self._mins: list[torch.Tensor] = []
        self._maxs: list[torch.Tensor] = []
        self._samples: list[torch.Tensor] = []
        self._lengths: list[int] = []
        self._ext_mins: list[torch.Tensor] = []
        self._ext_maxs: list[torch.Tensor] = []
        self._relu_max: list[torch.Tensor] = []  # per-unit max over the batch, one per ReLU call
        self.grad_calls: list[int] = []  # backward firing order
        self.grad_norms: list[torch.Tensor] = []
        self._cache: dict[int, _Cached] = {}
        self._pending_inputs: dict[int, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
        self.seconds = 0.0  # time spent inside hooks this phase
        self.model_output_call = None

    def end_forward(self) -> None:
        # Inputs and outputs are kept alive by autograd as needed; drop our references.
        self._cache.clear()
        self._pending_inputs.clear()
        self.active = False

    # -- hooks ------------------------------------------------------------------------
    def _lookup(self, t: torch.Tensor) -> _Cached:
        cached = self._cache.get(id(t))
        if cached is not None and cached.tensor is t and cached.version == t._version:
            return cached
        # A tensor no module produced (the batch, or a functional op inside a forward()):
        # its own min/max say whether it is finite.
        mn, mx = torch.aminmax(real_values(t.detach()))
        self._ext_mins.append(mn)
        self._ext_maxs.append(mx)
        entry = _Cached(t, t._version, None, len(self._ext_mins) - 1)
        self._cache[id(t)] = entry
        return entry

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
        producers: list[int] = []
        external: list[int] = []
        # No torch.no_grad() in the hooks: every tensor they reduce is detached, so no graph
        # is built, and entering the context twice per module was a measurable share.
        for t in float_tensors(args):
            if t.numel() == 0:
                continue
            entry = self._lookup(t)
            if entry.producer is not None:
                producers.append(entry.producer)
            elif entry.external is not None:
                external.append(entry.external)
        self._pending_inputs.setdefault(id(module), []).append((tuple(producers), tuple(external)))
        self.seconds += time.perf_counter() - start

    def _post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.active:
            return
        name = self.names.get(module)
        if name is None:
            return
        start = time.perf_counter()
        pending = self._pending_inputs.get(id(module))
        producers, external = pending.pop() if pending else ((), ())
        call = CallInfo(len(self.calls), name, module, producers=producers, external=external,
                        is_leaf=self._leaf[module])
        self.calls.append(call)
        out = first_float_tensor(output)
        same = self._cache.get(id(out)) if out is not None else None
        if out is not None and same is not None and same.tensor is out and same.version == out._version \
                and same.producer is not None:
            # A container returning its last child's output unchanged (Sequential, the root):
            # share that call's stats and gradient instead of reducing the same tensor again.
            original = self.calls[same.producer]
            call.alias_of = original.index
            for attr in ("shape", "dtype", "device", "numel", "nbytes", "sampled", "measured", "row", "out_id",
                         "storage", "storage_bytes"):
                setattr(call, attr, getattr(original, attr))
            if module is self.model:
                self.model_output_call = original.index
            self.seconds += time.perf_counter() - start
            return
        if out is not None and out.numel() > 0:
            # Only a view can lie in an input's memory (not a nested tensor: no flat view of it);
            # asking first skips the inputs' walk for every other output.
            viewed = self._viewed_input(args, out) if not out.is_nested and out._is_view() else None
            if viewed is not None:
                # Flatten, a reshape-only module: the same values in the same memory, so the
                # producer's stats hold and a second pass over them would only cost.
                self._share_view(call, self.calls[viewed], out)
            else:
                self._summarise(module, out.detach(), call)
            self._cache[id(out)] = _Cached(out, out._version, call.index, None)
            if call.view_of is None:  # a view keeps its producer's id: the bytes are counted once
                call.out_id = id(out)
            # The storage, for activation bytes: a transposed view or a pass-through (eval
            # Dropout, Identity) lies in memory already counted. The address is unique for
            # the phase: _cache holds every output until end_forward.
            storage = out.untyped_storage()
            call.storage, call.storage_bytes = storage.data_ptr(), storage.nbytes()
            if out.requires_grad:
                self._watch_grad(out, call.index)
        if module is self.model:
            self.model_output_call = call.index
        self.seconds += time.perf_counter() - start

    def _viewed_input(self, args: tuple[Any, ...], out: torch.Tensor) -> int | None:
        """The measured call whose output ``out`` views element for element, or None.

        Both contiguous, same start, element count and dtype: exactly the same memory in the
        same order. The shared version counter must be unchanged since that call measured
        it, so an in-place module (``ReLU(inplace=True)``) is never taken for a view.
        """
        if not out.is_contiguous():
            return None
        for t in float_tensors(args):
            cached = self._cache.get(id(t))
            if cached is None or cached.tensor is not t or cached.producer is None:
                continue
            if (t.is_contiguous() and t.data_ptr() == out.data_ptr() and t.numel() == out.numel()
                    and t.dtype == out.dtype and cached.version == out._version
                    and self.calls[cached.producer].measured):
                return cached.producer
        return None

    @staticmethod
    def _share_view(call: CallInfo, original: CallInfo, out: torch.Tensor) -> None:
        call.view_of = original.index
        for attr in ("dtype", "device", "numel", "nbytes", "sampled", "measured", "row", "out_id"):
            setattr(call, attr, getattr(original, attr))
        call.shape = tuple(out.shape)

    def _summarise(self, module: nn.Module, t: torch.Tensor, call: CallInfo) -> None:
        # Every attribute read below is a call into torch: read once, reused (this runs per module).
        nested = t.is_nested
        complex_ = t.is_complex()
        n = t.numel()
        call.shape = padded_shape(t) if nested else tuple(t.shape)
        dtype, device = t.dtype, t.device
        call.dtype = _DTYPE_NAMES.get(dtype) or _dtype_name(dtype)
        call.device = _DEVICE_NAMES.get(device) or _device_name(device)
        call.numel = n
        call.nbytes = n * t.element_size()
        call.measured = True
        # A nested output (TransformerEncoder's padding-mask fast path) is read through its
        # flat buffer, which has no padding; a complex one through |z|. Neither has the
        # dense real layout the ReLU per-unit pass and the saturation bounds assume.
        plain = not (nested or complex_)
        if not plain:
            t = real_values(t)
            n = t.numel()
        call.row = len(self._samples)
        call.sampled = n > self.sample_size
        # Now, not at phase end: the tensor may be modified in place by the next module.
        # A fixed-size copy serves the mean, std, zeros, NaN/Inf counts and saturation,
        # reduced together with every other call's at phase end.
        flat = t.view(-1) if t.is_contiguous() else dense_flat(t)
        sample, real = self._sampler.take(flat, n, device)
        self._samples.append(sample)
        self._lengths.append(real)
        # Exactly ONE pass over the whole tensor: min/max (exact finiteness: a NaN anywhere
        # makes both NaN, an Inf shows in one of them).
        if plain and self._relu[module] and t.dim() >= 2:
            # ReLU family: the pass is the per-unit max over the batch instead, which gives the
            # dead units (a feature of a 2-D output, a channel of N,C,... outputs, zero for the
            # whole batch), the exact max and exact finiteness (NaN propagates, ReLU maps -inf
            # to 0); the min of a ReLU output comes from the sample.
            if t.dim() > 2 and t.is_contiguous():
                # N,C,... contiguous: the inner reduction first runs over contiguous memory,
                # about 1.5x faster on CPU than amax over dims (0, 2, ...) in one call.
                unit_max = t.reshape(t.shape[0], t.shape[1], -1).amax(dim=2).amax(dim=0)
            else:
                unit_dim = t.dim() - 1 if t.dim() == 2 else 1
                unit_max = t.amax(dim=tuple(d for d in range(t.dim()) if d != unit_dim))
            call.relu_row = len(self._relu_max)
            self._relu_max.append(unit_max)
            self._mins.append(sample[:real].amin())
            self._maxs.append(unit_max.amax())
            return
        mn, mx = torch.aminmax(flat)  # the dense view: a permuted tensor read in memory order
        self._mins.append(mn)
        self._maxs.append(mx)
        if plain:
            call.saturation = self._bounds[module]

    def _watch_grad(self, out: torch.Tensor, call_index: int) -> None:
        """Have backward report the gradient of ``out`` to :meth:`_grad_hook`.

        A pre-hook on the node that made ``out`` sees that gradient (entry ``output_nr`` of the
        node's incoming gradients) exactly as a tensor hook registered now would, also after a
        later in-place change to ``out``; it costs a third less than ``Tensor.register_hook``,
        which builds a handle and a hooks dict per tensor. A leaf output has no node: a tensor
        hook then.
        """
        gen = self.generation
        node = out.grad_fn
        if node is None:
            out.register_hook(lambda g: self._grad_hook(g, call_index, gen))
            return
        nr = out.output_nr

        def hook(grads: tuple[torch.Tensor | None, ...]) -> None:
            g = grads[nr] if nr < len(grads) else None
            if g is not None:
                self._grad_hook(g, call_index, gen)

        node.register_prehook(hook)

    def _grad_hook(self, grad: torch.Tensor, call_index: int, generation: int) -> None:
        if generation != self.generation:
            return
        start = time.perf_counter()
        # The squared norm (its root is taken on the host, after the phase's transfer): non-finite when
        # the gradient holds a NaN or an Inf (or its norm passes ~1.8e19 in float32, an
        # exploding gradient either way). dot() is one BLAS pass, about twice as fast as
        # linalg.vector_norm on CPU. Detached when it needs it, so no graph even under
        # create_graph=True.
        g = grad.detach() if grad.requires_grad else grad
        if g.dtype not in _DOT_DTYPES or g.is_nested:
            g = real_values(g)  # a complex gradient's magnitudes, a nested one's flat values
        if g.dtype in _DOT_DTYPES and g.is_contiguous():
            flat = g.view(-1)
            self.grad_norms.append(torch.dot(flat, flat))  # float32 or float64: stacked as float32
        else:
            # 16-bit: accumulated in float32 (an fp16 sum of squares overflows); float64 as it is
            # (a float32 result from float64 input is a narrowing torch refuses).
            wide = None if g.dtype == torch.float64 else torch.float32
            self.grad_norms.append(torch.linalg.vector_norm(g, dtype=wide).square())
        self.grad_calls.append(call_index)
        self.seconds += time.perf_counter() - start

    # -- batched results ------------------------------------------------------------------
    def forward_tensor(self) -> torch.Tensor | None:
        """Every measured call's stats as ONE flat float32 tensor on the device (decode_forward reads it)."""
        if not self._samples:
            return None
        f32 = torch.float32
        device = self._samples[0].device
        n = len(self._mins)
        # min and max of every call in one stack (external inputs' too: appended after them)
        parts = [stack_f32(self._mins + self._maxs + self._ext_mins + self._ext_maxs, device)]
        samples = stack_f32(self._samples, device)
        parts.append(sample_sums(samples).reshape(-1))  # (rows, 4)
        sat_calls = [c for c in self.calls if c.saturation is not None and c.measured]
        if sat_calls:
            mask, _ = self._sampler.mask(tuple(self._lengths), device)
            idx, low, high = self._saturation_tensors(sat_calls, device)
            rows = samples.index_select(0, idx)
            pinned = ((rows <= low) | (rows >= high)) & mask.index_select(0, idx)
            parts.append(pinned.sum(dim=1, dtype=f32))  # counts: divided on the host
        if self._relu_max:
            parts.append(stack_f32([(m <= 0).mean(dtype=f32) for m in self._relu_max], device))
        assert n == len(self._samples)
        return torch.cat(parts)

    def _saturation_tensors(self, sat_calls: list[CallInfo], device: torch.device) -> tuple[torch.Tensor, ...]:
        # Built once per model layout, with queued host->device copies (to_device: no wait for
        # the device when a new layout appears mid-training).
        # The band's edges are constants of the layout too: (rows, idx of each, low edge, high edge).
        key = (device, tuple((c.row, c.saturation) for c in sat_calls))
        cached = self._const_cache.get(key)
        if cached is None:
            idx = to_device(torch.tensor([c.row for c in sat_calls]), device)
            band = self.saturation_band
            bounds = [c.saturation for c in sat_calls if c.saturation is not None]
            low = to_device(torch.tensor([lo + band * (hi - lo) for lo, hi in bounds]), device)[:, None]
            high = to_device(torch.tensor([hi - band * (hi - lo) for lo, hi in bounds]), device)[:, None]
            cached = (idx, low, high)
            self._const_cache[key] = cached
        return cached

    def decode_forward(self, flat: list[float]) -> list[CallStats]:
        """One :class:`CallStats` per call (completion order) from ``forward_tensor().tolist()``."""
        n = len(self._samples)
        e = len(self._ext_mins)
        mins, maxs = flat[:n], flat[n:2 * n]
        ext_finite = [math.isfinite(lo) and math.isfinite(hi)
                      for lo, hi in zip(flat[2 * n:2 * n + e], flat[2 * n + e:2 * n + 2 * e])]
        off = 2 * n + 2 * e
        sums = flat[off:off + 4 * n]
        off += 4 * n
        bad = [r for r in range(n) if not (math.isfinite(mins[r]) and math.isfinite(maxs[r]))]
        counts = dict(zip(bad, nonfinite_counts([self._samples[r][: self._lengths[r]] for r in bad])))
        sat_calls = [c for c in self.calls if c.saturation is not None and c.measured]
        sat = {c.index: pinned / self._lengths[c.row] for c, pinned in zip(sat_calls, flat[off:off + len(sat_calls)])}
        off += len(sat_calls)
        dead = flat[off:off + len(self._relu_max)]
        out_finite: dict[int, bool] = {}
        result: list[CallStats] = []
        for call in self.calls:
            output: OutputStats | None = None
            shared = call.alias_of if call.alias_of is not None else call.view_of
            if shared is not None:
                base = result[shared].output
                if base is not None:  # the same values: the same stats, but not a ReLU's or a bound's
                    output = OutputStats(base.mean, base.std, base.min, base.max, base.zero_fraction,
                                         base.nan, base.inf, base.sample_n)
                if call.measured:
                    out_finite[call.index] = out_finite.get(shared, True)
            elif call.measured:
                r = call.row
                length = self._lengths[r]
                first, d_sum, d_norm, nonzero = sums[4 * r:4 * r + 4]
                mean, std, zero = sample_moments(first, d_sum, d_norm, nonzero, length, self.sample_size)
                nan = inf = 0.0
                if r in counts:  # a non-finite row: its exact counts (the sums above are NaN)
                    nan, inf, zeros = counts[r]
                    zero = zeros / max(length, 1)
                output = OutputStats(mean, std, mins[r], maxs[r], zero, nan, inf, float(length),
                                     dead_fraction=dead[call.relu_row] if call.relu_row >= 0 else None,
                                     saturated_fraction=sat.get(call.index))
                out_finite[call.index] = output.finite
            inputs_ok = all(out_finite.get(p, True) for p in call.producers) and all(
                ext_finite[x] for x in call.external)
            result.append(CallStats(inputs_ok, output))
        return result

    def sample_of(self, name: str) -> torch.Tensor | None:
        """The real elements of ``name``'s output sample from the last measured forward, or None."""
        for call in reversed(self.calls):
            if call.name == name and call.measured and 0 <= call.row < len(self._samples):
                return self._samples[call.row][: self._lengths[call.row]]
        return None
