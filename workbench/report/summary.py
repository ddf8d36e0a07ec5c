"""Rendering the model summary (rich), torchinfo style."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from workbench.engine.summary import ModelSummary
from workbench.report.numbers import human_bytes, human_count
from workbench.report.text import Table


def summary_renderable(s: ModelSummary, max_depth: int | None = None) -> Group:
    table = Table(title=f"{s.scenario}: {s.model_class} on {s.device}, batch {s.batch_size}",
                  title_justify="left")
    table.add_column("layer (type)", no_wrap=True)
    table.add_column("output shape", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="right")
    table.add_column("FLOPs", justify="right")
    table.add_column("activations", justify="right")
    for layer in s.layers:
        if max_depth is not None and layer.depth > max_depth:
            continue
        label = "  " * layer.depth + (layer.name.rsplit(".", 1)[-1] or "(model)") + f" ({layer.type_name})"
        if layer.calls > 1:
            label += f" x{layer.calls}"
        shape = _shape(layer.output_shape) + (" nested" if layer.nested else "")
        if not layer.name and s.shown_field:
            shape += f" {s.shown_field}"  # the model's output carries its loss too: say which field this is
        style = "" if layer.is_leaf else "dim"
        params = human_count(layer.params) if layer.params else "·"
        if layer.shared_params:
            params = ("" if not layer.params else params + " + ") + "shared"
        if layer.is_leaf and layer.storage_of is not None:
            # Counted once, at the module that made it (named in full in the JSON).
            activations = "= " + (layer.storage_of.rsplit(".", 1)[-1] or "(model)")
        else:
            activations = human_bytes(layer.activation_bytes) if layer.activation_bytes else "·"
        table.add_row(
            Text(label, style="bold" if not layer.name else style), shape, params,
            ("yes" if layer.trainable == layer.params else human_count(layer.trainable)) if layer.params else "·",
            "?" if s.forward_flops is None else
            human_count(layer.flops) if layer.flops else ("·" if layer.flops_counted else "not counted"),
            activations,
            style=style,
        )
    totals = Table.grid(padding=(0, 2))
    totals.add_column(style="bold")
    totals.add_column(justify="right")
    inputs = ", ".join("[" + ", ".join(map(str, shape)) + "]" for shape in s.input_shapes)
    for label, value in (
        ("inputs", inputs),
        ("total params", f"{s.total_params:,} ({human_bytes(s.param_bytes)})"),
        ("trainable params", f"{s.trainable_params:,}"),
        ("non-trainable params", f"{s.total_params - s.trainable_params:,}"),
        ("buffers", human_bytes(s.buffer_bytes)),
        ("forward FLOPs / batch", "not measured (see below)" if s.forward_flops is None
         else f"{human_count(s.forward_flops)} (matmul/conv/attention/RNN only)"),
        ("activations / forward", f"{human_bytes(s.activation_bytes)} (module outputs, each storage once)"),
        ("input bytes", human_bytes(s.input_bytes)),
    ):
        totals.add_row(label, value)
    parts: list = [table, totals]
    if s.loss_field is not None:
        fields = ", ".join(f"{f.name} {_shape(f.shape)}" for f in s.output_fields)
        parts.append(Text(
            f"the model computes its own loss: {s.loss_field} (fields: {fields}); the (model) row "
            f"shows outputs.{s.shown_field or '?'}, what the model computed.", style="cyan"))
    for name, owners in s.shared_weights:
        parts.append(Text(f"{name or '(model)'} shares {', '.join(owners)} (tied weights): counted once, "
                          "under its owner.", style="cyan"))
    if s.uncounted:
        parts.append(Text(
            "FLOPs of " + ", ".join(s.uncounted) + " are not counted: torch.utils.flop_counter has no "
            "formula for the kernel they ran (cuDNN's fused RNN), so the forward total is a lower bound.",
            style="yellow"))
    for note in s.notes:
        parts.append(Text(note, style="yellow"))
    return Group(*parts)


def _shape(shape: tuple[int, ...] | None) -> str:
    return "·" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
