"""workbench check PATH...: run every scenario a few steps; fail on error findings (CI friendly)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.report.run import CheckResult

NAME = "check"
ORDER = 25
HELP = "run each scenario N steps under the health checks; exit 1 on error findings (for CI)"
DESCRIPTION = (
    "Run every scenario in the given files or directories (directories are not searched "
    "recursively) for --steps steps with the health rules on, and print one table. Each "
    "scenario runs in a child process of its own, so one cannot end, hang or change the "
    "state of the others (a child that dies or runs past --timeout is FAILED, with the steps "
    "and findings it had and, for a hang or a crash, the line it was in). Exit "
    "codes: 0 all healthy (warnings allowed unless --strict), 1 some scenario had an error "
    "finding (or, with --strict, a warning), 2 some scenario failed to load, raised or "
    "died, or a report could not be written (this wins over 1; the table and the other "
    "report still come). --junit writes JUnit XML for CI systems."
)

DEFAULT_TIMEOUT_S = 900.0
# The modules every child needs, imported once by the fork server (workbench.isolation).
# torch._dynamo: the first optimizer a scenario builds imports it (torch.optim's
# _disable_dynamo), ~1.5 s that every child would pay again. workbench.engine and
# workbench.scenario load their submodules lazily: name the ones a check uses.
CHILD_PRELOAD = ("torch._dynamo", "torch.profiler", "psutil", "workbench.commands.check", "workbench.engine.engine",
                 "workbench.scenario.loader", "workbench.scenario.step", "workbench.report.run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="scenario files (file.py, file.py:function), dotted module names or directories of scenarios")
    p.add_argument("--steps", type=int, default=20, help="steps per scenario (default 20)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--every", type=int, default=1, metavar="K", help="module/parameter stats every K-th step")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"per scenario, building included; past it the scenario is FAILED (default "
                        f"{DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--strict", action="store_true", help="warning findings fail the check too (exit 1)")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML (checked before running)")
    p.add_argument("--json", metavar="FILE", help="write every result and finding as JSON")


def run(args: argparse.Namespace) -> int:
    from workbench.errors import EXIT_ERROR, UsageError
    from workbench.files import OutputPathError, check_writable, scenario_inputs

    for flag in ("steps", "every"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}.")
    if args.junit and args.json and os.path.realpath(args.junit) == os.path.realpath(args.json):
        raise OutputPathError(f"--junit and --json both name {args.json}; give them different files.")

    from workbench.report.run import check_table
    from workbench.report.text import plain_console
    from workbench.scenario import resolve_device

    console = plain_console()
    results: list[CheckResult] = []
    sources, skipped = _gather(args.paths)
    inputs = [*scenario_inputs(*args.paths), *(("a scenario file", s.path) for s in sources if s.path)]
    for path in (args.junit, args.json):
        if path:
            check_writable(path, inputs=inputs)
    device: Any = resolve_device(args.device)
    # The output paths are accepted: from here a Ctrl-C (while a child builds or steps
    # a scenario) still writes the reports for the scenarios finished so far.
    try:
        _check_all(sources, device, args, results, console)
    except KeyboardInterrupt:
        written, unwritten = _write_reports(args, results, device, interrupted=True)
        try:
            console.print(check_table(results))
            _print_lines(console, written)
            finished = sum(r.status != "interrupted" for r in results)  # the one stopped is a row, not a finish
            console.print(f"interrupted after {finished} of {len(sources)} scenarios", highlight=False)
        finally:
            _print_unwritten(unwritten)
        raise
    # The reports are written before anything is printed: a reader of stdout that leaves
    # early (`| head`) ends the printing, and the reports must not depend on it.
    written, unwritten = _write_reports(args, results, device, interrupted=False)
    try:
        code = _print_results(console, args, device, results, skipped, written)
    finally:  # also when stdout's reader has gone: stderr still says which report is missing
        _print_unwritten(unwritten)
    return EXIT_ERROR if unwritten else code


def _print_results(console: Any, args: argparse.Namespace, device: Any, results: list[CheckResult],
                   skipped: list[Any], written: list[str]) -> int:
    """The table, a line per problem, the totals and where the reports went; the exit code."""
    from rich.text import Text

    from workbench.report.run import check_table

    console.print(check_table(results))
    for r in results:
        if r.detail and r.status in ("failed", "findings"):
            console.print(Text.assemble((f"✖ {r.label}", "bold red"), ": ", r.detail))
        for note in r.notes:
            console.print(Text.assemble((f"⚠ {r.label}", "yellow"), ": ", note))
    # A file discovery passed over is named, so a broken scenario cannot vanish from CI unseen.
    for skip in skipped:
        console.print(Text.assemble(("skipped ", "dim"), skip.path, ": ", skip.reason))
    failed = [r for r in results if r.status == "failed"]
    flagged = [r for r in results if r.status == "findings"]
    warned = [r for r in results if r.status == "warn"]
    console.print(
        f"{len(results)} scenario{'' if len(results) == 1 else 's'}, {args.steps} steps each on {device}: "
        f"{len(results) - len(failed) - len(flagged) - len(warned)} ok, "
        + (f"{len(warned)} with warnings only, " if warned else "")
        + f"{len(flagged)} with error findings, {len(failed)} failed (time includes building each scenario)",
        highlight=False,
    )
    _print_lines(console, written)
    if failed:
        return 2
    return 1 if flagged or (args.strict and warned) else 0


# What a PATH argument may be, for the messages that refuse one.
EXPECTED_PATH = "expected a scenario file, FILE.py:function, a directory of scenarios or a dotted module name"


def _gather(paths: list[str]) -> tuple[list[Any], list[Any]]:
    """The scenarios the PATH arguments name and the files discovery passed over. Every
    argument is checked here, before any scenario runs."""
    from pathlib import Path

    from workbench.scenario import discover, discover_all, load_source

    sources: list[Any] = []
    skipped: list[Any] = []
    for path in paths:
        _refuse_bad_path(path)
        if Path(path).is_dir():
            found = discover_all(path)
            if not found.sources:
                discover(path)  # raises the "no scenario files found" error, naming what was skipped
            sources.extend(found.sources)
            skipped.extend(found.skipped)
        else:
            sources.append(load_source(path))
    return sources, skipped


def _refuse_bad_path(path: str) -> None:
    """UsageError for the PATHs that would otherwise check something other than what was asked."""
    import os
    from pathlib import Path

    from workbench.errors import UsageError

    if not path:  # Path("") is ".": an unset "$DIR" must not check the current directory
        raise UsageError(f'PATH is empty (""); {EXPECTED_PATH}. Pass one of those (an empty argument '
                         "is often an unset shell variable).")
    head, sep, function = path.rpartition(":")
    if not sep or Path(path).exists():  # an existing name with a colon in it is taken as it is
        return
    example = f"{os.path.join(head or 'scenarios', 'FILE.py')}:{function or 'build'}"
    if not head:  # ":build" would otherwise be looked up in the current directory
        raise UsageError(f"{path}: no file or module before the colon; {EXPECTED_PATH}. Put the scenario "
                         f"file or module before it, e.g. {example}.")
    if Path(head).is_dir():  # a directory's scenarios each have their own function: one name cannot pick
        raise UsageError(f"{path}: {head} is a directory, and a function can be named only in a scenario "
                         f"file; {EXPECTED_PATH}. Pass {head} to check every scenario in it, or {example} "
                         "for one function.")


def _check_all(sources: list, device: Any, args: argparse.Namespace, results: list, console: Any) -> None:
    from workbench.isolation import run_isolated

    with console.status("checking...") as status:
        for i, source in enumerate(sources, 1):
            status.update(f"[{i}/{len(sources)}] {source.label}")
            progress = _Progress()
            start = time.perf_counter()
            try:
                outcome = run_isolated(check_one, source, str(device), args.steps, args.every,
                                       timeout_s=args.timeout, preload=CHILD_PRELOAD, on_progress=progress.update)
            except KeyboardInterrupt:
                # Its row, with the steps and findings it had reported: the reports keep them too.
                results.append(_interrupted(source, progress, time.perf_counter() - start))
                raise
            if outcome.returned:
                result = outcome.value
                if outcome.stray_threads:
                    names = ", ".join(repr(n) for n in outcome.stray_threads)
                    result = dataclasses.replace(result, notes=(
                        *result.notes, f"left {len(outcome.stray_threads)} non-daemon thread(s) running "
                        f"({names}); its process was ended without waiting for them"))
            else:
                result = _lost(source, outcome, progress)
            results.append(result)


@dataclasses.dataclass(frozen=True)
class StepsSoFar:
    """What a check's child has done so far, sent after every step (isolation.report_progress)."""

    steps: int
    loss: float | None
    findings: tuple | None  # None: the same as in the last report (sent again only when they change)


