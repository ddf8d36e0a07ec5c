"""workbench check PATH...: run every scenario a few steps; fail on error findings (CI friendly)."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "check"
ORDER = 25
HELP = "run each scenario N steps under the health checks; exit 1 on error findings (for CI)"
DESCRIPTION = (
    "Run every scenario in the given files or directories (directories are not searched "
    "recursively) for --steps steps with the health rules on, and print one table. Exit "
    "codes: 0 all healthy, 1 some scenario had an error finding, 2 some scenario failed to "
    "load or raised (this wins over 1). --junit writes JUnit XML for CI systems."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="scenario files (file.py, file.py:function) or directories of scenarios")
    p.add_argument("--steps", type=int, default=20, help="steps per scenario (default 20)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--every", type=int, default=1, metavar="K", help="module/parameter stats every K-th step")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML (checked before running)")
    p.add_argument("--json", metavar="FILE", help="write every result and finding as JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from workbench.errors import UsageError
    from workbench.report.files import check_writable

    for flag in ("steps", "every"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
    for path in (args.junit, args.json):
        if path:
            check_writable(path)

    from pathlib import Path

    from workbench.report.run import check_table
    from workbench.scenario import ScenarioSource, discover, load_source, resolve_device

    console = Console()
    results: list[CheckResult] = []
    sources: list[ScenarioSource] = []
    device: Any = args.device
    # The output paths are accepted: from here a Ctrl-C (while loading, building or
    # stepping) still writes the reports for the scenarios finished so far.
    try:
        device = resolve_device(args.device)
        for path in args.paths:
            base = path.rpartition(":")[0] if ":" in path and not Path(path).exists() else path
            if Path(base).is_dir():
                sources.extend(discover(base))
            else:
                sources.append(load_source(path))
        _check_all(sources, device, args, results, console)
    except KeyboardInterrupt:
        console.print(check_table(results))
        _write_reports(args, results, device, console, interrupted=True)
        total = f" of {len(sources)}" if sources else ""
        console.print(f"interrupted after {len(results)}{total} scenarios", highlight=False)
        raise

    console.print(check_table(results))
    for r in results:
        if r.detail:
            console.print(f"[bold red]✖ {r.label}[/]: {r.detail}", highlight=False)
    failed = [r for r in results if r.status == "failed"]
    flagged = [r for r in results if r.status == "findings"]
    console.print(
        f"{len(results)} scenarios, {args.steps} steps each on {device}: "
        f"{len(results) - len(failed) - len(flagged)} ok, {len(flagged)} with error findings, "
        f"{len(failed)} failed (time includes building each scenario)",
        highlight=False,
    )
    _write_reports(args, results, device, console, interrupted=False)
    if failed:
        return 2
    return 1 if flagged else 0


def _check_all(sources: list, device: Any, args: argparse.Namespace, results: list, console: Any) -> None:
    import time

    from workbench.engine import Engine, EngineConfig, StepError
    from workbench.report.run import CheckResult, group_findings
    from workbench.scenario import ScenarioError

    with console.status("checking...") as status:
        for i, source in enumerate(sources, 1):
            status.update(f"[{i}/{len(sources)}] {source.label}")
            start = time.perf_counter()
            try:
                scenario = source.build(device)
            except ScenarioError as exc:
                message = str(exc)
                results.append(CheckResult(source.label, source.where, "failed", 0,
                                           time.perf_counter() - start, None, 0, 0,
                                           "failed to load", failure=message, detail=message))
                continue
            with Engine(scenario, EngineConfig(stats_every=args.every)) as engine:
                outcome = engine.run(args.steps, until_break=False)
                history = engine.history
                findings = tuple(engine.findings)
            seconds = time.perf_counter() - start
            errors = [f for f in findings if f.severity == "error"]
            warnings = [f for f in findings if f.severity == "warning"]
            final = history[-1].loss if history else None
            if isinstance(outcome.error, StepError):
                err = outcome.error
                what = f"out of memory at batch size {err.batch_size}" if err.oom else type(err.original).__name__
                results.append(CheckResult(source.label, source.where, "failed", outcome.steps_done, seconds,
                                           final, len(errors), len(warnings),
                                           f"{what} at step {err.step} ({err.phase.value})",
                                           findings, failure=err.traceback_text, detail=str(err)))
            elif errors:
                first = group_findings(errors)[0]
                results.append(CheckResult(source.label, source.where, "findings", outcome.steps_done, seconds,
                                           final, len(errors), len(warnings),
                                           f"{first.kind} on {first.where} at step {first.first_step}",
                                           findings, detail=first.message))
            else:
                results.append(CheckResult(source.label, source.where, "ok", outcome.steps_done, seconds, final,
                                           0, len(warnings), "", findings))


def _write_reports(args: argparse.Namespace, results: list, device: Any, console: Any, *,
                   interrupted: bool) -> None:
    from workbench.report.files import atomic_write_json, atomic_write_text
    from workbench.report.json_report import finding_json
    from workbench.report.junit import junit_xml

    if args.junit:
        atomic_write_text(args.junit, junit_xml(results))
        console.print(f"JUnit XML written to {args.junit}", highlight=False)
    if args.json:
        atomic_write_json(args.json, {
            "schema": "workbench.check/1",
            "device": str(device),
            "steps": args.steps,
            "stopped_by": "interrupted" if interrupted else "done",
            "results": [
                {"label": r.label, "path": r.path, "status": r.status, "steps": r.steps, "seconds": r.seconds,
                 "final_loss": r.final_loss, "errors": r.errors, "warnings": r.warnings,
                 "first_problem": r.first_problem, "detail": r.detail, "failure": r.failure,
                 "findings": [finding_json(f) for f in r.findings]}
                for r in results
            ],
        })
        console.print(f"report written to {args.json}", highlight=False)
