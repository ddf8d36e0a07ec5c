"""The tensor inspector: histograms and stats of the selected module."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from workbench.engine.records import ModuleStats
from workbench.report.numbers import fmt_float, human_count
from workbench.tui import theme
from workbench.tui.render import histogram
from workbench.tui.session import InspectorData


class Inspector(Static):
    """Shows one InspectorData; the screen asks a worker for it on selection."""

    def show(self, data: InspectorData | None, stats: ModuleStats | None = None, fresh: bool = True) -> None:
        # Text, not a str: a str title is markup, and a module's repr may hold "[/...]".
        self.border_title = Text(inspector_title(data))
        self.update(render_inspector(data, stats, fresh))

    def show_reading(self, module: str, stats: ModuleStats | None = None, fresh: bool = True) -> None:
        """The cursor moved to ``module``: its name now, its histograms when they are read."""
        self.border_title = Text(f"Inspector · {module or 'model'}")
        parts: list[RenderableType] = [Text("reading its tensors…", theme.DIM)]
        line = _stats_line(stats, fresh)
        if line is not None:
            parts.append(line)
        self.update(Group(*parts))


def inspector_title(data: InspectorData | None) -> str:
    if data is None:
        return "Inspector"
    # An attached script's sample may come without a description: no empty "· " then.
    return f"Inspector · {data.module or 'model'}" + (f" · {data.description}" if data.description else "")


def _stats_line(stats: ModuleStats | None, fresh: bool) -> Text | None:
    if stats is None or stats.mean is None:
        return None
    # Stats of an earlier step say so: "none yet in step 3" beside step 2's mean is no contradiction.
    when = "" if fresh else "  (the last step's: not yet measured in this one)"
    return Text(
        f"activation mean {fmt_float(stats.mean)}  std {fmt_float(stats.std)}  "
        f"min {fmt_float(stats.min)}  max {fmt_float(stats.max)}  |max| {fmt_float(stats.abs_max)}{when}",
        theme.DIM)


def render_inspector(data: InspectorData | None, stats: ModuleStats | None = None,
                     fresh: bool = True) -> RenderableType:
    if data is None:
        return Text("select a module in the table", theme.DIM)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    for h in data.histograms:
        bad = f"  NaN {h.nan:,} Inf {h.inf:,}" if h.nan or h.inf else ""
        n = f"n={human_count(h.numel)}"
        if h.label == "activation" and data.output_numel is not None:
            n = f"sample of {human_count(h.numel)} from {human_count(data.output_numel)}"
        elif h.sampled:
            n += " (sampled)"
        note = Text(f"{fmt_float(h.lo)} … {fmt_float(h.hi)}  {n}", theme.DIM)
        if bad:
            note.append(bad, theme.ERROR)
        grid.add_row(Text(h.label, theme.DIM), histogram(h.counts), note)
    parts: list[RenderableType] = [grid]
    line = _stats_line(stats, fresh)
    if line is not None:
        parts.append(line)
    if data.nan_total and data.nan_positions:
        where = ", ".join("[" + ", ".join(map(str, p)) + "]" for p in data.nan_positions)
        more = " …" if data.nan_total > len(data.nan_positions) else ""
        parts.append(Text(f"non-finite at {where}{more} ({data.nan_total:,} of {data.numel:,})", theme.ERROR))
    elif data.nan_total:
        parts.append(Text(f"non-finite: {data.nan_total:,} of {data.numel:,} sampled values "
                          f"(positions need the whole output, {human_count(data.output_numel or 0)} values)",
                          theme.ERROR))
    for remark in data.notes:
        parts.append(Text(remark, theme.DIM))
    return Group(*parts)