class _Progress:
    """The parent's copy of the child's latest StepsSoFar: what a child that dies still reports."""

    def __init__(self) -> None:
        self.built = False  # a first report comes once the scenario is built
        self.steps = 0
        self.loss: float | None = None
        self.findings: tuple[Any, ...] = ()

    def update(self, sofar: StepsSoFar) -> None:
        self.built, self.steps, self.loss = True, sofar.steps, sofar.loss
        if sofar.findings is not None:
            self.findings = sofar.findings

    def when(self) -> str:
        return f"in step {self.steps}" if self.built else "while building the scenario"

    def row(self, source: Any, status: str, seconds: float, what: str, **rest: Any) -> CheckResult:
        """The scenario's row from what its child had reported (one that gave no result)."""
        from workbench.report.run import CheckResult

        findings = tuple(self.findings)
        return CheckResult(source.label, source.where, status, self.steps, seconds, self.loss,
                           sum(f.severity == "error" for f in findings),
                           sum(f.severity == "warning" for f in findings), what, findings, **rest)


def _interrupted(source: Any, progress: _Progress, seconds: float) -> CheckResult:
    """The scenario that was running when Ctrl-C (or SIGTERM) came: what it had done by then."""
    what = f"interrupted {progress.when()}"
    return progress.row(source, "interrupted", seconds, what, detail=what)


