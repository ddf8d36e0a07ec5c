"""workbench run SCENARIO: train N steps under the debugger, print layers and findings, write JSON."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "run"
ORDER = 20
HELP = "run a scenario headless under the debugger: per-layer stats, health findings, JSON/TensorBoard"
DESCRIPTION = (
    "Train the scenario for --steps steps with every module and parameter instrumented, then "
    "print the per-layer table of the last measured step and the health findings. Exit codes: "
    "0 no error findings, 1 error findings (or a --break-on condition fired: the run stops "
    "there, before that step's optimizer step), 2 the scenario failed to load or raised "
    "(message and traceback printed, the JSON report still written with the steps done), "
    "130 interrupted (partial JSON written)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario file, file.py:function or module")
    p.add_argument("--steps", type=int, default=50, help="training steps to run (default 50)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="module/parameter stats every K-th step (default 1: every step)")
    p.add_argument("--break-on", action="append", default=[], metavar="COND",
                   help="stop at the first step where COND holds: a finding kind (nan_inf, "
                        "dead_units@features.*, any>=error), loss>X, grad_norm>X or step==N; repeatable")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON (checked before running)")
    p.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard scalars and histograms to DIR")
    p.add_argument("--histogram-every", type=int, default=10, metavar="K",
                   help="weight/gradient histograms every K steps with --tensorboard (default 10)")
    p.add_argument("--findings", type=int, default=20, metavar="N", help="finding groups shown (default 20)")


def run(args: argparse.Namespace) -> int:
    if args.tensorboard:
        import os

        # Histograms go through numpy, whose OpenBLAS threads then spin and slow the next
        # torch step ~2x (ENVIRONMENT.md). It only takes effect before numpy loads, and
        # importing torch loads numpy: so here, before anything imports torch.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from workbench.errors import UsageError

    for flag in ("steps", "every", "histogram_every", "findings"):
        value = getattr(args, flag)
        if value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {value}.")

    from workbench.engine import Breakpoint

    breakpoints = []
    for text in args.break_on:
        try:
            breakpoints.append(Breakpoint.parse(text))
        except ValueError as exc:
            raise UsageError(f"--break-on: {exc}") from None

    from workbench.report.files import check_writable

    if args.json:
        check_writable(args.json)
    if args.tensorboard:
        check_writable(args.tensorboard, directory=True)

    return _run_session(args, tuple(breakpoints))


def _run_session(args: argparse.Namespace, breakpoints: tuple[Any, ...]) -> int:
    from rich.console import Console

    from workbench.cli import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
    from workbench.engine import Engine, EngineConfig, Finding, Phase, StepError, StepRecord
    from workbench.errors import UsageError
    from workbench.report import json_report
    from workbench.report.files import atomic_write_json
    from workbench.report.run import findings_table, layer_table, param_table, run_line
    from workbench.scenario import ScenarioError, load_source, resolve_device

    console = Console()
    err = Console(stderr=True)
    records: list[StepRecord] = []
    findings: list[Finding] = []
    label, device_name = args.scenario, str(args.device)

    def write_json(summary: dict[str, Any], error: dict[str, Any] | None) -> None:
        if args.json:
            atomic_write_json(args.json, json_report.run_report(
                scenario=label, device=device_name, records=records, findings=findings,
                summary=summary, error=error))

    tb = None
    if args.tensorboard:
        from workbench.report.tensorboard import TensorBoardMissing, TensorBoardWriter

        try:
            tb = TensorBoardWriter(args.tensorboard, args.histogram_every)
        except TensorBoardMissing as exc:
            raise UsageError(str(exc)) from None

    try:
        source = load_source(args.scenario)
        label = source.label
        device = resolve_device(args.device)
        device_name = str(device)
        scenario = source.build(device)
    except ScenarioError as exc:
        write_json(json_report.run_summary([], [], steps_done=0, stopped_by="error"),
                   json_report.error_json(exc))
        if tb is not None:
            tb.close()
        raise

    config = EngineConfig(stats_every=args.every, breakpoints=breakpoints)
    engine = Engine(scenario, config)
    named = f" ({scenario.name})" if scenario.name != label else ""
    console.print(
        f"[bold]{label}[/]{named} on {device_name}: {type(scenario.model).__name__}, "
        f"{scenario.num_parameters():,} parameters, {args.steps} steps, stats every {args.every}",
        highlight=False,
    )
    done, stopped_by, hit, error, paused = 0, "steps", None, None, None
    try:
        with console.status("running...") as status:
            while done < args.steps:
                result = engine.advance()
                findings.extend(result.findings)
                if tb is not None and result.phase is Phase.BACKWARD and tb.wants_histograms(result.step):
                    tb.histograms(scenario.model, result.step)
                if result.record is not None:
                    records.append(result.record)
                    done += 1
                    if tb is not None:
                        tb.step(result.record)
                    status.update(f"step {done}/{args.steps}  loss {result.record.loss}")
                if result.break_hit is not None:
                    stopped_by, hit = "breakpoint", result.break_hit
                    paused = engine.current  # the step the breakpoint stopped in, before its update
                    break
    except StepError as exc:
        stopped_by, error = "error", exc
    except KeyboardInterrupt:
        summary = json_report.run_summary(records, findings, steps_done=done, stopped_by="interrupted")
        write_json(summary, {"type": "KeyboardInterrupt", "message": "interrupted", "phase": None,
                             "step": engine.step, "traceback": None})
        if args.json:
            err.print(f"partial report ({done} steps) written to {args.json}", highlight=False)
        raise
    finally:
        engine.close()
        if tb is not None:
            tb.close()

    summary = json_report.run_summary(records, findings, steps_done=done, stopped_by=stopped_by, break_hit=hit)
    error_payload = None
    if error is not None:
        error_payload = json_report.error_json(error.original, error.traceback_text,
                                               phase=error.phase.value, step=error.step)
    write_json(summary, error_payload)

    measured = [r for r in records if r.modules]
    if paused is not None and paused.modules:
        console.print(layer_table(paused, title=f"layers at step {paused.step} (paused before its optimizer step)"))
        console.print(param_table(paused))
    elif measured:
        console.print(layer_table(measured[-1]))
        console.print(param_table(measured[-1]))
    if findings:
        console.print(findings_table(findings, limit=args.findings))
    console.print(run_line(summary))
    if hit is not None:
        console.print(f"[bold yellow]stopped at breakpoint[/] {hit.breakpoint} at step {hit.step}, "
                      f"before its optimizer step: {hit.reason}", highlight=False)
    if args.json:
        console.print(f"report written to {args.json}", highlight=False)
    if args.tensorboard:
        console.print(f"TensorBoard logs in {args.tensorboard} (tensorboard --logdir {args.tensorboard})",
                      highlight=False)
    if error is not None:
        where = f" at {error.user_frame}" if error.user_frame else ""
        import sys

        sys.stderr.write(error.traceback_text if getattr(args, "verbose", False) else _user_traceback(error))
        err.print(f"[bold red]error:[/] {label}: {error}{where}", highlight=False)
        if isinstance(error.original, ScenarioError):
            err.print("Fix the scenario and run again.", highlight=False)
        return EXIT_ERROR
    if summary["findings_by_severity"].get("error") or hit is not None:
        return EXIT_FINDINGS
    return EXIT_OK



def _user_traceback(error: Any) -> str:
    """The traceback without torch's and the engine's own frames (--verbose shows them all)."""
    import os
    import traceback

    import torch

    import workbench

    library = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (torch, workbench))
    exc = error.original
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(library)]
    lines = ["Traceback (user code; --verbose for all frames):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)
