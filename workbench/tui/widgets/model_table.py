"""The model as a collapsible table: one row per module, coloured by health."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeGuard

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.timer import Timer
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from workbench.engine.records import ModuleStats, ParamStats
from workbench.report.numbers import fmt_float, human_count
from workbench.tui import theme
from workbench.tui.render import shape_str
from workbench.tui.session import EngineView, ModuleRow, group_grad_norms

# Cells carry their own one-space gap (cell_padding=0) so the table fits
# beside the side panels at 120 columns. Number columns have fixed widths
# and their values are formatted to fit (never cropped: a cropped "2.05 K"
# reads as 2); the module column takes what is left and its names are cut
# with an ellipsis instead.
COLUMNS = (
    ("module", "module"),
    ("shape", " out shape"),
    ("params", " params"),
    ("mean", "  mean"),
    ("std", "   std"),
    ("min", "   min"),
    ("max", "   max"),
    ("zeros", "  0%"),
    ("naninf", "  NaN"),
    ("grad", "    ∇‖"),
    ("uw", "   u/w"),
)
WIDTH = {"params": 7, "mean": 6, "std": 6, "min": 6, "max": 6, "zeros": 4, "naninf": 5, "grad": 6, "uw": 6}
MIN_NAME_WIDTH = 12
DIGITS = 2
# Numbers that changed since the last phase flash this long, so the eye
# finds what the phase just touched.
FLASH_SECONDS = 0.8
NUMERIC = frozenset(key for key, _ in COLUMNS) - {"module", "params"}


def short_float(value: float | None, width: int = 5) -> str:
    """A number in at most ``width`` characters, as precise as that allows."""
    if value is None:
        return "·"
    if not math.isfinite(value):
        return fmt_float(value)
    candidates = [fmt_float(value, DIGITS), f"{value:.2g}", f"{value:.0f}" if abs(value) >= 1 else "",
                  f"{value:.1g}"]
    # Python pads exponents ("1e+03"); ours are shorter ("1e3", "6.3e-3").
    candidates = [c for c in candidates if c and "e+" not in c and "e-0" not in c]
    if value != 0:
        exponent = math.floor(math.log10(abs(value)))
        for digits in (1, 0):
            candidates.append(f"{value / 10 ** exponent:.{digits}f}e{exponent}")
    for text in candidates:
        if len(text) <= width:
            return text
    return candidates[-1]


def short_count(n: int, width: int = 4) -> str:
    """A count in at most ``width`` characters: 64, 2048, 922K, 14M."""
    text = str(n)
    for div, unit in ((1e3, "K"), (1e6, "M"), (1e9, "G")):
        if len(text) <= width:
            break
        text = f"{n / div:.1f}{unit}"
        if len(text) > width:
            text = f"{n / div:.0f}{unit}"
    return text


class ModelTable(DataTable):
    """Rows follow the engine's module order; space/enter folds a subtree."""

    BINDINGS = [
        Binding("space", "toggle_node", "fold", show=False),
        Binding("left", "collapse_node", "collapse", show=False),
        Binding("right", "expand_node", "expand", show=False),
    ]

    class ModuleSelected(Message):
        """The highlighted module changed (the inspector follows it)."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, cell_padding=0, **kwargs)
        self.view: EngineView | None = None
        self.collapsed: set[str] = set()
        self._row_names: list[str] = []
        self._cells: dict[str, tuple[Text, ...]] = {}
        self._selected: str | None = None
        self._name_width = 0  # the module column's width the rows were cut to
        self._flashing: set[tuple[str, int]] = set()  # (row, column index) shown in the flash style
        self._flash_timer: Timer | None = None

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key, width=WIDTH.get(key))

    def on_resize(self) -> None:
        self._refresh_rows()  # the module column takes the new width

    # -- data --------------------------------------------------------------------
    def show(self, view: EngineView | None, flash: bool = False) -> None:
        """Redraw from ``view``; with ``flash``, numbers that changed flash briefly."""
        self.view = view
        self._refresh_rows(flash)

    def select_module(self, name: str) -> None:
        """Unfold the module's ancestors and move the cursor onto it."""
        if self.view is None:
            return
        nodes = {n.name: n for n in self.view.modules}
        node = nodes.get(name)
        while node is not None and node.parent is not None:
            self.collapsed.discard(node.parent)
            node = nodes.get(node.parent)
        self._refresh_rows()
        if name in self._row_names:
            self.move_cursor(row=self._row_names.index(name))

    @property
    def selected(self) -> str | None:
        return self._selected

    def _visible(self) -> list[ModuleRow]:
        assert self.view is not None
        hidden: set[str] = set()
        rows = []
        for node in self.view.modules:
            if node.parent is not None and (node.parent in hidden or node.parent in self.collapsed):
                hidden.add(node.name)
                continue
            rows.append(node)
        return rows

    def _refresh_rows(self, flash: bool = False) -> None:
        if self.view is None:
            self.clear()
            self._row_names, self._cells = [], {}
            self._flashing.clear()
            return
        view = self.view
        nodes = self._visible()
        names = [n.name for n in nodes]
        stats = view.module_stats()
        fresh = view.fresh_modules()
        # Gradients of this step exist after its backward, updates after its
        # optimizer step; until then the previous step's show, dimmed.
        current_params = tuple(view.current.params) if view.current is not None else ()
        last = view.last_measured  # with stats every k steps: the last step that measured them
        last_params = tuple(last.params) if last is not None else ()
        grad_fresh = bool(current_params)
        grad_norms = group_grad_norms(current_params or last_params)
        uw_fresh = any(p.update_ratio is not None for p in current_params)
        uw = _update_ratios(current_params if uw_fresh else last_params)
        health = _health(view)
        batch_size = view.batch_size()
        cells = {n.name: _row(n, stats.get(n.name), n.name in fresh, grad_norms.get(n.name), grad_fresh,
                             uw.get(n.name), uw_fresh, health.get(n.name), n.name in self.collapsed, batch_size)
                 for n in nodes}
        name_width = self._fit_names(cells)
        if names != self._row_names or name_width != self._name_width:
            self._name_width = name_width
            keep = self._selected
            self.clear()
            self._flashing.clear()
            for name in names:
                self.add_row(*cells[name], key=name)
            self._row_names = names
            if keep in names:
                self.move_cursor(row=names.index(keep), animate=False)
        else:
            for name in names:
                old: tuple[Text | None, ...] = self._cells.get(name) or (None,) * len(cells[name])
                for index, ((key, _), before, after) in enumerate(zip(COLUMNS, old, cells[name])):
                    # Text equality ignores the base style: compare it too, or a
                    # number turning dim (or back) would never be redrawn.
                    if _look(before) == _look(after):
                        continue
                    shown = after
                    if flash and key in NUMERIC and _measured(before) and before.plain != after.plain:
                        shown = after.copy()
                        shown.stylize(theme.FLASH)
                        self._flashing.add((name, index))
                    # Grow a column for a wider value, never shrink it: widths stay put while stepping.
                    grow = after.cell_len > self.columns[key].content_width  # type: ignore[index]
                    self.update_cell(name, key, shown, update_width=grow)
        self._cells = cells
        if self._flashing:
            if self._flash_timer is not None:
                self._flash_timer.stop()
            self._flash_timer = self.set_timer(FLASH_SECONDS, self._end_flash)

    def _fit_names(self, cells: dict[str, tuple[Text, ...]]) -> int:
        """Cut module names to the width the number columns leave (returns that width)."""
        shape_width = max([len(COLUMNS[1][1])] + [c[1].cell_len for c in cells.values()])
        current = self.columns.get(ColumnKey("shape"))
        if current is not None:
            shape_width = max(shape_width, current.content_width)
        # Room for a vertical scrollbar is kept once the rows (and the header) outgrow the
        # panel, so the last column never slides under it; rows that fit give it to the names.
        # (A fold or a resize that changes this redraws the rows: both come through here.)
        usable = self.content_region.width
        if len(cells) + 1 > self.content_region.height:
            usable -= self.styles.scrollbar_size_vertical
        room = usable - shape_width - sum(WIDTH.values())
        width = max(room, MIN_NAME_WIDTH) if room > 0 or self.size.width else 10_000
        for row in cells.values():
            _cut_name(row[0], width)
        return width

    def _end_flash(self) -> None:
        flashing, self._flashing = self._flashing, set()
        for name, index in flashing:
            row = self._cells.get(name)
            if row is not None and name in self._row_names:
                self.update_cell(name, COLUMNS[index][0], row[index])

    @property
    def flashing(self) -> set[tuple[str, str]]:
        """(module, column) cells flashing now: numbers the last phase changed."""
        return {(name, COLUMNS[index][0]) for name, index in self._flashing}

    # -- folding -----------------------------------------------------------------
    def _cursor_name(self) -> str | None:
        if not self._row_names or self.cursor_row < 0 or self.cursor_row >= len(self._row_names):
            return None
        return self._row_names[self.cursor_row]

    def _has_children(self, name: str) -> bool:
        return any(n.name == name and n.children for n in (self.view.modules if self.view else ()))

    def action_toggle_node(self) -> None:
        name = self._cursor_name()
        if name is None or not self._has_children(name):
            return
        self.collapsed.symmetric_difference_update({name})
        self._refresh_rows()

    def action_collapse_node(self) -> None:
        name = self._cursor_name()
        if name is not None and self._has_children(name) and name not in self.collapsed:
            self.collapsed.add(name)
            self._refresh_rows()

    def action_expand_node(self) -> None:
        name = self._cursor_name()
        if name is not None and name in self.collapsed:
            self.collapsed.discard(name)
            self._refresh_rows()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_toggle_node()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        name = event.row_key.value if event.row_key is not None else None
        if name is not None and name != self._selected:
            self._selected = name
            self.post_message(self.ModuleSelected(name))