def _lost(source: Any, outcome: Any, progress: _Progress) -> CheckResult:
    """A child that gave no result (died, hung): its failure with what it had done by then."""
    first, _, rest = (outcome.failure or "gave no result").partition("\n")
    where = f", at {outcome.stuck_at}" if outcome.stuck_at else ""
    what = f"its process {first} ({progress.when()}{where})"
    detail = "\n".join(part for part in (
        what, rest, f"Its main thread then (innermost frame first):\n{outcome.stack}" if outcome.stack else "") if part)
    return progress.row(source, "failed", outcome.seconds, what, failure=detail, detail=what)


def _reporter(engine: Any) -> Any:
    """The on_step callback that sends the child's StepsSoFar to the parent (and a first one now:
    the scenario is built, and the loader's findings)."""
    from workbench.isolation import report_progress

    sent: list[Any] = [len(engine.findings), engine.findings[-1] if engine.findings else None]
    report_progress(StepsSoFar(engine.step, None, tuple(engine.findings)))

    def on_step(record: Any) -> None:
        findings = engine.findings
        changed = (len(findings), findings[-1] if findings else None) != tuple(sent)
        if changed:
            sent[:] = [len(findings), findings[-1] if findings else None]
        report_progress(StepsSoFar(engine.step, record.loss, tuple(findings) if changed else None))

    return on_step


