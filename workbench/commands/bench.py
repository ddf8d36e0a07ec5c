"""workbench bench SCENARIO: side-by-side benchmarks of training variants."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.bench.timing import Plan

NAME = "bench"
ORDER = 50
HELP = "benchmark fp32 vs AMP, accumulation, DDP, int8, DataLoader, compile ... side by side"
DESCRIPTION = (
    "Run the scenario's training step under several variants on identical batches and compare "
    "median step time, IQR, throughput, speedup, peak memory and final loss. "
    "Exit codes: 0 every row ran or was skipped with its reason, 1 a row failed, 2 bad input or "
    "every row failed (the scenario raises; the JSON rows hold the traceback), 130 interrupted. "
    "`workbench bench --compare OLD.json NEW.json` gates regressions: exit 1 when a row's median is "
    "slower by more than --threshold and a Mann-Whitney U test on the raw samples says it is not noise "
    "(a change the samples cannot tell from noise is shown as noisy and never fails). "
    "Variants: fp32, amp, amp-bf16, accum-K, channels-last, compile, dataparallel, ddp-N, "
    "int8-dynamic, loader-wN[-pin]; aliases dataloader, default, all."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", help="scenario file, PATH.py:function or module")
    p.add_argument("--variants", help="comma-separated variant names (default: the default set)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--steps", type=int,
                   help="time exactly N steps per variant, no time budget (default: up to 15, "
                        "stopping after --budget seconds once 5 are timed)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="timed seconds per variant before timing stops, once 5 steps are in "
                        "(default 2)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps per variant (default 3)")
    p.add_argument("--block", type=int, default=1, help="steps per timed block (default 1)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's current setting)")
    p.add_argument("--json", metavar="FILE", help="write every raw sample and result as JSON")
    p.add_argument("--isolate-memory", action="store_true",
                   help="CPU: measure each row's peak RSS in a fresh process (a few steps; +2-5 s per row) "
                        "instead of the in-process high-water rise")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                   help="compare two --json files instead of running; exit 1 on a regression")
    p.add_argument("--threshold", type=float, default=10.0,
                   help="with --compare: percent slower that counts as a regression (default 10)")
    p.add_argument("--list-variants", action="store_true", help="list the variants and exit")


def run(args: argparse.Namespace) -> int:
    from workbench.errors import UsageError
    from workbench.report.text import plain_console

    console = plain_console()
    if args.list_variants:
        from rich.table import Table

        from workbench.bench.variants import catalogue

        table = Table("variant", "what it measures", title="bench variants", title_justify="left")
        for name, text in catalogue():
            table.add_row(name, text)
        console.print(table)
        return 0
    if args.compare:
        if args.scenario:
            raise UsageError("--compare takes two JSON files and no scenario; drop the scenario.")
        return _compare(console, args.compare[0], args.compare[1], args.threshold)
    if not args.scenario:
        raise UsageError("give a scenario to benchmark (e.g. `workbench bench scenarios/cnn_image.py`), "
                         "or --compare OLD.json NEW.json; see `workbench list`.")
    return _bench(console, args)


def _compare(console: object, old: str, new: str, threshold_pct: float) -> int:
    from workbench.bench.compare import compare_runs
    from workbench.bench.results import BenchFileError, load_run
    from workbench.errors import UsageError
    from workbench.report.bench import compare_table

    if threshold_pct < 0:
        raise UsageError(f"--threshold {threshold_pct}: expected a percentage >= 0 (e.g. 10).")
    try:
        before, after = load_run(old), load_run(new)
    except BenchFileError as exc:
        raise UsageError(str(exc)) from exc
    if before.scenario != after.scenario:  # a gate that compares two models gates nothing
        raise UsageError(
            f"{old} benchmarks scenario {before.scenario!r} and {new} benchmarks {after.scenario!r}: "
            "timings of two scenarios say nothing about a regression. Compare two runs of the same "
            "scenario (`workbench bench SCENARIO --json FILE` before and after the change).")
    cmp = compare_runs(before, after, threshold_pct / 100)
    console.print(compare_table(cmp))  # type: ignore[attr-defined]
    return 1 if cmp.regressions else 0


def _plan(args: argparse.Namespace) -> Plan:
    """--steps N times exactly N steps; without it the default plan's time budget applies."""
    from workbench.bench.timing import DEFAULT_PLAN, Plan

    if args.steps is not None:
        return Plan(args.warmup, args.steps, args.block)
    budget = args.budget if args.budget is not None else DEFAULT_PLAN.budget_s
    return Plan(args.warmup, DEFAULT_PLAN.steps, args.block, budget_s=budget)


