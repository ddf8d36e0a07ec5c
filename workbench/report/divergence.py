"""Rich views of a Divergence (workbench diff): the layer table, the gradient table, the verdict."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from workbench.bench.divergence import MODEL_SHARE, NEAR_ZERO, Divergence, TensorDiff, past_threshold
from workbench.report.numbers import fmt_float
from workbench.report.text import Table


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape) or "scalar"


def _row(d: TensorDiff, threshold: float, first: bool) -> list[RenderableType]:
    bad = past_threshold(d, threshold)
    mark = Text("◀ first", style="bold red") if first else (Text("✖", style="red") if bad else Text(""))
    rel = Text(fmt_float(d.rel_error) + ("*" if d.floored else ""), style="red" if bad else "")
    extra = f" ×{d.calls}" if d.calls > 1 else ""
    nonfinite = (f"{d.non_finite_b} (A {d.non_finite_a})" if d.non_finite_a
                 else str(d.non_finite_b) if d.non_finite_b else "·")
    return [d.name + extra, d.kind, _shape(d.shape), rel, fmt_float(d.max_abs), f"{d.cosine:.6f}", nonfinite, mark]


def _table(title: str, diffs: tuple[TensorDiff, ...], threshold: float, first: TensorDiff | None,
           what: str = "module") -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for col, justify in ((what, "left"), ("type", "left"), ("shape", "left"), ("rel error", "right"),
                         ("max |Δ|", "right"), ("cosine", "right"), ("B NaN/Inf", "right"), ("", "left")):
        # Names and numbers are read whole (a parameter name is copied into code); only
        # the flag column may wrap.
        table.add_column(col, justify=justify, no_wrap=bool(col))  # type: ignore[arg-type]
    for d in diffs:
        table.add_row(*_row(d, threshold, d is first))
    return table


def divergence_view(div: Divergence, grads_shown: int = 10) -> Group:
    parts: list[RenderableType] = [
        Text(f"{div.scenario} on {div.device}: {div.a} (A) vs {div.b} (B), eval mode, "
             f"{div.batches} identical batch{'es' if div.batches != 1 else ''}, threshold rel error "
             f"{div.threshold:g}", style="bold"),
    ]
    first = div.first_over
    parts.append(_table("layer outputs, in execution order (rel error = ||B - A|| / ||A||)",
                        div.layers, div.threshold, first))
    if div.grads:
        worst = tuple(sorted(div.grads, key=lambda d: _badness(d, div.threshold), reverse=True)[:grads_shown])
        parts.append(_table(f"parameter gradients, the {len(worst)} furthest apart", worst, div.threshold, None,
                            what="parameter"))
    floored = [d for d in div.grads if d.floored]
    if floored:
        parts.append(Text(
            f"* {len(floored)} gradient(s) zero in truth ({', '.join(d.name for d in floored[:4])}"
            f"{' …' if len(floored) > 4 else ''}: under {NEAR_ZERO:g}× their layer's gradient scale, or "
            f"{MODEL_SHARE:g}× the model's): their rel error is ||B - A|| over that scale, since ||A|| is "
            "rounding noise there.",
            style="dim"))
    for note in div.notes:
        parts.append(Text(note, style="dim"))
    parts.append(Text(f"loss: A {fmt_float(div.loss_a, 6)}  B {fmt_float(div.loss_b, 6)}  "
                      f"(Δ {fmt_float(div.loss_b - div.loss_a)})"))
    parts.append(verdict(div))
    return Group(*parts)


def _badness(d: TensorDiff, threshold: float) -> tuple[bool, int, float]:
    """Sort key, worst last: past the threshold, then NaN/Inf B adds, then relative error (NaN as inf)."""
    rel = d.rel_error if d.rel_error == d.rel_error else float("inf")
    return (past_threshold(d, threshold), d.non_finite_b - d.non_finite_a, rel)


def verdict(div: Divergence) -> Text:
    first = div.first_over
    if first is not None:
        index = div.layers.index(first)
        before = max((d.rel_error for d in div.layers[:index]), default=0.0)
        why = (f"{first.non_finite_b} non-finite values in B (A has {first.non_finite_a})"
               if first.non_finite_b > first.non_finite_a
               else f"rel error {fmt_float(first.rel_error)} > {div.threshold:g}")
        context = (f"the modules before it stay within {fmt_float(before)}, so its inputs were still close"
                   if index else "it is the first module to run: its input is the batch itself")
        return Text(f"the variants part at '{first.name}' ({first.kind}): {why}; {context}. Look at what "
                    f"this layer computes in {div.b}.", style="bold red")
    bad_grads = [d for d in div.grads if past_threshold(d, div.threshold)]
    if bad_grads:
        worst = max(bad_grads, key=lambda d: _badness(d, div.threshold))
        return Text(f"the forward agrees within {div.threshold:g}, but {len(bad_grads)} gradient(s) do not "
                    f"(worst: {worst.name}); the backward of {div.b} is where they part.",
                    style="bold yellow")
    return Text(f"{div.b} agrees with {div.a} within {div.threshold:g} at every layer"
                + (" and every gradient." if div.grads else "."), style="bold green")