def _cut_name(name: Text, width: int) -> None:
    """Cut a module's cell to ``width``: the dim type name after it goes first, and whole
    when less than three letters of it would show ("features S…" said nothing the fold did not)."""
    if name.cell_len <= width:
        return
    kind = [span for span in name.spans if span.style == theme.DIM]  # " Sequential", from _row
    start = kind[-1].start if kind else None
    if start is not None and start <= width and width - 1 - (start + 1) < 3:
        name.truncate(start)
    else:
        name.truncate(width, overflow="ellipsis")


def _update_ratios(params: Iterable[ParamStats]) -> dict[str, float | None]:
    """The largest update/weight ratio among a module's own parameters."""
    out: dict[str, float | None] = {}
    for p in params:
        r = p.update_ratio
        if r is None:
            continue
        prev = out.get(p.module)
        if prev is None or (math.isfinite(r) and r > prev) or not math.isfinite(r):
            out[p.module] = r
    return out


def _health(view: EngineView) -> dict[str, str]:
    """Worst finding severity per module, in the step in progress or the last one."""
    steps = {view.step, view.step - 1}
    out: dict[str, str] = {}
    for f in view.findings:
        if f.step in steps and f.module is not None:
            if theme.SEVERITY_RANK.get(f.severity, -1) > theme.SEVERITY_RANK.get(out.get(f.module, ""), -1):
                out[f.module] = f.severity
    return out


