"""Rich rendering of profiler runs and their analysis (pure: data in, renderables out)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.text import Text

from workbench.profiling.advice import GPU_ONLY, THRESHOLDS, Recommendation
from workbench.profiling.analysis import CATEGORIES, CATEGORY_LABELS, Category, TraceAnalysis, top_operators
from workbench.profiling.capture import ProfileRun, SizeEstimate
from workbench.profiling.runs import RunAnalysis
from workbench.profiling.tensorboard import tensorboard_command
from workbench.report.numbers import human_bytes
from workbench.report.text import Table

# One colour per category, shared by the terminal report and the TUI bar.
CATEGORY_STYLES = {
    Category.KERNEL: "green",
    Category.MEMCPY: "yellow",
    Category.MEMSET: "dark_orange",
    Category.COMMUNICATION: "magenta",
    Category.RUNTIME: "red",
    Category.DATALOADER: "blue",
    Category.CPU_EXEC: "cyan",
    Category.OTHER: "grey50",
}
MAX_STEP_COLUMNS = 6
_SPARK = "▁▂▃▄▅▆▇█"


def _ms(us: float) -> str:
    return f"{us / 1e3:.2f}"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def stacked_bar(analysis: TraceAnalysis, width: int = 60) -> Text:
    """The mean step as one bar, one coloured segment per category."""
    text = Text()
    total = analysis.mean_step_us
    if total <= 0:
        return Text("(no steps)", style="dim")
    used = 0
    shares = [(c, analysis.mean(c) / total) for c in CATEGORIES]
    for i, (cat, share) in enumerate(shares):
        cells = round(share * width) if i < len(shares) - 1 else width - used
        cells = max(0, min(cells, width - used))
        used += cells
        text.append("█" * cells, style=CATEGORY_STYLES[cat])
    return text


def bar_legend(analysis: TraceAnalysis) -> Text:
    text = Text()
    for cat in CATEGORIES:
        share = analysis.share(cat)
        if share <= 0:
            continue
        text.append("■ ", style=CATEGORY_STYLES[cat])
        text.append(f"{CATEGORY_LABELS[cat]} {_pct(share)}  ")
    return text


def breakdown_table(analysis: TraceAnalysis) -> Table:
    """Categories x (mean, share, each step): each step's column sums to its step time."""
    steps = analysis.steps[:MAX_STEP_COLUMNS]
    more = len(analysis.steps) - len(steps)
    title = f"step time breakdown, ms ({len(analysis.steps)} profiled steps"
    title += f", first {len(steps)} shown)" if more else ")"
    table = Table(title=title, title_justify="left")
    table.add_column("category", no_wrap=True)
    table.add_column("mean", justify="right")
    table.add_column("share", justify="right")
    for s in steps:
        table.add_column(s.name.replace("ProfilerStep", "step "), justify="right")
    for cat in CATEGORIES:
        # Device-side rows mean nothing in a CPU-only trace; keep any row with time in it.
        device_only = cat in ("kernel", "memcpy", "memset", "runtime", "communication")
        if device_only and not analysis.has_device_events and analysis.mean(cat) == 0:
            continue
        table.add_row(
            Text(CATEGORY_LABELS[cat], style=CATEGORY_STYLES[cat]),
            _ms(analysis.mean(cat)),
            _pct(analysis.share(cat)),
            *(_ms(s.time(cat)) for s in steps),
        )
    table.add_section()
    table.add_row(
        Text("step time", style="bold"), _ms(analysis.mean_step_us), "100%",
        *(_ms(s.duration_us) for s in steps),
    )
    return table


def phase_table(analysis: TraceAnalysis, top: int = 10) -> Table | None:
    phases = [m for m in analysis.modules if m.kind == "phase"]
    modules = [m for m in analysis.modules if m.kind == "module"][:top]
    if not phases and not modules:
        return None
    n = max(len(analysis.steps), 1)
    device = analysis.has_device_events
    table = Table(title="phases and modules (mean per step, ms)", title_justify="left", min_width=60)
    table.add_column("range", no_wrap=True)
    table.add_column("calls", justify="right")
    table.add_column("host", justify="right")
    table.add_column("self host", justify="right")
    if device:
        table.add_column("device", justify="right")
    inside = analysis.loss_inside_model
    for m in phases:
        if inside and m.name == "loss":
            # Its ~0 ms would read as "the loss is free": the loss's time is in the forward row.
            dim = Text("·", style="dim")
            row = [m.name, str(m.calls), Text("inside forward", style="yellow"), dim]
            table.add_row(*row, *([dim] if device else []))
            continue
        name = "forward (+ loss inside the model)" if inside and m.name == "forward" else m.name
        row = [name, str(m.calls), _ms(m.host_us / n), _ms(m.self_host_us / n)]
        table.add_row(*row, *([_ms(m.device_us / n)] if device else []))
    if modules:
        table.add_section()
        for m in modules:
            row = [f"nn.Module {m.name}", str(m.calls), _ms(m.host_us / n), _ms(m.self_host_us / n)]
            table.add_row(*row, *([_ms(m.device_us / n)] if device else []))
    return table


