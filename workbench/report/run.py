"""Rendering engine results for the headless `run` and `check` commands (rich)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.text import Text

from workbench.engine.records import SEVERITY_RANK, Finding, SeverityLevel, StepProgress, StepRecord, collapse_findings
from workbench.report.numbers import fmt_float, fmt_ms, human_bytes
from workbench.report.text import Table

SEVERITY_STYLE: dict[str, str] = {SeverityLevel.ERROR: "bold red", SeverityLevel.WARNING: "yellow", SeverityLevel.INFO: "cyan"}


@dataclass(frozen=True)
class FindingGroup:
    """Findings of one kind at one place, folded over steps."""

    kind: str
    severity: str
    module: str
    parameter: str | None
    first_step: int
    last_step: int
    count: int
    message: str  # the first occurrence's
    consequences: tuple[tuple[str, int], ...] = ()  # (kind, count) of the findings that follow from it

    @property
    def steps(self) -> str:
        return str(self.first_step) if self.count == 1 else f"{self.first_step}-{self.last_step} ({self.count}x)"

    @property
    def consequence_text(self) -> str:
        """"then nan_inf 4x, loss_divergence 4x", or ""."""
        return "then " + ", ".join(f"{k} {n}x" for k, n in self.consequences) if self.consequences else ""

    @property
    def where(self) -> str:
        return self.parameter or self.module or "(model)"


def group_findings(findings: Sequence[Finding]) -> list[FindingGroup]:
    """Fold repeated findings (same kind and place) into one row, worst first, then by step.

    A finding that follows from another (``cause``: a NaN loss from NaN data) is counted
    under its root's row, not given one of its own.
    """
    groups: dict[tuple[str, str, str | None], list[Finding]] = {}
    for f in collapse_findings(findings):
        groups.setdefault((f.kind, f.module, f.parameter), []).append(f)
    out = []
    for (kind, module, param), fs in groups.items():
        then: Counter[str] = Counter()
        for f in fs:
            for c in f.consequences:
                then[c.kind] += c.count
        last = max(f.step if f.last_step is None else f.last_step for f in fs)
        out.append(FindingGroup(kind, fs[0].severity, module, param, fs[0].step, last, sum(f.count for f in fs),
                                fs[0].message, tuple(then.items())))
    out.sort(key=lambda g: (-SEVERITY_RANK[g.severity], g.first_step))
    return out


def _zero_pct(x: float | None) -> str:
    return "·" if x is None else f"{x:.0%}"


def layer_table(record: StepRecord | StepProgress, title: str | None = None) -> Table:
    """Per-module forward stats (and output-gradient norm) of one measured step.

    min/max and the rest are in the JSON report; the table keeps what fits 80 columns.
    """
    # A light box: ten columns must still fit an 80-column terminal.
    table = Table(title=title or f"layers at step {record.step}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("module (type)", style="cyan", overflow="fold", min_width=18)
    table.add_column("output", overflow="fold", min_width=9)
    for column in ("mean", "std", "abs max"):
        table.add_column(column, justify="right", no_wrap=True, min_width=7)
    table.add_column("zeros", justify="right", no_wrap=True, min_width=5)
    table.add_column("nan/inf", justify="right", no_wrap=True)
    table.add_column("grad", justify="right", no_wrap=True, min_width=7)
    for m in record.modules:
        bad = (m.nan_count or 0) + (m.inf_count or 0)
        nan_inf = Text(f"{m.nan_count}/{m.inf_count}", style="bold red") if bad else Text("0", style="dim")
        if m.nan_count is None:
            nan_inf = Text("·")
        notes = []
        if m.dead_fraction:
            notes.append(f"dead {m.dead_fraction:.0%}")
        if m.saturated_fraction:
            notes.append(f"saturated {m.saturated_fraction:.0%}")
        if m.calls > 1:
            notes.append(f"called {m.calls}x (last shown)")
        if m.inputs_finite is False:
            notes.append("input NaN/Inf")
        label = Text(f"{m.name or '(model)'} ({m.type_name})")
        if notes:  # on a second line of the module cell: a column of its own does not fit 80 columns
            label.append("\n  " + ", ".join(notes), style="yellow")
        table.add_row(
            label,
            "x".join(map(str, m.shape)) if m.shape else "·",
            fmt_float(m.mean), fmt_float(m.std), fmt_float(m.abs_max),
            _zero_pct(m.zero_fraction), nan_inf, fmt_float(m.grad_norm),
        )
    return table


def param_table(record: StepRecord | StepProgress) -> Table:
    table = Table(title=f"parameters at step {record.step}", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    table.add_column("parameter", style="cyan", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("grad norm", justify="right")
    table.add_column("grad abs max", justify="right")
    table.add_column("weight norm", justify="right")
    table.add_column("update/weight", justify="right")
    for p in record.params:
        grad = fmt_float(p.grad_norm) if p.has_grad else Text("no grad", style="bold red")
        table.add_row(
            p.name, "x".join(map(str, p.shape)), grad, fmt_float(p.grad_abs_max),
            fmt_float(p.weight_norm), fmt_float(p.update_ratio),
        )
    return table


def findings_table(findings: Sequence[Finding], limit: int = 20) -> Table:
    groups = group_findings(findings)
    table = Table(title=f"findings ({len(findings)} in {len(groups)} groups)", title_justify="left")
    table.add_column("severity", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("where", style="cyan", no_wrap=True)
    table.add_column("steps", no_wrap=True, justify="right")
    table.add_column("message", overflow="fold")
    for g in groups[:limit]:
        message = Text(g.message)
        if g.consequences:
            message.append(f"\n{g.consequence_text}", style="dim")
        table.add_row(Text(g.severity, style=SEVERITY_STYLE[g.severity]), g.kind, g.where, g.steps, message)
    if len(groups) > limit:
        table.caption = f"{len(groups) - limit} more groups in the JSON report"
    return table


def run_line(summary: dict) -> Text:
    """One line: steps, loss, time per step and the debugger's own share."""
    parts = [f"{summary['steps_done']} steps"]
    if summary.get("final_loss") is not None:
        parts.append(f"loss {fmt_float(summary['first_loss'])} -> {fmt_float(summary['final_loss'])}")
    if summary.get("mean_step_seconds") is not None:
        parts.append(f"{fmt_ms(summary['mean_step_seconds'])}/step")
    if summary.get("instrument_fraction") is not None:
        parts.append(f"debugger {summary['instrument_fraction']:.0%} of it")
    if summary.get("peak_rss_bytes"):
        parts.append(f"RSS {human_bytes(summary['peak_rss_bytes'])}")
    if summary.get("peak_cuda_bytes"):
        parts.append(f"CUDA peak {human_bytes(summary['peak_cuda_bytes'])}")
    counts = summary["findings_by_severity"]
    text = Text(", ".join(parts) + "; ")
    text.append(f"{counts.get('error', 0)} errors", style="bold red" if counts.get("error") else "green")
    text.append(f", {counts.get('warning', 0)} warnings", style="yellow" if counts.get("warning") else "")
    return text


