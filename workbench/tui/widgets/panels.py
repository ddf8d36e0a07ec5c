"""The small panels around the model table: title, phase bar, charts, memory.

Each holds the latest :class:`EngineView` and renders it; none computes a
statistic the engine already measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from workbench.engine.records import PHASES, StepRecord
from workbench.report.numbers import fmt_float, fmt_ms, human_bytes, human_count
from workbench.tui import theme
from workbench.tui.render import heat_cell, meter, sparkline
from workbench.tui.session import PHASE_LABEL, EngineView, group_grad_norms


class ViewPanel(Static):
    """A panel redrawn from the newest EngineView (None: nothing loaded)."""

    view: reactive[EngineView | None] = reactive(None, always_update=True)
    # What shows while there is no view: why ("loading torch… (mlp_digits)"), or the hint.
    placeholder: reactive[str] = reactive("")
    # Tests and snapshots turn this off to hide timings and RSS.
    show_volatile: bool = True

    def __init__(self, *args: Any, show_volatile: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.show_volatile = show_volatile

    def watch_view(self, view: EngineView | None) -> None:
        if view is not None:
            self.update(self.render_view(view))
        else:
            self.update(Text(self.placeholder or "no scenario loaded · s picks one", theme.DIM))

    def watch_placeholder(self, placeholder: str) -> None:
        if self.view is None:
            self.watch_view(None)

    def on_resize(self) -> None:
        # Panels fit what they draw to their size: a new size lays them out again now, not at
        # the next step (drawn for 200 columns and shown in 120, a line was cut at its end).
        if self.view is not None:
            self.watch_view(self.view)

    def render_view(self, view: EngineView) -> RenderableType:  # pragma: no cover - abstract
        raise NotImplementedError


class TitleBar(Static):
    """torch workbench ─ scenario · model · params · device · threads   state."""

    def show(self, view: EngineView | None, state: str, label: str = "") -> None:
        left = Text(" torch workbench", theme.ACCENT)
        if view is not None:
            s = view.summary
            threads = f" · {s.threads} thread{'s' if s.threads != 1 else ''}" if s.threads else ""  # 0: not said
            left.append(f" ─ {s.label} · {s.model_class} · {human_count(s.parameters)} params · {s.device}{threads}")
        elif label:
            left.append(f" ─ {label}")
        right = Text(state + " ", theme.NEXT if "paused" in state or "running" in state else "")
        table = Table.grid(expand=True)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column(justify="right", no_wrap=True)
        table.add_row(left, right)
        self.update(table)


class PhaseBar(ViewPanel):
    """✔ forward 6.1 ms  ✔ loss 0.2 ms  ▶ backward  · optimizer step   step · loss · lr."""

    status: reactive[str] = reactive("")
    failed_step: int | None = None  # set by the screen while a step's error shows

    def watch_status(self, status: str) -> None:
        self.watch_view(self.view)

    def render_view(self, view: EngineView) -> RenderableType:
        seconds = dict(view.current.phase_seconds) if view.current is not None else {}
        previous = not view.done_phases and view.last is not None
        if previous and view.last is not None:  # a new step has not started: how long the last one took
            seconds = dict(view.last.phase_seconds)
        line = Text(no_wrap=True, overflow="ellipsis")
        for phase in PHASES:
            label = PHASE_LABEL[phase]
            if previous and phase != view.next_phase:
                took = seconds.get(phase)
                line.append("· ", theme.DIM).append(label, theme.DIM)
                if self.show_volatile and took is not None:
                    line.append(f" {fmt_ms(took)}", theme.DIM)
            elif phase in view.done_phases:
                took = seconds.get(phase)
                line.append("✔ ", theme.OK).append(label)
                if self.show_volatile and took is not None:
                    line.append(f" {fmt_ms(took)}", theme.DIM)
            elif phase == view.next_phase:
                line.append("▶ ", theme.NEXT).append(label, theme.NEXT)
                if previous and self.show_volatile and seconds.get(phase) is not None:
                    line.append(f" {fmt_ms(seconds[phase])}", theme.DIM)
                if view.pending_break is not None and phase.value == "optimizer_step":
                    line.append(f" (held by breakpoint {view.pending_break.breakpoint})", theme.ERROR)
            else:
                line.append("· ", theme.DIM).append(label, theme.DIM)
            line.append("   ")
        # One line, cut at the end: wrapped, it would push the status line out of the bar.
        info = Text(no_wrap=True, overflow="ellipsis")
        info.append(f"step {view.step}", theme.ACCENT)
        if self.failed_step is not None:
            info.append(f" (step {self.failed_step} raised)", theme.ERROR)
        last = view.last
        # This step's loss once its loss phase ran; before that the last finished step's, named
        # as such ("step 7  loss 4.769" read as step 7's when it was step 6's).
        loss = view.current.loss if view.current is not None else None
        if loss is None and last is not None:
            info.append(f"  last loss (step {last.step}) ").append(_loss_text(last.loss))
        else:
            info.append("  loss ").append(_loss_text(loss))
        source = last.loss_source if last is not None else "loss_fn"
        if source and source != "loss_fn":  # the model computed its loss: the loss phase only reads it
            # ("" is a watched run whose script logged no loss: nothing to say where it came from)
            info.append(f"  loss from {source}, timed in forward", theme.DIM)
        lrs = last.lrs if last is not None else ()
        if lrs:
            info.append("  lr ").append(" ".join(fmt_float(lr, 3) for lr in lrs))
        if view.summary.optimizer:  # a watched loop may not say which optimizer it steps
            info.append(f"  ({view.summary.optimizer})", theme.DIM)
        if last is not None and last.skipped:
            info.append("  last step skipped", theme.WARNING)
        # The breakpoints in force, always in sight (B edits them).
        if view.breakpoints:
            info.append("  breaks ", theme.DIM).append(" · ".join(str(bp) for bp in view.breakpoints), theme.NEXT)
        else:
            info.append("  no breakpoints (B adds)", theme.DIM)
        status = Text(self.status, theme.NEXT if view.pending_break is not None else theme.DIM,
                      no_wrap=True, overflow="ellipsis")
        return Group(line, info, status)


def _loss_text(loss: float | None) -> Text:
    """4 significant digits, red when not finite, · when not measured."""
    return Text(fmt_float(loss, 4), theme.ERROR if loss is not None and not math.isfinite(loss) else "")


class ChartsPanel(ViewPanel):
    """Loss and total grad norm sparklines, and a per-layer grad-norm heat strip.

    Laid out by hand to the panel's width (label, value, then as many of the newest steps as
    fit): a grid left to shrink its columns cut the labels, the value and the newest steps.
    """

    def render_view(self, view: EngineView) -> RenderableType:
        history = view.history
        if not history:
            return Text("charts fill in after the first full step", theme.DIM)
        last = history[-1]
        # (label, value, sparkline values, log scale) per line above the heat strip; a loss_fn
        # that returns named parts gets one line per part, under the total.
        series: list[tuple[str, float | None, list[float | None], bool]] = [
            ("loss", last.loss, [r.loss for r in history], False),
            ("∇‖", last.total_grad_norm, [r.total_grad_norm for r in history], True),
        ]
        for part in last.loss_parts:
            series.append((_tail(part, 6), last.loss_parts.get(part), [r.loss_parts.get(part) for r in history], False))
        if last.grad_scale is not None:  # fp16 GradScaler: its scale, skipped steps show as drops
            series.append(("scale", last.grad_scale, [r.grad_scale for r in history], True))
        label_w = max(len(label) for label, *_ in series)
        # Before the first layout the width is not known yet: a guess (a resize redraws).
        content = self.size.width or 36
        steps = max(content - label_w - CHART_VALUE_WIDTH - 2, 0)
        lines: list[Text] = []
        for label, value, values, log in series:
            line = Text(label.ljust(label_w), theme.DIM, no_wrap=True, overflow="crop")
            line.append(" " + fit_float(value, CHART_VALUE_WIDTH).rjust(CHART_VALUE_WIDTH) + " ")
            lines.append(line.append_text(sparkline(values, steps, log=log)))
        # Heat strip: layers with parameters (rows) × the same recent steps (columns); a layer
        # row has no value, so its label takes the value's cells too.
        rows = max(self.size.height - len(lines), 0)
        layers = [n.name for n in view.modules if n.num_params and not n.children][:rows]
        per_step = [group_grad_norms(r.params) for r in history[-steps:]] if steps else []
        heat = [v for step in per_step for v in step.values() if v and math.isfinite(v) and v > 0]
        lo, hi = (math.log10(min(heat)), math.log10(max(heat))) if heat else (0.0, 0.0)
        layer_w = label_w + 1 + CHART_VALUE_WIDTH
        for layer, label in zip(layers, unique_labels(layers, layer_w)):
            line = Text(label.ljust(layer_w) + " ", theme.DIM, no_wrap=True, overflow="crop")
            for step in per_step:
                line.append_text(heat_cell(step.get(layer), lo, hi))
            lines.append(line)
        return Group(*lines)


# The latest value beside each sparkline, in at most this many cells ("-7.5e-5").
CHART_VALUE_WIDTH = 7


def fit_float(x: float | None, width: int) -> str:
    """``fmt_float`` with as many significant digits as fit in ``width`` cells: fewer digits,
    never a cut ("7.49e…" read as a different number)."""
    text = "·"
    for digits in (4, 3, 2, 1):
        text = fmt_float(x, digits).replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
        if len(text) <= width:
            break
    return text


def _tail(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def unique_labels(names: Sequence[str], width: int) -> list[str]:
    """Labels of at most ``width`` cells that tell the names apart.

    The end of a name usually says most (``…fc1``), but HF models end many
    names alike (``word_embeddings``, ``position_embeddings``): where ends
    collide, the part that differs is shown instead, and any label still
    shared gets a number.
    """
    labels = [_tail(n, width) for n in names]
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        full = [names[i] for i in members]
        prefix = len(_common_prefix(full))
        suffix = len(_common_prefix([n[::-1] for n in full]))
        for i, name in zip(members, full):
            core = name[prefix:len(name) - suffix] if len(name) - suffix > prefix else name[prefix:]
            core = core.strip("._") or name
            end = name[len(name) - suffix:].rsplit(".", 1)[-1].strip("._") if suffix else ""
            room = width - len(core) - 1
            if end and room >= 3:  # "0…query": the part that differs, then how the name ends
                labels[i] = core + "…" + end[-room:]
            else:
                labels[i] = core if len(core) <= width else core[: width - 1] + "…"
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        count = seen.get(label, 0)
        seen[label] = count + 1
        if count:
            tag = f"#{count + 1}"
            labels[i] = label[: width - len(tag)] + tag
    return labels


def _common_prefix(names: Sequence[str]) -> str:
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


# The engine's instrument names (StepRecord.instrument_breakdown), as the memory panel shows them.
INSTRUMENT_LABEL = {
    "forward_hooks": "fwd hooks", "forward_stats": "fwd stats", "loss_value": "loss read",
    "grad_hooks": "grad hooks", "backward_stats": "bwd stats", "update_stats": "upd stats",
    "health": "health", "memory": "memory", "snapshot": "snapshots",
}
# The debugger tax is averaged over this many recent steps: one step's timing is noise.
TAX_WINDOW = 10


@dataclass(frozen=True)
class DebuggerTax:
    """What the debugger's instruments cost per step, over the last few steps."""

    steps: int
    work_seconds: float  # the user's own step: phases plus fetching the batch
    tax_seconds: float
    instruments: tuple[tuple[str, float], ...]  # (engine name, seconds per step), costliest first

    @property
    def ratio(self) -> float:
        return (self.work_seconds + self.tax_seconds) / self.work_seconds if self.work_seconds > 0 else math.nan