def loss_source_line(analysis: TraceAnalysis) -> Text | None:
    """Where the loss came from, when the model computed it (None for a loss_fn, or when
    the trace does not say)."""
    if not analysis.loss_inside_model:
        return None
    return Text(
        f"loss: computed inside the model ({analysis.loss_source}), so its time is part of forward; "
        "the loss phase only reads it. Timing it on its own would need a record_function range in "
        "the model's code; its operators are in the operator table.",
        style="yellow",
    )


def operator_table(analysis: TraceAnalysis, top: int = 15) -> Table:
    device = analysis.has_device_events
    ops = top_operators(analysis.operators, top)
    order = "self device time" if any(o.self_device_us > 0 for o in ops) else "self CPU time"
    table = Table(title=f"top {len(ops)} operators by {order} (all profiled steps, ms)", title_justify="left",
                  min_width=72)
    table.add_column("operator", overflow="fold")
    table.add_column("calls", justify="right")
    table.add_column("self CPU", justify="right")
    table.add_column("total CPU", justify="right")
    if device:
        table.add_column("self device", justify="right")
        table.add_column("total device", justify="right")
    if analysis.record_shapes:
        table.add_column("input shapes", overflow="fold", max_width=40)
    for o in ops:
        row = [o.name, str(o.calls), _ms(o.self_cpu_us), _ms(o.total_cpu_us)]
        if device:
            row += [_ms(o.self_device_us), _ms(o.total_device_us)]
        if analysis.record_shapes:
            row.append(o.input_shapes or "")
        table.add_row(*row)
    return table


def kernel_table(analysis: TraceAnalysis, top: int = 10) -> Table:
    kernel_total = sum(k.total_us for k in analysis.kernels) or 1.0
    table = Table(title=f"top {min(top, len(analysis.kernels))} kernels (all profiled steps, ms)",
                  title_justify="left", min_width=72)
    table.add_column("kernel", overflow="fold")
    table.add_column("calls", justify="right")
    table.add_column("total", justify="right")
    table.add_column("share", justify="right")
    table.add_column("max", justify="right")
    table.add_column("Tensor Cores", justify="center")
    for k in analysis.kernels[:top]:
        table.add_row(k.name, str(k.calls), _ms(k.total_us), _pct(k.total_us / kernel_total), _ms(k.max_us),
                      Text("yes", style="green") if k.tensor_core else Text("no", style="dim"))
    return table