def _bench(console: object, args: argparse.Namespace) -> int:
    import torch
    from rich.text import Text
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from workbench.bench import Plan, run_bench, save_run
    from workbench.bench.variants import resolve
    from workbench.errors import UsageError
    from workbench.report.bench import render_run
    from workbench.files import check_writable, scenario_inputs
    from workbench.scenario import load_source

    for flag, value, low in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0), ("--block", args.block, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} {value}: expected an integer >= {low}.")
    if args.budget is not None and args.steps is not None:
        raise UsageError("give --steps N (time exactly N steps) or --budget SECONDS (time until the "
                         "budget is spent), not both.")
    if args.budget is not None and not args.budget > 0:
        raise UsageError(f"--budget {args.budget}: expected seconds > 0 (e.g. --budget 5), "
                         "or --steps N to time exactly N steps.")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise UsageError(f"--threads {args.threads}: expected a positive integer.")
    names = [n for n in args.variants.split(",")] if args.variants else None
    variants = resolve(names)  # unknown names fail here, before any work
    if args.json:
        check_writable(args.json, inputs=scenario_inputs(args.scenario))
    from workbench.isolation import ProcessGuard

    guard = ProcessGuard()  # signal handlers and std streams: a row's user code may replace them
    source = load_source(args.scenario)
    plan = _plan(args)

    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[row]}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:  # type: ignore[arg-type]
        task = bar.add_task("starting", total=len(variants) * plan.total, row="")

        def progress(p: object) -> None:
            guard.check()
            done = p.index * plan.total + p.done  # type: ignore[attr-defined]
            row = f"row {p.index + 1}/{p.count}"  # type: ignore[attr-defined]
            bar.update(task, completed=done, description=p.variant, row=row)  # type: ignore[attr-defined]

        result = run_bench(source, variants, device=args.device, plan=plan, threads=args.threads,
                           progress=progress, isolate_memory=args.isolate_memory)
    guard.check()
    if args.json:  # before the table: a reader of stdout that leaves early (`| head`) ends the printing
        save_run(args.json, result)
    console.print(render_run(result))  # type: ignore[attr-defined]
    if args.json:
        console.print(f"wrote {args.json}")  # type: ignore[attr-defined]
    console.print(f"bench wall time {result.wall_s:.1f} s (torch {torch.__version__})")  # type: ignore[attr-defined]
    if result.interrupted:
        console.print(Text("interrupted: the table above is partial", style="yellow"))  # type: ignore[attr-defined]
        return 130
    failed = [r for r in result.results if r.status == "failed"]
    ran = [r for r in result.results if r.status != "skipped"]
    if failed and len(failed) == len(ran) and not any(r.extras.get("oom") for r in failed):
        # Every row that ran raised: the scenario itself does not train (an out-of-memory
        # row is a finding about the hardware, not this). Exit 2, as `workbench run` does.
        first = failed[0]
        from workbench.report.text import plain_console

        err = plain_console(stderr=True)
        if args.verbose and first.extras.get("traceback"):
            err.print(first.extras["traceback"], markup=False, highlight=False)
        where = f"traceback in {args.json}" if args.json else "--verbose or --json for the traceback"
        err.print(Text.assemble(("error:", "bold red"), " every row failed, so the scenario does not train "
                                f"here; the {first.name} row: {first.reason} ({where}). Fix the scenario and "
                                "run again."), highlight=False, soft_wrap=True)
        return 2
    return 1 if failed else 0
