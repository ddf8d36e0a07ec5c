"""Rich rendering of bench results: hardware line, comparison table, speedup bars, compare."""

from __future__ import annotations

import re

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.text import Text

from workbench.bench.compare import Comparison
from workbench.bench.results import BenchRun, Timing, VariantResult
from workbench.report.numbers import fmt_float, fmt_ms, human_bytes, human_count
from workbench.report.text import Table

STATUS_STYLE = {"ok": "green", "skipped": "yellow", "failed": "red"}
# Narrower consoles (80-column CI logs, pipes) get the notes under the table, not in it.
WIDE = 150


def hardware_line(run: BenchRun) -> Text:
    s = run.settings
    if s.budget_s is not None:
        timed = (f"up to {s.steps} timed steps (timing stops after {s.budget_s:g} s once "
                 f"{s.min_samples} are in; --steps N times exactly N)")
    else:
        timed = f"{s.steps} timed steps"
    load = f"; load average {run.load[0]:.2f} → {run.load[1]:.2f}" if run.load else ""
    return Text.assemble(
        ("hardware ", "bold"), run.hardware.summary(), load, "\n",
        ("bench    ", "bold"),
        f"{run.scenario} on {run.device}: {s.warmup} warm-up + {timed}, blocks of {s.block}, "
        f"{s.batches} fixed batches of {s.batch_size}, {s.threads} torch threads"
        + (f" (the scenario's build() set them; the machine's {run.hardware.threads} above)"
           if s.threads != run.hardware.threads else ""),
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
    reference = r.baseline_loss
    if reference is None and baseline is not None and r is not baseline and r.steps_trained is None:
        reference = baseline.final_loss  # a file from before steps were recorded
    if reference is not None and r is not baseline:
        delta = r.final_loss - reference
        text += f" ({'+' if delta >= 0 else ''}{fmt_float(delta, 2)})"
    return text


def notes(r: VariantResult, baseline: VariantResult | None = None) -> str:
    """The one or two extras that matter most for this kind of row (warnings go below)."""
    if not r.ok:
        return f"{r.status}: {r.reason}"
    e = r.extras
    parts = []
    t = r.timing
    if t is not None and t.cut_short:
        parts.append(f"timed {t.timed_steps}/{t.planned_steps} steps ({t.budget_s:g} s budget)")
    if (r.baseline_loss is not None and baseline is not None and r.steps_trained is not None
            and r.steps_trained != baseline.steps_trained):
        parts.append(f"loss vs fp32 after {r.steps_trained} steps")
    if r.speedup_basis and r.speedup_basis != "fp32":
        parts.append(f"speedup vs {r.speedup_basis}")
    if "allreduce_share" in e:
        parts.append(f"{e['backend']}: all-reduce {e['allreduce_share']:.0%} of fwd+bwd")
        parts.append("params equal on all ranks" if e.get("params_identical") else "PARAMS DIFFER")
        parts.append(f"launch {e['launch_wall_s']:.1f} s")
        if e.get("timeout_s") is not None:
            parts.append(f"stall timeout {e['timeout_s']:.0f} s")
    if "quantized_layers" in e:
        parts.append(f"{len(e['quantized_layers'])} layer(s) int8, {len(e['float_layers'])} left float")
        parts.append(f"size ÷{e['size_ratio']:.2f}")
    if e.get("pipeline_samples_per_s"):
        parts.append(f"loader alone {human_count(e['pipeline_samples_per_s'])} samples/s")
    if e.get("compile_s") is not None:
        parts.append(f"compile {e['compile_s']:.1f} s")
    if e.get("gradscaler_skipped_steps"):
        parts.append(f"GradScaler skipped {e['gradscaler_skipped_steps']} step(s)")
    sizes = e.get("micro_batch_sizes")
    if sizes and len(set(sizes)) > 1:  # 8 in 3: 3, 3, 2 (not "2.66667")
        parts.append(f"micro-batches {', '.join(map(str, sizes))}")
    elif "micro_batch_size" in e:
        parts.append(f"micro-batch {e['micro_batch_size']:g}")
    if e.get("batchnorm_per_micro_batch"):
        parts.append("BatchNorm statistics per micro-batch: the loss differs by that too")
    if "autocast_dtype" in e:
        parts.append(f"autocast {e['autocast_dtype']}")
    return "; ".join(parts)


def is_inference(r: VariantResult) -> bool:
    """A row timed against fp32 *inference* (int8), not the fp32 training step.

    Those rows measure another thing (a forward on the eval batches, no
    backward, no optimizer) and belong in their own section: beside the
    training rows their speedup reads as a win over training.
    """
    if r.ok:
        return "inference" in (r.speedup_basis or "")
    return "inference vs" in r.description  # a skipped or failed row: what it would have compared


def training_rows(run: BenchRun) -> list[VariantResult]:
    return [r for r in run.results if not is_inference(r)]


def inference_rows(run: BenchRun) -> list[VariantResult]:
    return [r for r in run.results if is_inference(r)]


def bench_table(run: BenchRun, wide: bool = True) -> Table:
    """Training rows = variants. Not ``wide``: the quality and notes go to :func:`notes_lines`."""
    baseline = run.get("fp32")
    title = f"bench: {run.scenario}, training steps" + (" (interrupted: partial)" if run.interrupted else "")
    table = Table(title=title if wide else f"{title}; step times in ms", title_justify="left",
                  box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD, pad_edge=wide)
    ms = fmt_ms if wide else _bare_ms  # narrow: the unit goes to the title
    table.add_column("variant", no_wrap=True)
    for col in ("median", "IQR", "min", "samples/s", "speedup", "peak mem"):
        table.add_column(col, justify="right", no_wrap=True)
    if wide:
        table.add_column("quality", no_wrap=True)
        table.add_column("notes", ratio=1, min_width=28)
    for r in training_rows(run):
        style = STATUS_STYLE[r.status]
        if not r.ok or r.timing is None:
            cells = ["", "", "", "", "", "", "", Text(notes(r, baseline), style=style)] if wide else \
                [Text(r.status, style=style), "", "", "", "", ""]
            table.add_row(Text(r.name, style=style), *cells)
            continue
        t = r.timing
        iqr = Text(ms(t.iqr), style="yellow" if t.noisy else "")
        cells = [ms(t.median), iqr, ms(t.min), human_count(t.throughput) if t.throughput else "·",
                 f"{r.speedup:.2f}×" if r.speedup is not None else "·", human_bytes(r.peak_memory)]
        if wide:
            cells += [quality(r, baseline), notes(r, baseline)]
        table.add_row(Text(r.name, style=style), *cells)
    return table


def inference_table(run: BenchRun, wide: bool = True) -> Table | None:
    """fp32 inference and each inference variant (int8) on the eval batches; None without such rows."""
    rows = inference_rows(run)
    if not rows:
        return None
    ref = next((r.reference for r in rows if r.ok and r.reference is not None), None)
    batch = f", batches of {ref.samples_per_step}" if ref is not None and ref.samples_per_step else ""
    table = Table(title=f"bench: {run.scenario}, inference (eval mode, forward only{batch}; "
                        "compared with fp32 inference, not with training)",
                  title_justify="left", box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD, pad_edge=wide)
    ms = fmt_ms if wide else _bare_ms
    table.add_column("variant", no_wrap=True)
    for col in ("median", "IQR", "min", "samples/s", "speedup"):
        table.add_column(col, justify="right", no_wrap=True)
    if wide:
        table.add_column("quality", no_wrap=True)
        table.add_column("notes", ratio=1, min_width=28)

    def timed(name: str, t: Timing, speedup: str, style: str, extra: list[str]) -> None:
        table.add_row(Text(name, style=style), ms(t.median), Text(ms(t.iqr), style="yellow" if t.noisy else ""),
                      ms(t.min), human_count(t.throughput) if t.throughput else "·", speedup,
                      *(extra if wide else []))

    if ref is not None:
        timed("fp32 inference", ref, "1.00×", "", ["", "the reference"])
    for r in rows:
        style = STATUS_STYLE[r.status]
        if not r.ok or r.timing is None:
            table.add_row(Text(r.name, style=style), "", "", "", "", "",
                          *(["", Text(notes(r), style=style)] if wide else []))
            continue
        timed(r.name, r.timing, f"{r.speedup:.2f}×" if r.speedup is not None else "·", style,
              [quality(r, None), notes(r)])
    return table


def _bare_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def notes_lines(run: BenchRun) -> list[Text]:
    """'variant: quality; notes' per row, for consoles too narrow for those columns."""
    baseline = run.get("fp32")
    out = []
    for r in run.results:
        parts = [quality(r, baseline)] if r.ok else []
        parts.append(notes(r, baseline))
        text = "; ".join(p for p in parts if p and p != "·")
        if text:
            out.append(Text.assemble((f"{r.name}: ", STATUS_STYLE[r.status]), text))
    return out


class _TableForWidth:
    """The full table on a wide console; on a narrow one the table, then one notes line per row."""

    def __init__(self, run: BenchRun) -> None:
        self.run = run

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        wide = options.max_width >= WIDE
        yield bench_table(self.run, wide=wide)
        inference = inference_table(self.run, wide=wide)
        if inference is not None:
            yield inference
        if not wide:
            yield from notes_lines(self.run)


def speedup_bars(run: BenchRun, width: int = 40) -> RenderableType:
    """Bars per ok row, scaled to the largest speedup of their chart; 1.0× is the chart's fp32.

    Training rows and inference rows are two charts: an int8 forward against fp32
    inference is not a win over the training step.
    """
    charts = [
        ("speedup (× the fp32 training step)", [r for r in training_rows(run) if r.ok and r.speedup is not None]),
        ("inference speedup (× fp32 inference, eval batches)",
         [r for r in inference_rows(run) if r.ok and r.speedup is not None]),
    ]
    charts = [(title, rows) for title, rows in charts if rows]
    if not charts:
        return Text("no speedups to chart")
    name_w = max(len(r.name) for _, rows in charts for r in rows)
    lines: list[Text] = []
    for title, rows in charts:
        top = max(max(r.speedup or 0 for r in rows), 1.0)
        lines.append(Text(title, style="bold"))
        for r in rows:
            n = max(1, round((r.speedup or 0) / top * width))
            style = "green" if (r.speedup or 0) >= 1.0 else "red"
            bar = "█" * n + " " * (width - n)
            lines.append(Text.assemble(f"{r.name:<{name_w}} ", (bar, style), f" {r.speedup:.2f}×"))
    return Group(*lines)


def method_notes(run: BenchRun) -> list[str]:
    methods = sorted({r.memory_method for r in run.results if r.ok and r.memory_method})
    out = [f"peak memory: {m}" for m in methods]
    if run.load and max(run.load) > run.hardware.cores:
        out.append(f"⚠ load average up to {max(run.load):.1f} on {run.hardware.cores} cores: other processes "
                   "competed for the CPU and every timing above is inflated; re-run on a quiet machine")
    apis = sorted({str(r.extras["api"]) for r in run.results if r.ok and "api" in r.extras})
    out += [f"api: {a}" for a in apis]
    for r in run.results:
        if r.status == "failed":
            out.append(f"✖ {r.name} failed: {r.reason}")
    out += warning_lines(run)
    return out


def warning_lines(run: BenchRun) -> list[str]:
    """The rows' warnings as one group: a warning several rows share is one line naming them."""
    # Warnings that differ only in their figures ("IQR is 538% ..." / "IQR is 27% ...") are one
    # line too, each row's figure beside its name.
    groups: dict[str, list[tuple[str, str]]] = {}
    for r in run.results:
        for w in r.warnings:
            groups.setdefault(_FIGURE.sub("…", w), []).append((r.name, w))
    if not groups:
        return []
    count = sum(len(v) for v in groups.values())
    rows = len({name for v in groups.values() for name, _ in v})
    out = [f"⚠ {count} warning{'s' if count != 1 else ''} from {rows} row(s):"]
    for shape, members in groups.items():
        texts = {w for _, w in members}
        if len(texts) == 1:
            out.append(f"  {', '.join(name for name, _ in members)}: {members[0][1]}")
        else:
            named = ", ".join(f"{name} ({', '.join(_FIGURE.findall(w))})" for name, w in members)
            out.append(f"  {named}: {shape}")
    return out


_FIGURE = re.compile(r"\d+(?:\.\d+)?%")


def render_run(run: BenchRun) -> RenderableType:
    parts: list[RenderableType] = [hardware_line(run), _TableForWidth(run), speedup_bars(run)]
    parts += [Text(n, style="dim") for n in method_notes(run)]
    return Group(*parts)


def compare_table(cmp: Comparison) -> RenderableType:
    table = Table(title=f"bench compare: {cmp.old.scenario} (old {cmp.old.started or '?'} → "
                        f"new {cmp.new.started or '?'}), threshold ±{cmp.threshold:.0%}",
                  title_justify="left")
    for col in ("variant", "old median", "new median", "change", "verdict", "note"):
        table.add_column(col, justify="right" if "median" in col or col == "change" else "left")
    styles = {"slower": "red", "regressed": "red", "faster": "green", "fixed": "green", "noisy": "yellow"}
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
