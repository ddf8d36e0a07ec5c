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
    "130 interrupted (partial JSON written), 141 stdout's reader closed it, e.g. `| head` (a quiet stop; "
    "the JSON report is written with the steps done)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario file, file.py:function or module")
    p.add_argument("--steps", type=int, default=50, help="training steps to run (default 50)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="module/parameter stats every K-th step (default 1: every step)")
    p.add_argument("--break-on", action="append", default=[], metavar="COND",
                   help="stop at the first step where COND holds: a finding kind (nan_inf, "
                        "dead_units@features.*, any>=error), loss>X, loss<X, grad_norm>X, grad_norm<X or step==N; repeat the flag or separate conditions with commas")
    p.add_argument("--replay", type=int, metavar="N",
                   help="with --break-on: when it fires, rewind to N steps back (the step that fired included) "
                        "and run them again with full stats; the replayed steps join the report, marked replayed")
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

    for flag in ("steps", "every", "histogram_every", "findings", "replay"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {value}.")
    if args.replay and not args.break_on:
        raise UsageError("--replay N replays the steps before a breakpoint: give a --break-on condition too.")

    from workbench.engine import Breakpoint

    breakpoints = []
    for text in (c for value in args.break_on for c in value.split(",") if c.strip()):
        try:
            breakpoints.append(Breakpoint.parse(text))
        except ValueError as exc:
            raise UsageError(f"--break-on: {exc}") from None

    from workbench.files import check_writable, scenario_inputs

    inputs = scenario_inputs(args.scenario)
    if args.json:
        check_writable(args.json, inputs=inputs)
    if args.tensorboard:
        check_writable(args.tensorboard, directory=True, inputs=inputs)

    # From here on the output paths are accepted: however the run ends (done, a failing
    # scenario, Ctrl-C while building it or at step k) the JSON report is written.
    from workbench.report.run_report import RunReport

    report = RunReport(args.json, args.scenario, str(args.device), every=args.every)
    try:
        return _run_session(args, tuple(breakpoints), report)
    except KeyboardInterrupt as exc:
        from workbench.errors import interrupted_at

        report.write("interrupted", {"type": "KeyboardInterrupt", "message": interrupted_at(exc),
                                     "phase": None, "step": report.step, "traceback": None})
        if args.json:
            import sys

            sys.stderr.write(f"partial report ({report.steps_done} steps) written to {args.json}\n")
        raise
    except BaseException as exc:  # our own bug, user code's sys.exit(), or stdout's reader gone: keep the steps done
        import traceback

        from workbench.errors import stdout_closed
        from workbench.report import json_report

        if stdout_closed(exc):  # `| head -2`: the run stops there, as other tools do, and says so
            report.write("interrupted", {"type": "BrokenPipeError", "phase": None, "step": report.step,
                                         "message": "standard output was closed by its reader (a pipe into "
                                                    "`head`?): the run stopped there", "traceback": None})
        else:
            report.write("error", json_report.error_json(exc, traceback.format_exc(), step=report.step))
        raise
    finally:
        if report.stream is not None and report.stream.open:
            report.stream.abort()  # only when writing the report itself failed


def _run_session(args: argparse.Namespace, breakpoints: tuple[Any, ...], report: Any) -> int:
    from workbench.engine import Engine, EngineConfig, StepError
    from workbench.errors import UsageError
    from workbench.isolation import ProcessGuard
    from workbench.report import json_report
    from workbench.report.text import plain_console

    console = plain_console()
    tb = None
    engine = None
    guard = None
    stopped_by, hit, error, paused = "steps", None, None, None
    try:
        if args.tensorboard:
            from workbench.report.tensorboard import TensorBoardMissing, TensorBoardWriter

            try:
                tb = TensorBoardWriter(args.tensorboard, args.histogram_every)
            except TensorBoardMissing as exc:
                raise UsageError(str(exc)) from None
        guard = ProcessGuard()  # signal handlers and std streams as the CLI set them, before user code ran
        scenario = _build(args, report)
        guard.check()  # before the announcement: the build may have replaced the streams
        engine = Engine(scenario, EngineConfig(stats_every=args.every, breakpoints=breakpoints,
                                               snapshots=args.replay or 0))
        report.step = engine.step
        # What the loader noticed about the scenario's settings (a per-epoch scheduler stepped per
        # batch): findings of step 0 that no phase returns, so taken from the engine before stepping.
        report.add_findings(engine.findings)
        _announce(console, args, report, scenario)
        try:
            stopped_by, hit, paused = _advance(engine, args, report, tb, console, guard)
        except StepError as exc:
            stopped_by, error = "error", exc
        except RuntimeError as exc:  # raised in this loop's own bookkeeping, between the engine's phases
            stopped_by, error = "error", engine.data_loading_error(exc)
    finally:
        if guard is not None:
            guard.check()  # the last phase's changes too: the tables and the report's path go to our streams
        if engine is not None:
            engine.close()
        if tb is not None:
            tb.close()

    summary = report.write(stopped_by, json_report.step_error_json(error) if error is not None else None, hit)
    return _print_outcome(args, report, summary, hit, paused, error)


def _build(args: argparse.Namespace, report: Any) -> Any:
    """Load and build the scenario; a failure is written into the report before it is raised."""
    from workbench.report import json_report
    from workbench.scenario import ScenarioError, load_source, resolve_device

    try:
        source = load_source(args.scenario)
        report.label = source.label
        device = resolve_device(args.device)
        report.device = str(device)
        return source.build(device)
    except ScenarioError as exc:
        import traceback

        from workbench.errors import stdout_closed

        if not stdout_closed(exc):  # a build that printed into a closed pipe: run() reports the stop
            report.write("error", json_report.error_json(exc, traceback.format_exc()))
        raise


def _announce(console: Any, args: argparse.Namespace, report: Any, scenario: Any) -> None:
    from rich.text import Text

    named = f" ({scenario.name})" if scenario.name != report.label else ""
    console.print(
        Text.assemble((report.label, "bold"), f"{named} on {report.device}: {type(scenario.model).__name__}, "
                      f"{scenario.num_parameters():,} parameters, {args.steps} steps, stats every {args.every}"),
        highlight=False,
    )


def _advance(engine: Any, args: argparse.Namespace, report: Any, tb: Any, console: Any,
             guard: Any) -> tuple[str, Any, Any]:
    """Step until --steps or a breakpoint (then --replay); (stopped_by, break hit, paused step)."""
    from workbench.engine import Phase
    from workbench.report.numbers import fmt_float  # the progress line's loss: 2.304, not 2.3041393756866455

    done, hit, paused = 0, None, None
    with console.status("running...") as status:
        while done < args.steps:
            guard.check()  # the build, or the phase before, may have replaced handlers or streams
            result = engine.advance()
            report.step = engine.step
            report.add_findings(result.findings)
            if tb is not None and result.phase is Phase.BACKWARD and tb.wants_histograms(result.step):
                tb.histograms(engine.scenario.model, result.step)
            if result.record is not None:
                report.add(result.record)
                done += 1
                if tb is not None:
                    tb.step(result.record)
                status.update(f"step {done}/{args.steps}  loss {fmt_float(result.record.loss, 4)}")
            if result.break_hit is not None:
                hit = result.break_hit
                paused = engine.current  # the step the breakpoint stopped in, before its update
                break
        if hit is not None and args.replay:
            status.update(f"replaying the {args.replay} steps up to step {hit.step} with full stats")
            hit, paused = _replay(engine, hit, args.replay, report, console)
    return ("breakpoint" if hit is not None else "steps"), hit, paused


def _print_outcome(args: argparse.Namespace, report: Any, summary: dict[str, Any], hit: Any, paused: Any,
                   error: Any) -> int:
    """The layer, parameter and findings tables, the run line, and the exit code."""
    from rich.text import Text

    from workbench.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
    from workbench.report.run import findings_table, layer_table, param_table, run_line
    from workbench.report.text import plain_console
    from workbench.scenario import ScenarioError

    console = plain_console()
    if paused is not None and paused.modules:
        console.print(layer_table(paused, title=f"layers at step {paused.step} (paused before its optimizer step)"))
        console.print(param_table(paused))
    elif report.last_measured is not None:
        console.print(layer_table(report.last_measured))
        console.print(param_table(report.last_measured))
    if report.findings:
        console.print(findings_table(report.findings, limit=args.findings))
        if report.tally.findings_not_listed:
            console.print(f"{report.tally.findings_not_listed:,} later findings are counted in the summary but "
                          f"not listed (the report lists the first {report.max_findings:,}).", highlight=False)
    console.print(run_line(summary))
    if hit is not None:
        console.print(Text.assemble(("stopped at breakpoint", "bold yellow"), f" {hit.breakpoint} at step "
                                    f"{hit.step}, before its optimizer step: {hit.reason}"), highlight=False)
    if args.json:
        console.print(f"report written to {args.json}", highlight=False)
    if args.tensorboard:
        console.print(f"TensorBoard logs in {args.tensorboard} (tensorboard --logdir {args.tensorboard})",
                      highlight=False)
    if error is not None:
        import sys

        sys.stderr.write(error.traceback_text if getattr(args, "verbose", False) else _user_traceback(error))
        err = plain_console(stderr=True)
        # soft_wrap: shapes and file:line stay on one line (copyable, greppable).
        err.print(Text.assemble(("error:", "bold red"), f" {report.label}: {error}"), highlight=False,
                  soft_wrap=True)
        if isinstance(error.original, ScenarioError):
            err.print("Fix the scenario and run again.", highlight=False)
        return EXIT_ERROR
    if summary["findings_by_severity"].get("error") or hit is not None:
        return EXIT_FINDINGS
    return EXIT_OK


def _replay(engine: Any, hit: Any, n: int, report: Any, console: Any) -> tuple[Any, Any]:
    """Rewind to ``n`` step starts back (the breakpoint's step included) and run to the same
    breakpoint again with full stats. Returns the (new) hit and the paused step."""
    from rich.text import Text

    back = min(n, len(engine.rewindable_steps))
    if back < 1:
        console.print(Text("replay: no snapshot was kept (see the snapshot budget); nothing replayed",
                           style="yellow"))
        return hit, engine.current
    start = engine.rewind(back)
    again = None
    while engine.step <= hit.step:
        result = engine.advance()
        report.add_findings(result.findings, replayed=True)
        if result.record is not None:
            report.add(result.record, replayed=True)
        if result.break_hit is not None:
            again = result.break_hit
            break
    if again is not None and again.step < hit.step:
        # Full stats see what the cheap first pass could not (an update gone non-finite,
        # dead units): the condition already held at an earlier step.
        console.print(f"replayed from step {start} with full stats: the breakpoint fires earlier, at step "
                      f"{again.step}: {again.reason}", highlight=False)
        return again, engine.current
    if again is None:
        console.print(Text(f"replay: steps {start}..{hit.step} ran again but the breakpoint did not fire at "
                           f"step {hit.step} this time (a non-deterministic step?)", style="yellow"), highlight=False)
        return hit, engine.current
    console.print(f"replayed steps {start}..{hit.step} with full stats; the breakpoint fired again at step "
                  f"{hit.step}", highlight=False)
    return again, engine.current


def _user_traceback(error: Any) -> str:
    """The traceback without torch's and the engine's own frames (--verbose shows them all)."""
    from workbench.errors import exception_text

    if not error.user_traceback:
        return ""  # no user frame (a loss or layer of torch's raised): the error line says it all
    # The exception's line as the error line below says it: a message cut to its first
    # MESSAGE_LIMIT characters (a user's message may be megabytes), never a __str__ that raises.
    return "".join(["Traceback (user code; --verbose for all frames):\n", error.user_traceback,
                    exception_text(error.original), "\n"])