def debugger_tax(history: Sequence[StepRecord], window: int = TAX_WINDOW) -> DebuggerTax | None:
    """Mean per-step cost of each instrument over the last ``window`` steps (None before a step)."""
    recent = list(history)[-window:]
    if not recent:
        return None
    totals: dict[str, float] = {}
    for r in recent:
        for name, seconds in r.instrument_breakdown.items():
            totals[name] = totals.get(name, 0.0) + seconds
    n = len(recent)
    work = sum(r.seconds + r.data_seconds for r in recent) / n
    tax = sum(r.instrument_seconds for r in recent) / n
    ranked = sorted(((name, t / n) for name, t in totals.items()), key=lambda x: -x[1])
    return DebuggerTax(n, work, tax, tuple(ranked))


_TOTAL_MEMORY: list[int] = []


def _total_memory() -> int:
    """The machine's RAM in bytes (read once; 0 when psutil cannot say)."""
    if not _TOTAL_MEMORY:
        try:
            import psutil

            _TOTAL_MEMORY.append(int(psutil.virtual_memory().total))
        except Exception:  # an unusual platform: the meter is left out
            _TOTAL_MEMORY.append(0)
    return _TOTAL_MEMORY[0]


MEMORY_LABEL_WIDTH = 12  # "debugger tax"


