"""Rich rendering of bench results: hardware line, comparison table, speedup bars, compare."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from workbench.bench.compare import Comparison
from workbench.bench.results import BenchRun, VariantResult
from workbench.report.numbers import fmt_float, fmt_ms, human_bytes, human_count

STATUS_STYLE = {"ok": "green", "skipped": "yellow", "failed": "red"}


def hardware_line(run: BenchRun) -> Text:
    s = run.settings
    return Text.assemble(
        ("hardware ", "bold"), run.hardware.summary(), "\n",
        ("bench    ", "bold"),
        f"{run.scenario} on {run.device}: {s.warmup} warm-up + {s.steps} timed steps "
        f"(blocks of {s.block}), {s.batches} fixed batches of {s.batch_size}, "
        f"{s.threads} torch threads",
    )


def quality(r: VariantResult, baseline: VariantResult | None) -> str:
    """Final loss and its difference from fp32, or the int8 error and agreement."""
    if "max_abs_error" in r.extras:
        agree = r.extras.get("argmax_agreement")
        text = f"max err {fmt_float(r.extras['max_abs_error'])}"
        return text + (f", argmax {agree:.1%}" if agree is not None else "")
    if r.final_loss is None:
        return "·"
    text = f"loss {fmt_float(r.final_loss, 4)}"
    if baseline is not None and baseline.final_loss is not None and r is not baseline:
        delta = r.final_loss - baseline.final_loss
        text += f" ({'+' if delta >= 0 else ''}{fmt_float(delta, 2)})"
    return text


def notes(r: VariantResult) -> str:
    """The one or two extras that matter most for this kind of row (warnings go below)."""
    if not r.ok:
        return f"{r.status}: {r.reason}"
    e = r.extras
    parts = []
    if r.speedup_basis and r.speedup_basis != "fp32":
        parts.append(f"speedup vs {r.speedup_basis}")
    if "allreduce_share" in e:
        parts.append(f"{e['backend']}: all-reduce {e['allreduce_share']:.0%} of fwd+bwd")
        parts.append("params equal on all ranks" if e.get("params_identical") else "PARAMS DIFFER")
        parts.append(f"launch {e['launch_wall_s']:.1f} s")
    if "quantized_layers" in e:
        parts.append(f"{len(e['quantized_layers'])} layer(s) int8, {len(e['float_layers'])} left float")
        parts.append(f"size ÷{e['size_ratio']:.2f}")
    if e.get("pipeline_samples_per_s"):
        parts.append(f"loader alone {human_count(e['pipeline_samples_per_s'])} samples/s")
    if e.get("compile_s") is not None:
        parts.append(f"compile {e['compile_s']:.1f} s")
    if e.get("gradscaler_skipped_steps"):
        parts.append(f"GradScaler skipped {e['gradscaler_skipped_steps']} step(s)")
    if "micro_batch_size" in e:
        parts.append(f"micro-batch {e['micro_batch_size']:g}")
    if "autocast_dtype" in e:
        parts.append(f"autocast {e['autocast_dtype']}")
    return "; ".join(parts)


def bench_table(run: BenchRun) -> Table:
    baseline = run.get("fp32")
    table = Table(title=f"bench: {run.scenario}" + (" (interrupted: partial)" if run.interrupted else ""),
                  title_justify="left")
    table.add_column("variant", no_wrap=True)
    for col in ("median", "IQR", "min", "samples/s", "speedup", "peak mem"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("quality")
    table.add_column("notes", ratio=1, min_width=28)
    for r in run.results:
        style = STATUS_STYLE[r.status]
        if not r.ok or r.timing is None:
            table.add_row(Text(r.name, style=style), "", "", "", "", "", "", "", Text(notes(r), style=style))
            continue
        t = r.timing
        iqr = Text(fmt_ms(t.iqr), style="yellow" if t.noisy else "")
        table.add_row(
            Text(r.name, style=style), fmt_ms(t.median), iqr, fmt_ms(t.min),
            human_count(t.throughput) if t.throughput else "·",
            f"{r.speedup:.2f}×" if r.speedup is not None else "·", human_bytes(r.peak_memory),
            quality(r, baseline), notes(r),
        )
    return table


def speedup_bars(run: BenchRun, width: int = 40) -> RenderableType:
    """One bar per ok row, scaled to the largest speedup; the 1.0× mark is fp32."""
    rows = [r for r in run.results if r.ok and r.speedup is not None]
    if not rows:
        return Text("no speedups to chart")
    top = max(max(r.speedup or 0 for r in rows), 1.0)
    name_w = max(len(r.name) for r in rows)
    lines = [Text("speedup (× the fp32 training step; int8: × fp32 inference)", style="bold")]
    for r in rows:
        n = max(1, round((r.speedup or 0) / top * width))
        style = "green" if (r.speedup or 0) >= 1.0 else "red"
        bar = "█" * n + " " * (width - n)
        lines.append(Text.assemble(f"{r.name:<{name_w}} ", (bar, style), f" {r.speedup:.2f}×"))
    return Group(*lines)


def method_notes(run: BenchRun) -> list[str]:
    methods = sorted({r.memory_method for r in run.results if r.ok and r.memory_method})
    out = [f"peak memory: {m}" for m in methods]
    apis = sorted({str(r.extras["api"]) for r in run.results if r.ok and "api" in r.extras})
    out += [f"api: {a}" for a in apis]
    for r in run.results:
        if r.status == "failed":
            out.append(f"✖ {r.name} failed: {r.reason}")
        for w in r.warnings:
            out.append(f"⚠ {r.name}: {w}")
    return out


def render_run(run: BenchRun) -> RenderableType:
    parts: list[RenderableType] = [hardware_line(run), bench_table(run), speedup_bars(run)]
    parts += [Text(n, style="dim") for n in method_notes(run)]
    return Group(*parts)


def compare_table(cmp: Comparison) -> RenderableType:
    table = Table(title=f"bench compare: {cmp.old.scenario} (old {cmp.old.started or '?'} → "
                        f"new {cmp.new.started or '?'}), threshold ±{cmp.threshold:.0%}",
                  title_justify="left")
    for col in ("variant", "old median", "new median", "change", "verdict", "note"):
        table.add_column(col, justify="right" if "median" in col or col == "change" else "left")
    styles = {"slower": "red", "regressed": "red", "faster": "green", "fixed": "green"}
    for c in cmp.changes:
        change = f"{c.change:+.1%}" if c.change is not None else "·"
        table.add_row(c.name, fmt_ms(c.old_s), fmt_ms(c.new_s), change,
                      Text(c.verdict, style=styles.get(c.verdict, "")), c.note)
    parts: list[RenderableType] = [table]
    parts += [Text("note: " + n, style="yellow") for n in cmp.notes]
    verdict = (f"{len(cmp.regressions)} regression(s) past {cmp.threshold:.0%}" if cmp.regressions
               else f"no regression past {cmp.threshold:.0%}")
    parts.append(Text(verdict, style="red bold" if cmp.regressions else "green"))
    return Group(*parts)