def _look(cell: Text | None) -> tuple[str, str] | None:
    return None if cell is None else (cell.plain, str(cell.style))


def _measured(cell: Text | None) -> TypeGuard[Text]:
    """The cell held a number (not blank or the "not measured" dot)."""
    return cell is not None and cell.plain.strip() not in ("", "·")


def _zeros(fraction: float | None, style: str) -> Text:
    """The share of exact zeros in the output, in percent: a ReLU layer at 90+ has dead units."""
    if fraction is None or not math.isfinite(fraction):
        return _cell("·", theme.DIM)
    percent = round(fraction * 100)
    if percent == 0 and fraction > 0:
        return _cell("<1", style)
    return _cell(str(percent), style)


def _cell(text: str, style: str = "") -> Text:
    return Text(" " + text, style, justify="right")


def _num(value: float | None, style: str) -> Text:
    if value is not None and not math.isfinite(value):
        return _cell(fmt_float(value), theme.ERROR)
    return _cell(short_float(value), style if value is not None else theme.DIM)


def _row(node: ModuleRow, stats: ModuleStats | None, fresh: bool, grad: float | None, grad_fresh: bool,
         uw: float | None, uw_fresh: bool, severity: str | None, collapsed: bool,
         batch_size: int = 0) -> tuple[Text, ...]:
    fold = ("▸ " if collapsed else "▾ ") if node.children else "  "
    icon = theme.severity_icon(severity) if severity in ("error", "warning") else " "
    name_style = theme.severity_style(severity) if severity in ("error", "warning") else ""
    name = Text("  " * max(node.depth - 1, 0) + icon + fold + node.short, name_style)
    if node.name:  # the title bar already names the model's class
        name.append(" " + node.type_name, theme.DIM)
    # Numbers from an earlier step are dim: not measured in this step yet.
    style = "" if fresh else theme.DIM
    if stats is None:
        values: tuple[Text, ...] = tuple(_cell("·", theme.DIM) for _ in range(6))
        naninf = _cell("·", theme.DIM)
    else:
        values = (
            _cell(shape_str(stats.shape, batch_size), style),
            _num(stats.mean, style), _num(stats.std, style), _num(stats.min, style),
            _num(stats.max, style), _zeros(stats.zero_fraction, style),
        )
        bad = (stats.nan_count or 0) + (stats.inf_count or 0)
        naninf = _cell(short_count(bad) if bad else "0", theme.ERROR if bad else style)
    params = _cell(human_count(node.num_params) if node.num_params else "·",
                   "" if node.num_params else theme.DIM)
    return (name, values[0], params, *values[1:], naninf,
            _num(grad, "" if grad_fresh else theme.DIM), _num(uw, "" if uw_fresh else theme.DIM))