def rss_text(rss: int | None, total: int, width: int) -> Text:
    """The process's RSS and its share of the machine's RAM, worded to fit ``width`` cells: a
    shorter wording, never a cut unit ("1.6% of 23.5" read as a share of nothing)."""
    used = human_bytes(rss)
    if not total or not rss:
        return Text(used)
    share = rss / total
    percent = f"{share:.1%}" if share < 0.1 else f"{share:.0%}"
    style = theme.WARNING if share > 0.8 else theme.DIM
    ram = human_bytes(total)
    # Past the word RAM the share is left out first: the meter under this line shows it too.
    for extra in (f"  {percent} of {ram} RAM", f"  {percent} of {ram}", f" of {ram} RAM", f" of {ram}",
                  f"  {percent}"):
        if len(used) + len(extra) <= width:
            return Text(used).append(extra, style)
    return Text(used)


class MemoryPanel(ViewPanel):
    """RSS, CUDA when present, activation bytes, the debugger's own cost per instrument."""

    selected: str | None = None

    def render_view(self, view: EngineView) -> RenderableType:
        record = view.last
        out = Table.grid(padding=(0, 1))
        out.add_column(no_wrap=True, min_width=MEMORY_LABEL_WIDTH)
        out.add_column(no_wrap=True, overflow="ellipsis")
        if record is None:
            return Text("memory is sampled once per step", theme.DIM)
        mem = record.memory
        vol = self.show_volatile
        total = _total_memory()
        # The value column's cells (the label column and its gap take the rest).
        cells = self.size.width - MEMORY_LABEL_WIDTH - 1 if self.size.width else 40
        rss = rss_text(mem.rss_bytes, total, cells) if vol else Text("—")
        out.add_row(Text("RSS", theme.DIM), rss)
        if vol and total and mem.rss_bytes:
            # How close the process is to the machine's RAM, at a glance.
            ram = mem.rss_bytes / total
            out.add_row("", meter(ram, max(min(16, cells - 2), 4), theme.WARNING if ram > 0.8 else theme.INFO))
        if mem.cuda_allocated is not None:
            line = Text(human_bytes(mem.cuda_allocated) if vol else "—")
            if vol and mem.cuda_reserved:
                line.append(" ").append_text(meter(mem.cuda_allocated / mem.cuda_reserved, 10))
            out.add_row(Text("CUDA alloc", theme.DIM), line)
            out.add_row(Text("CUDA peak", theme.DIM), human_bytes(mem.cuda_peak) if vol else "—")
        out.add_row(Text("activations", theme.DIM), human_bytes(mem.activation_bytes))
        stats = view.module_stats().get(self.selected or "")
        if self.selected is not None and stats is not None:
            out.add_row(Text("selected", theme.DIM), Text(f"{human_bytes(stats.bytes)} ({self.selected or 'model'})"))
        tax = debugger_tax(view.history)
        if not vol or tax is None or tax.work_seconds <= 0:
            out.add_row(Text("debugger tax", theme.DIM), "—")
            return out
        style = theme.WARNING if tax.ratio > 1.5 else ""
        out.add_row(Text("debugger tax", theme.DIM), Text(f"{tax.ratio:.2f}× +{fmt_ms(tax.tax_seconds)}", style))
        # The costliest instruments in the rows left (the panel's height decides how many).
        room = self.size.height - out.row_count if self.size.height else 2  # size: the content area
        for name, seconds in tax.instruments[:max(room, 0)]:
            share = seconds / tax.tax_seconds if tax.tax_seconds > 0 else 0.0
            out.add_row(Text(" " + INSTRUMENT_LABEL.get(name, name.replace("_", " ")), theme.DIM),
                        Text(f"{fmt_ms(seconds):>8} {share:4.0%}", theme.DIM))
        return out
