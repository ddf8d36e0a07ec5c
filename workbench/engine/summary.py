"""A torchinfo-like static model summary: per layer output shape, parameters, FLOPs, bytes.

One forward pass on the scenario's first batch, in eval mode and without
gradients (so BatchNorm running stats and the RNG are left as they were),
under ``torch.utils.flop_counter.FlopCounterMode``. FlopCounterMode counts
matmul / convolution / attention ops only: element-wise ops and
normalisation are not FLOPs here, which is what torchinfo's "mult-adds"
and most papers report too (FLOPs = 2 x mult-adds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.engine.probe import first_float_tensor
from workbench.scenario import Scenario
from workbench.scenario.step import instrumented


@dataclass(frozen=True)
class LayerSummary:
    name: str  # qualified, "" for the root
    type_name: str
    depth: int
    output_shape: tuple[int, ...] | None
    params: int  # own parameters for a leaf, all descendants' for a container
    trainable: int
    flops: int  # forward FLOPs of this module including its children
    activation_bytes: int  # bytes of this module's (first floating) output
    calls: int
    is_leaf: bool
    flops_counted: bool = True  # False: FlopCounterMode has no formula for this op (fused RNNs)


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
    forward_flops: int
    activation_bytes: int  # leaf outputs of one forward (what backward keeps, roughly)
    input_bytes: int

    @property
    def uncounted(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if not layer.flops_counted)


def summarize(scenario: Scenario) -> ModelSummary:
    from torch.utils.flop_counter import FlopCounterMode

    model = scenario.model
    device = scenario.device
    batch = scenario.make_batch(next(iter(scenario.data))).to(device)
    names = {m: n for n, m in model.named_modules()}
    leaf = {m: not any(True for _ in m.children()) for m in names}
    outputs: dict[str, tuple[tuple[int, ...], int]] = {}
    calls: dict[str, int] = {}
    order: list[str] = []

    def pre_hook(module: nn.Module, args: Any) -> None:
        name = names[module]
        if name not in calls:
            order.append(name)  # start order: a container before its children, like torchinfo
        calls[name] = calls.get(name, 0) + 1

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        name = names[module]
        t = first_float_tensor(output)
        if t is not None:
            outputs[name] = (tuple(t.shape), t.numel() * t.element_size())

    with instrumented(model, train=False, grad=False) as hooks:  # modes, RNG and hooks restored
        for m in names:
            hooks.forward_hook(m, hook)
            hooks.forward_pre_hook(m, pre_hook)
        with FlopCounterMode(display=False) as counter, scenario.autocast():
            scenario.call_model(batch)
        raw = counter.get_flop_counts()

    root_label = type(model).__name__
    flops: dict[str, int] = {}
    for key, per_op in raw.items():
        if key == "Global":
            continue
        name = "" if key == root_label else key[len(root_label) + 1:] if key.startswith(root_label + ".") else key
        flops[name] = int(sum(per_op.values()))
    total_flops = int(sum(raw.get("Global", {}).values()))

    # Modules in execution order (then any never called), depth from the qualified name.
    ordered = order + [n for n in names.values() if n not in calls]
    modules = dict(model.named_modules())
    layers = []
    for name in ordered:
        m = modules[name]
        params = list(m.parameters(recurse=not leaf[m]))
        shape, nbytes = outputs.get(name, (None, 0))
        layers.append(LayerSummary(
            name=name, type_name=type(m).__name__, depth=0 if not name else name.count(".") + 1,
            output_shape=shape, params=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in params if p.requires_grad),
            flops=flops.get(name, 0), activation_bytes=nbytes, calls=calls.get(name, 0), is_leaf=leaf[m],
            # The fused RNN kernels (_VF.lstm/gru/rnn) have no FLOP formula in torch 2.x.
            flops_counted=not isinstance(m, nn.RNNBase),
        ))
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
        forward_flops=total_flops,
        activation_bytes=sum(l.activation_bytes for l in layers if l.is_leaf),
        input_bytes=sum(t.numel() * t.element_size() for t in batch.input_tensors()),
    )