def sparkline(values: Sequence[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1
    return "".join(_SPARK[min(int((v - lo) / span * len(_SPARK)), len(_SPARK) - 1)] for v in values)


def memory_table(analysis: TraceAnalysis) -> RenderableType:
    if not analysis.memory:
        return Text("memory: not recorded (profile with --memory)", style="dim")
    table = Table(title="memory (profiler [memory] events)", title_justify="left")
    for col in ("device", "start", "peak", "end", "peak at", "capacity", "curve"):
        table.add_column(col, justify="left" if col in ("device", "peak at", "curve") else "right")
    for m in analysis.memory:
        where = f"{m.peak_at_ms:.1f} ms"
        if m.peak_step:
            where += f", {m.peak_step.replace('ProfilerStep', 'step ')}"
        if m.peak_phase:
            where += f" {m.peak_phase}"
        cap = human_bytes(m.capacity_bytes) if m.capacity_bytes else "·"
        if m.capacity_bytes:
            cap += f" ({_pct(m.peak_bytes / m.capacity_bytes)} used)"
        table.add_row(
            m.device, human_bytes(m.start_bytes), human_bytes(m.peak_bytes), human_bytes(m.end_bytes),
            where, cap, sparkline([a for _, a in m.points]),
        )
    if any(m.device == "cpu" for m in analysis.memory):
        table.caption = "cpu: bytes allocated since profiling began (the CPU allocator keeps no total)"
        table.caption_justify = "left"
    return table


def recommendations_view(recs: Sequence[Recommendation], scenario: str | None = None,
                         on_gpu: bool = True) -> RenderableType:
    """The rules that fired; with none, what was checked (and, on a CPU run, which rules cannot apply)."""
    target = scenario or "SCENARIO"
    if not recs:
        checked = [t for name, t in THRESHOLDS if on_gpu or name not in GPU_ONLY]
        text = Text("No rule fired. Checked: ", style="green")
        text.append("; ".join(checked), style="dim")
        if not on_gpu:
            skipped = ", ".join(name for name, _ in THRESHOLDS if name in GPU_ONLY)
            text.append(f"\nNot applicable on this CPU run (they read GPU kernels and memory): {skipped}.",
                        style="dim")
        return text
    table = Table(title="recommendations", title_justify="left", show_lines=True)
    table.add_column("rule", no_wrap=True, style="bold")
    table.add_column("finding and advice", overflow="fold", ratio=3)
    table.add_column("fired because", overflow="fold", ratio=1)
    # A `try` command is copied and pasted: it is never folded, and its column is as wide as
    # the longest one (the prose columns wrap around it instead).
    cells = [Text(cmd, style="cyan") if cmd else Text("no bench variant measures this", style="dim")
             for cmd in (r.command(target) for r in recs)]
    table.add_column("try", no_wrap=True, min_width=max(c.cell_len for c in cells))
    for r, cell in zip(recs, cells):
        table.add_row(r.rule, r.message, f"{r.threshold} (measured {r.measured})" if r.measured else r.threshold,
                      cell)
    return table


def worker_view(analysis: TraceAnalysis, top: int = 15) -> Group:
    head = Text()
    head.append(f"{analysis.worker}", style="bold")
    if analysis.span:
        head.append(f"  span {analysis.span}", style="dim")
    head.append(f"  {analysis.path}", style="dim")
    parts: list[RenderableType] = [head]
    for note in analysis.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    for d in analysis.devices:
        cc = f", compute capability {d.compute_major}.{d.compute_minor}" if d.compute_major is not None else ""
        parts.append(Text(f"GPU {d.index}: {d.name}, {human_bytes(d.total_memory)}{cc}", style="dim"))
    if analysis.gpu_utilization is not None:
        parts.append(Text(f"GPU kernel-busy share: {_pct(analysis.gpu_utilization)}"))
    if not analysis.steps:
        return Group(*parts)
    parts += [stacked_bar(analysis), bar_legend(analysis), breakdown_table(analysis)]
    phases = phase_table(analysis)
    if phases is not None:
        parts.append(phases)
    loss_line = loss_source_line(analysis)
    if loss_line is not None:
        parts.append(loss_line)
    if not analysis.with_stack:
        parts.append(Text("nn.Module ranges need --stack (Python tracing)", style="dim"))
    parts.append(operator_table(analysis, top))
    if not analysis.record_shapes:
        parts.append(Text("input shapes need --shapes (record_shapes)", style="dim"))
    if analysis.kernels:
        parts.append(kernel_table(analysis, min(top, 10)))
    parts.append(memory_table(analysis))
    return Group(*parts)


def run_view(run: RunAnalysis, top: int = 15) -> Group:
    head = Text()
    head.append(f"run {run.run}", style="bold")
    head.append(f"  {run.run_dir}", style="dim")
    if run.scenario:
        head.append(f"  scenario {run.scenario}")
    if run.device:
        head.append(f" on {run.device}")
    parts: list[RenderableType] = [head]
    parts += [worker_view(w, top) for w in run.workers]
    parts.append(recommendations_view(run.recommendations, run.scenario, on_gpu=ran_on_gpu(run)))
    if run.earlier_traces:
        parts.append(Text(
            f"{len(run.earlier_traces)} trace file(s) of an earlier profile in this run (added with --append) "
            f"not analysed: {', '.join(run.earlier_traces[:4])}{' …' if len(run.earlier_traces) > 4 else ''}; "
            "TensorBoard shows them together.", style="dim"))
    if run.other_runs:
        others = ", ".join(run.other_runs[-5:])
        parts.append(Text(
            f"{len(run.other_runs)} older run(s) in this logdir not analysed ({others}); "
            f"pass --analyze {run.run_dir.parent}/<run> for one of them.", style="dim"))
    return Group(*parts)


def ran_on_gpu(run: RunAnalysis) -> bool:
    """The run had a CUDA device (its sidecar says so), or its traces hold device kernels."""
    return bool((run.device or "").startswith("cuda") or any(w.has_device_events for w in run.workers))


def estimate_line(size: SizeEstimate) -> Text:
    kind = "gzip" if size.gzip else "JSON"
    return Text(
        f"trace size estimate: {human_bytes(size.total_bytes)} {kind} "
        f"({human_bytes(size.bytes_per_step)}, {size.events_per_step:,} events per step, "
        f"x {size.active_steps} active steps" + (f" x {size.workers} ranks)" if size.workers > 1 else ")"),
        style="dim",
    )


def files_view(result: ProfileRun) -> Group:
    lines: list[RenderableType] = []
    ranks = f" x {result.ranks} DDP ranks" if result.ranks > 1 else ""
    lines.append(Text(f"profiled {result.steps} steps of {result.scenario} on {result.device}{ranks} "
                      f"in {result.wall_s:.1f} s", style="bold"))
    for f in result.files:
        lines.append(Text(f"  wrote {f} ({human_bytes(f.stat().st_size)})"))
    if not result.files:
        lines.append(Text("  no trace file was written (interrupted before the active steps?)", style="red"))
    lines.append(Text("view it in TensorBoard (PyTorch Profiler tab):"))
    lines.append(Text(f"  {tensorboard_command(result.logdir)}", style="cyan"))
    lines.append(Text("or open the .pt.trace.json in https://ui.perfetto.dev or chrome://tracing", style="dim"))
    if result.stderr_log is not None:
        lines.append(Text(f"profiler log lines (C++ warnings) went to {result.stderr_log}", style="dim"))
    return Group(*lines)


def print_run(console: Console, run: RunAnalysis, top: int = 15) -> None:
    console.print(run_view(run, top))