def check_one(source: Any, device: str, steps: int, every: int) -> CheckResult:
    """One scenario's check (in its child process): build, run ``steps`` steps, summarise."""
    from workbench.engine import Engine, EngineConfig, StepError
    from workbench.report.run import CheckResult, group_findings
    from workbench.scenario import ScenarioError

    start = time.perf_counter()
    try:
        scenario = source.build(device)
    except ScenarioError as exc:
        message = str(exc)
        return CheckResult(source.label, source.where, "failed", 0, time.perf_counter() - start, None, 0, 0,
                           "failed to load", failure=message, detail=message)
    with Engine(scenario, EngineConfig(stats_every=every)) as engine:
        outcome = engine.run(steps, until_break=False, on_step=_reporter(engine))
        history = engine.history
        findings = tuple(engine.findings)
    seconds = time.perf_counter() - start
    errors = [f for f in findings if f.severity == "error"]
    warnings = [f for f in findings if f.severity == "warning"]
    final = history[-1].loss if history else None
    if isinstance(outcome.error, StepError):
        err = outcome.error
        what = f"out of memory at batch size {err.batch_size}" if err.oom else type(err.original).__name__
        return CheckResult(source.label, source.where, "failed", outcome.steps_done, seconds,
                           final, len(errors), len(warnings), f"{what} at step {err.step} ({err.stage})",
                           findings, failure=err.traceback_text, detail=str(err))
    if errors or warnings:
        first = group_findings(errors or warnings)[0]
        return CheckResult(source.label, source.where, "findings" if errors else "warn", outcome.steps_done,
                           seconds, final, len(errors), len(warnings),
                           f"{first.kind} on {first.where} at step {first.first_step}", findings,
                           detail=first.message)
    return CheckResult(source.label, source.where, "ok", outcome.steps_done, seconds, final, 0, 0, "", findings)


def _print_lines(console: Any, lines: list[str]) -> None:
    for line in lines:
        console.print(line, highlight=False)


def _write_reports(args: argparse.Namespace, results: list, device: Any, *,
                   interrupted: bool) -> tuple[list[str], list[str]]:
    """Write --junit and --json, each on its own: one that cannot be written costs neither the
    other nor the printed results. The lines that say where they went (printed by the caller),
    and one message per report that was not written."""
    from workbench.files import atomic_write_json, atomic_write_text
    from workbench.report.junit import junit_xml

    written: list[str] = []
    unwritten: list[str] = []
    reports = (
        ("--junit", args.junit, "JUnit XML",
         lambda path: atomic_write_text(path, junit_xml(results, strict=args.strict))),
        ("--json", args.json, "report",
         lambda path: atomic_write_json(path, _json_report(args, results, device, interrupted))),
    )
    for flag, path, what, write in reports:
        if not path:
            continue
        try:
            write(path)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the other report and the table still come
            unwritten.append(_write_error(flag, path, exc))
        else:
            written.append(f"{what} written to {path}")
    return written, unwritten


def _write_error(flag: str, path: str, exc: Exception) -> str:
    """One line for a report that was not written: which flag and path, and why."""
    from workbench.errors import OutputPathError
    from workbench.files import write_failed

    if isinstance(exc, OSError):
        exc = write_failed(exc, path)
    if isinstance(exc, OutputPathError):  # its message names the path already
        return f"{flag}: {exc}"
    return f"{flag}: {path} was not written: {type(exc).__name__}: {exc}"


def _print_unwritten(unwritten: list[str]) -> None:
    """On stderr, after the results: the exit code is 2, and these lines say why."""
    import sys

    for line in unwritten:
        print(f"error: {line}", file=sys.stderr)
    if unwritten:
        print("Give each report named above a path that can be written, and run the check again.",
              file=sys.stderr)


def _json_report(args: argparse.Namespace, results: list, device: Any, interrupted: bool) -> dict[str, Any]:
    from workbench.report.json_report import finding_json

    return {
        "schema": "workbench.check/1",
        "device": str(device),
        "steps": args.steps,
        "stopped_by": "interrupted" if interrupted else "done",
        "results": [
            {"label": r.label, "path": r.path, "status": r.status, "steps": r.steps, "seconds": r.seconds,
             "final_loss": r.final_loss, "errors": r.errors, "warnings": r.warnings,
             "first_problem": r.first_problem, "detail": r.detail, "failure": r.failure,
             "notes": list(r.notes),
             "findings": [finding_json(f) for f in r.findings]}
            for r in results
        ],
    }
