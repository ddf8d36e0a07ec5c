"""Reading a model's output: its named tensor fields and the prediction among them.

A model may return a Tensor, a tuple (an LSTM's ``(output, (h, c))``), a dict,
a dataclass or a Hugging Face ``ModelOutput`` (an ordered dict with attributes)
that carries the loss next to the logits when labels were passed. Anything
that shows or compares "the model's output" (summary's ``(model)`` row, int8
quality, diff) should look at the prediction, not at a loss scalar that the
model computed inside itself: :func:`prediction_tensor` picks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

LOSS_FIELD = "loss"


def output_tensors(outputs: Any) -> dict[str, torch.Tensor]:
    """The top-level tensor fields of a model output, by name, in the output's order.

    A Tensor is ``{"": tensor}``; a Mapping or ModelOutput gives its keys (fields
    that are None, such as an HF output's ``loss`` without labels, are left out);
    a dataclass its field names; a tuple or list ``"0"``, ``"1"`` ... (a tensor
    nested one level down, as in ``(output, (h, c))``, is named ``"1.0"``).
    """
    if isinstance(outputs, torch.Tensor):
        return {"": outputs}
    if isinstance(outputs, Mapping):
        items: list[tuple[str, Any]] = [(str(k), v) for k, v in outputs.items()]
    elif dataclasses.is_dataclass(outputs) and not isinstance(outputs, type):
        items = [(f.name, getattr(outputs, f.name)) for f in dataclasses.fields(outputs)]
    elif isinstance(outputs, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(outputs)]
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for name, value in items:
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, (tuple, list)):
            for j, inner in enumerate(value):
                if isinstance(inner, torch.Tensor):
                    found[f"{name}.{j}"] = inner
    return found


def prediction_tensor(outputs: Any) -> torch.Tensor | None:
    """The tensor that stands for the model's prediction: ``logits`` when the output has
    that field, else its first floating tensor that is not the loss (None if none).

    Use it instead of "the first tensor of the output" wherever the loss may be
    computed inside the model: an HF ``ModelOutput`` with labels has ``loss`` first.
    """
    fields = output_tensors(outputs)
    logits = fields.get("logits")
    if logits is not None:
        return logits
    for name, t in fields.items():
        if name != LOSS_FIELD and t.is_floating_point():
            return t
    return None


def output_loss(outputs: Any) -> tuple[torch.Tensor | None, str]:
    """The loss a model computed itself, and where it was found: ``outputs.loss`` or
    ``outputs["loss"]`` (``(None, "")`` when the output carries none)."""
    value = getattr(outputs, LOSS_FIELD, None)  # an HF ModelOutput (a Mapping too) reads as .loss
    if isinstance(value, torch.Tensor):
        return value, "outputs.loss"
    if isinstance(outputs, Mapping):
        value = outputs.get(LOSS_FIELD)
        if isinstance(value, torch.Tensor):
            return value, 'outputs["loss"]'
    return None, ""


def describe_output(outputs: Any) -> str:
    """A short description of an output's type and fields, for error messages."""
    fields = output_tensors(outputs)
    if not fields or list(fields) == [""]:
        return type(outputs).__name__
    return f"{type(outputs).__name__} with tensor fields {', '.join(fields)}"