@dataclass(frozen=True)
class CheckResult:
    """One scenario's outcome in `workbench check`."""

    label: str
    path: str
    status: str  # "ok" | "warn" (warnings only) | "findings" (error findings) | "failed" | "interrupted"
    steps: int
    seconds: float
    final_loss: float | None
    errors: int
    warnings: int
    first_problem: str  # short: "nan_inf on norm at step 7", "RuntimeError at step 3 (forward)"
    findings: tuple[Finding, ...] = ()
    failure: str | None = None  # traceback (or the loader's full message) when it failed
    detail: str = ""  # the first problem in full: the finding's message or the error message
    notes: tuple[str, ...] = ()  # what else the user should know (threads it left running ...)


def check_table(results: Sequence[CheckResult]) -> Table:
    table = Table(title="workbench check", title_justify="left")
    table.add_column("scenario", style="cyan", no_wrap=True)
    table.add_column("result", no_wrap=True)
    # Numbers stay whole (never "9145… ms"); the free text column takes what room is left.
    for col in ("steps", "loss", "errors", "warnings", "time"):
        table.add_column(col, justify="right", no_wrap=True)
    problems = any(r.first_problem for r in results)
    if problems:
        table.add_column("first problem", overflow="fold", min_width=20)
    style = {"ok": "green", "warn": "yellow", "findings": "bold red", "failed": "bold red", "interrupted": "yellow"}
    word = {"ok": "ok", "warn": "warn", "findings": "errors", "failed": "FAILED", "interrupted": "stopped"}
    for r in results:
        cells = [Text(r.label), Text(word[r.status], style=style[r.status]), str(r.steps), fmt_float(r.final_loss),
                 str(r.errors), str(r.warnings), fmt_ms(r.seconds)]
        table.add_row(*cells, *([Text(r.first_problem)] if problems else []))
    return table
