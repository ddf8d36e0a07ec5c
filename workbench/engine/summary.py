"""A torchinfo-like static model summary: per layer output shape, parameters, FLOPs, bytes.

One forward pass on the scenario's first batch, in eval mode and without
gradients (so BatchNorm running stats and the RNG are left as they were),
under ``torch.utils.flop_counter.FlopCounterMode``. FlopCounterMode counts
matmul / convolution / attention ops only: element-wise ops and
normalisation are not FLOPs here, which is what torchinfo's "mult-adds"
and most papers report too (FLOPs = 2 x mult-adds). The attention kernels
torch has no CPU formula for are counted with ``engine.flops``.

Activation bytes count distinct memory: an Identity, an eval-mode Dropout or
a view returns memory an earlier module produced, and that memory is counted
once (by storage), with the row saying whose it is. A tied weight (GPT-2's
``lm_head`` and ``wte``) is counted once, at its owner, the other row saying
it shares it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.engine.flops import EXTRA_FORMULAS
from workbench.engine.params import own_and_shared, param_owners
from workbench.engine.probe import first_float_tensor, padded_shape
from workbench.scenario import Scenario
from workbench.scenario.outputs import output_loss, output_tensors, prediction_tensor
from workbench.scenario.step import instrumented


@dataclass(frozen=True)
class LayerSummary:
    name: str  # qualified, "" for the root
    type_name: str
    depth: int
    output_shape: tuple[int, ...] | None  # a nested output: its padded shape
    params: int  # own parameters for a leaf (a tied one counted at its owner only), all descendants' for a container
    trainable: int
    flops: int  # forward FLOPs of this module including its children
    activation_bytes: int  # bytes of this module's (first floating) output, summed over its calls
    calls: int
    is_leaf: bool
    flops_counted: bool = True  # False: no formula for the kernel it ran (cuDNN's fused RNN)
    shared_params: tuple[str, ...] = ()  # parameters it uses that another module owns (tied weights)
    storage_of: str | None = None  # its output lies in memory this earlier module produced
    nested: bool = False  # its output is a nested tensor (TransformerEncoder's padding-mask fast path)


@dataclass(frozen=True)
class OutputField:
    """One top-level tensor field of the model's output (``logits``, ``loss``...)."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ModelSummary:
    scenario: str
    model_class: str
    device: str
    input_shapes: tuple[tuple[int, ...], ...]
    batch_size: int
    layers: tuple[LayerSummary, ...]
    total_params: int
    trainable_params: int
    param_bytes: int
    buffer_bytes: int
    forward_flops: int | None  # None: not measurable for this forward (see notes)
    activation_bytes: int  # distinct storage of module outputs in one forward (what backward keeps, roughly)
    input_bytes: int
    output_fields: tuple[OutputField, ...] = ()
    loss_field: str | None = None  # where a loss the model computed itself is ("outputs.loss")
    shown_field: str | None = None  # the field the (model) row shows, when the output has a loss field
    notes: tuple[str, ...] = ()

    @property
    def uncounted(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if not layer.flops_counted)

    @property
    def shared_weights(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple((layer.name, layer.shared_params) for layer in self.layers if layer.shared_params)


@dataclass
class _Output:
    shape: tuple[int, ...]
    nbytes: int
    nested: bool
    storage: int  # data_ptr of its storage, 0 for none


def summarize(scenario: Scenario) -> ModelSummary:
    from torch.utils.flop_counter import FlopCounterMode

    model = scenario.model
    device = scenario.device
    batch = scenario.make_batch(next(iter(scenario.data))).to(device)
    names = {m: n for n, m in model.named_modules()}
    leaf = {m: not any(True for _ in m.children()) for m in names}
    outputs: dict[str, _Output] = {}
    output_bytes: dict[str, int] = {}  # per module: its outputs' bytes over all its calls
    calls: dict[str, int] = {}
    order: list[str] = []
    # Storage (by data_ptr) -> (bytes, the storage itself, first module whose output it is).
    # Holding the storage keeps its memory from being reused by a later activation, which
    # would give a new tensor an address already counted.
    storages: dict[int, tuple[int, Any, str]] = {}
    # Memory that is not an activation: the batch, parameters and buffers.
    not_activations = {t.untyped_storage().data_ptr()
                       for t in (*batch.tensors(), *model.parameters(), *model.buffers()) if t.numel()}
    root_output: list[Any] = []

    def pre_hook(module: nn.Module, args: Any) -> None:
        name = names[module]
        if name not in calls:
            order.append(name)  # start order: a container before its children, like torchinfo
        calls[name] = calls.get(name, 0) + 1

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        name = names[module]
        if module is model:
            root_output[:] = [output]
        # The root row shows what the model computed, not a loss it computed too.
        t = prediction_tensor(output) if module is model else None
        if t is None:
            t = first_float_tensor(output)
        if t is None:
            return
        ptr = 0
        if t.numel():
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in not_activations and ptr not in storages:
                storages[ptr] = (storage.nbytes(), storage, name)
        nbytes = t.numel() * t.element_size()
        outputs[name] = _Output(padded_shape(t), nbytes, t.is_nested, ptr)  # the last call's shape
        output_bytes[name] = output_bytes.get(name, 0) + nbytes  # every call's: the total counts them all

    def forward(grad: bool, count: bool) -> dict[str, dict[Any, int]]:
        for d in (outputs, calls, storages, output_bytes):
            d.clear()
        order.clear()
        torch.set_rng_state(rng)  # each attempt sees the same dropout masks as the first
        counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) if count else None
        with torch.set_grad_enabled(grad), counter or contextlib.nullcontext(), scenario.autocast():
            scenario.call_model(batch)
        return counter.get_flop_counts() if counter is not None else {}

    notes: list[str] = []
    flops_known = True
    rng = torch.get_rng_state()
    with instrumented(model, train=False) as hooks:  # modes, RNG and hooks restored
        for m in names:
            hooks.forward_hook(m, hook)
            hooks.forward_pre_hook(m, pre_hook)
        try:
            raw = forward(grad=False, count=True)
        except RuntimeError as first:
            # A forward that differentiates inside itself (a PINN's torch.autograd.grad of
            # its output by its input) cannot run under no_grad: measure it as it trains.
            why = str(first).splitlines()[0][:120]
            try:
                raw = forward(grad=True, count=True)
                notes.append(f"the forward raised under torch.no_grad ({why}), so it was measured with "
                             "gradients enabled (it differentiates inside itself)")
            except RuntimeError:
                # FlopCounterMode's module tracker hooks autograd, and autograd.grad of a leaf
                # input inside the forward is "not supported" there: no FLOPs, the rest holds.
                try:
                    raw = forward(grad=True, count=False)
                except Exception:
                    raise first from None
                flops_known = False
                notes.append(f"the forward raised under torch.no_grad ({why}) and under torch's FLOP "
                             "counter (which cannot follow torch.autograd.grad inside a forward): measured "
                             "with gradients enabled and without FLOP counts")

    root_label = type(model).__name__
    flops: dict[str, int] = {}
    for key, per_op in raw.items():
        if key == "Global":
            continue
        name = "" if key == root_label else key[len(root_label) + 1:] if key.startswith(root_label + ".") else key
        flops[name] = int(sum(per_op.values()))
    total_flops = int(sum(raw.get("Global", {}).values()))

    owners = param_owners(model)
    # Modules in execution order, depth from the qualified name.
    ordered = _with_uncalled(order, list(names.values()))
    modules = dict(model.named_modules())
    layers = []
    for name in ordered:
        m = modules[name]
        if leaf[m]:
            params, shared = own_and_shared(m, name, owners)
        else:
            params, shared = list(m.parameters()), []
        out = outputs.get(name)
        storage_of = None
        if out is not None and out.storage in storages and storages[out.storage][2] != name:
            storage_of = storages[out.storage][2]
        layer_flops = flops.get(name, 0)
        layers.append(LayerSummary(
            name=name, type_name=type(m).__name__, depth=0 if not name else name.count(".") + 1,
            output_shape=out.shape if out else None, params=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in params if p.requires_grad),
            flops=layer_flops, activation_bytes=output_bytes.get(name, 0), calls=calls.get(name, 0),
            is_leaf=leaf[m],
            # An RNN whose kernel has no formula (cuDNN's fused RNN on CUDA) counts nothing;
            # on CPU GRU/RNN decompose into matmuls and LSTM has engine.flops: judge by the count.
            flops_counted=not (isinstance(m, nn.RNNBase) and layer_flops == 0 and calls.get(name, 0) > 0),
            shared_params=tuple(shared), storage_of=storage_of, nested=bool(out and out.nested),
        ))
    fields = tuple(OutputField(n, padded_shape(t), str(t.dtype).replace("torch.", ""))
                   for n, t in output_tensors(root_output[0]).items()) if root_output else ()
    all_params = list(model.parameters())
    return ModelSummary(
        scenario=scenario.name,
        model_class=type(model).__name__,
        device=str(device),
        input_shapes=tuple(tuple(t.shape) for t in batch.input_tensors()),
        batch_size=batch.size,
        layers=tuple(layers),
        total_params=sum(p.numel() for p in all_params),
        trainable_params=sum(p.numel() for p in all_params if p.requires_grad),
        param_bytes=sum(p.numel() * p.element_size() for p in all_params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        forward_flops=total_flops if flops_known else None,
        activation_bytes=sum(nbytes for nbytes, _, _ in storages.values()),
        input_bytes=sum(t.numel() * t.element_size() for t in batch.input_tensors()),
        output_fields=fields,
        loss_field=output_loss(root_output[0])[1] or None if root_output else None,
        shown_field=_shown_field(root_output[0]) if root_output else None,
        notes=tuple(notes),
    )


def _with_uncalled(order: list[str], registered: list[str]) -> list[str]:
    """Execution order with each never-called module placed among its relatives.

    A ModuleList is never called itself, nor is a Linear whose weight its parent uses
    functionally (MultiheadAttention's out_proj): such a module goes right before its
    first called descendant, or else right after its parent's last called module, so the
    tree reads as a tree instead of collecting them at the end.
    """
    out = list(order)
    for name in registered:
        if name in out:
            continue
        prefix = name + "."
        below = next((i for i, n in enumerate(out) if n.startswith(prefix)), None)
        if below is not None:
            out.insert(below, name)
            continue
        parent = name.rpartition(".")[0]
        family = [i for i, n in enumerate(out) if n == parent or n.startswith(parent + ".") or not parent]
        out.insert(family[-1] + 1 if family else len(out), name)
    return out


def _shown_field(output: Any) -> str | None:
    """Which field of an output that carries its own loss the (model) row shows."""
    if output_loss(output)[0] is None:
        return None
    shown = prediction_tensor(output)
    return next((n for n, t in output_tensors(output).items() if t is shown), None)
