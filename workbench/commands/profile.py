"""workbench profile: trace a scenario's training steps and analyse the trace in the terminal."""

from __future__ import annotations

import argparse
import os

NAME = "profile"
ORDER = 40
HELP = "profile training steps: TensorBoard trace, step breakdown, top ops, advice"
DESCRIPTION = (
    "Run the scenario's training loop under torch.profiler with a wait/warmup/active "
    "schedule and write LOGDIR/<run>/<worker>.<span>.pt.trace.json (TensorBoard's PyTorch "
    "Profiler plugin, Perfetto and chrome://tracing read it). Then print our own analysis: "
    "per-step time breakdown (kernel, memcpy, memset, communication, runtime, DataLoader, "
    "CPU exec, other), top operators, phases/modules, memory, and recommendations with the "
    "`workbench bench` variant that tests each. `--analyze DIR` analyses an existing trace "
    "directory without running anything. `--ddp N` profiles N local DistributedDataParallel "
    "ranks (gloo on CPU, NCCL on CUDA), one worker file per rank; under torchrun "
    "(`torchrun --nproc-per-node N -m workbench profile SCENARIO`) each process "
    "profiles itself as one rank."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", help="scenario file, file.py:function or module (not with --analyze)")
    p.add_argument("--analyze", metavar="DIR", help="analyse an existing run directory, logdir or trace file")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--logdir", default="runs/profile", help="where runs go (default: runs/profile)")
    p.add_argument("--run", "--run-name", dest="run",
                   help="run name (default: <scenario>-<YYYYmmdd-HHMMSS>); under torchrun spell it "
                        "--run-name (torchrun reads --run as its own --run-path)")
    p.add_argument("--append", action="store_true",
                   help="profile into an existing --run directory (refused otherwise); the analysis reads "
                        "this profile's traces only")
    p.add_argument("--wait", type=int, default=1, help="steps run before profiling starts (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="steps profiled but discarded (default 1)")
    p.add_argument("--active", type=int, default=3, help="steps recorded in the trace (default 3)")
    p.add_argument("--steps", type=int, help="total steps; sets --active to STEPS - wait - warmup")
    p.add_argument("--memory", action="store_true", help="record memory events (profile_memory)")
    p.add_argument("--shapes", action="store_true", help="record operator input shapes (record_shapes)")
    p.add_argument("--stack", action="store_true", help="record Python stacks and nn.Module ranges (slower)")
    p.add_argument("--gzip", action="store_true", help="write .pt.trace.json.gz")
    p.add_argument("--ddp", type=int, metavar="N",
                   help="profile N local DDP ranks (batch split across them), one trace file per rank")
    p.add_argument("--max-trace-mb", type=float, default=None,
                   help="stop before profiling when the estimated trace is larger (default 200); with "
                        "--analyze, refuse trace files that inflate past it (default 1024)")
    p.add_argument("--force", action="store_true", help="write the trace even above --max-trace-mb")
    p.add_argument("--json", metavar="FILE", help="also write the full analysis as JSON (checked before profiling)")
    p.add_argument("--top", type=int, default=15, help="rows in the operator table (default 15)")
    p.add_argument("--findings", metavar="REPORT",
                   help="add the health findings of a `workbench run --json` report to the recommendations")
    p.add_argument("--open-tensorboard", action="store_true",
                   help="start TensorBoard on 127.0.0.1 (a free port) afterwards; Ctrl-C stops it")


def _options(args: argparse.Namespace):  # -> ProfileOptions
    from workbench.errors import UsageError
    from workbench.profiling.options import ProfileOptions

    active = args.active
    if args.steps is not None:
        active = args.steps - args.wait - args.warmup
        if active < 1:
            raise UsageError(
                f"--steps {args.steps} leaves no active step after --wait {args.wait} and "
                f"--warmup {args.warmup}; use --steps >= {args.wait + args.warmup + 1}."
            )
    return ProfileOptions(wait=args.wait, warmup=args.warmup, active=active, memory=args.memory,
                          shapes=args.shapes, stack=args.stack, gzip=args.gzip)


def run(args: argparse.Namespace) -> int:
    from workbench.profiling.native_logs import quiet_native_logs

    quiet_native_logs()  # first: importing workbench.errors already loads torch
    from workbench.errors import UsageError

    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}.")
    if args.analyze and args.scenario:
        raise UsageError("pass either a SCENARIO to profile or --analyze DIR, not both.")
    if not args.analyze and not args.scenario:
        raise UsageError("missing SCENARIO (e.g. `workbench profile scenarios/cnn_image.py`), or --analyze DIR.")
    if args.max_trace_mb is not None and args.max_trace_mb <= 0:
        raise UsageError(f"--max-trace-mb must be > 0, got {args.max_trace_mb:g}.")
    if args.ddp is not None and (args.analyze or args.ddp < 2):
        raise UsageError(f"--ddp N needs a SCENARIO and N >= 2, got --ddp {args.ddp}"
                         + (" with --analyze." if args.analyze else "."))
    options = None if args.analyze else _options(args)
    if not args.analyze:
        from workbench.profiling.sidecar import check_logdir, check_run_name

        check_logdir(args.logdir)  # a newline in either would lose the trace: refused before any work
        if args.run is not None:
            check_run_name(args.run)

    from rich.text import Text

    from workbench.profiling.runs import analyze_path
    from workbench.profiling.trace import DEFAULT_MAX_READ_MB
    from workbench.report.profile import estimate_line, files_view, run_view
    from workbench.report.text import plain_console

    console = plain_console()
    if args.json:
        from workbench.files import check_writable, scenario_inputs

        inputs = [*scenario_inputs(args.scenario), *_analyzed_inputs(args.analyze)]
        if args.findings:
            inputs.append(("the --findings report", args.findings))
        check_writable(args.json, inputs=inputs)
    findings: tuple = ()
    if args.findings:
        from workbench.report.json_report import read_findings

        findings = read_findings(args.findings)  # checked before profiling
        _check_findings_scenario(args)
    if args.analyze:
        analysis = analyze_path(args.analyze, findings=findings,
                                max_mb=args.max_trace_mb or DEFAULT_MAX_READ_MB)
        written = _write_analysis(args.json, analysis)
        console.print(run_view(analysis, args.top))
        logdir = analysis.run_dir.parent
    else:
        from workbench.distributed import under_torchrun
        from workbench.profiling.export import DEFAULT_MAX_TRACE_MB, ProfileInterrupted, run_profile
        from workbench.scenario import load_source

        source = load_source(args.scenario)
        limit = args.max_trace_mb or DEFAULT_MAX_TRACE_MB
        if under_torchrun():
            if args.ddp is not None:
                raise UsageError("--ddp spawns local ranks; under torchrun each process is already a rank. "
                                 "Leave --ddp out (torchrun --nproc-per-node sets the number of ranks).")
            _leave_now(_torchrun_rank_code(args, console, source, options, limit, findings))
        from workbench.isolation import ProcessGuard

        guard = ProcessGuard()  # the build and the profiled steps may replace the std streams
        with console.status(f"profiling {source.label}: estimating the trace size ...") as status:

            def on_estimate(size) -> None:  # noqa: ANN001 - SizeEstimate
                guard.check()
                console.print(estimate_line(size))
                if size.total_bytes > limit * 2**20 and args.force:
                    console.print(Text(f"warning: over the {limit:g} MB limit; writing it anyway (--force)",
                                       style="yellow"))

            def on_progress(done: int, total: int) -> None:
                guard.check()
                status.update(f"profiling {source.label}: step {done}/{total}")

            assert options is not None  # set whenever a scenario is profiled (not --analyze)
            try:
                result = run_profile(
                    source, args.device, args.logdir, options, run=args.run, max_trace_mb=limit,
                    force=args.force, on_progress=on_progress, on_estimate=on_estimate,
                    ranks=args.ddp or 1, append=args.append,
                )
            except ProfileInterrupted as stop:
                guard.check()
                # soft_wrap: a path or command on one line, whatever the width, so it pastes whole
                for f in stop.files:
                    console.print(f"partial trace kept: {f}", soft_wrap=True)
                if stop.files:
                    console.print(f"analyse it with: workbench profile --analyze {stop.run_dir}", soft_wrap=True)
                    _write_partial_analysis(console, args.json, stop.run_dir, findings)
                raise
            finally:
                guard.check()
        console.print(files_view(result), soft_wrap=True)  # its paths and commands paste whole
        if not result.files:
            return 1
        analysis = analyze_path(result.run_dir, findings=findings)
        written = _write_analysis(args.json, analysis)
        console.print(run_view(analysis, args.top))
        logdir = result.logdir
    if written:
        console.print(f"analysis written to {written}", soft_wrap=True)
    if args.open_tensorboard:
        return _serve(console, logdir)
    return 0


def _check_findings_scenario(args: argparse.Namespace) -> None:
    """The --findings report must be of the scenario profiled (or analysed): another's findings
    would recommend fixes for modules this model does not have."""
    from workbench.profiling.runs import check_findings_scenario, profiled_scenario

    if args.analyze:
        label, spec = profiled_scenario(args.analyze)
        check_findings_scenario(args.findings, label,
                                f"the run analysed ({args.analyze}) is a profile of {{label}}", spec)
    else:
        from workbench.scenario import load_source

        check_findings_scenario(args.findings, load_source(args.scenario).label,
                                f"{args.scenario} is scenario {{label}}", args.scenario)


def _write_partial_analysis(console, path: str | None, run_dir: object, findings) -> None:  # noqa: ANN001
    """--json of an interrupted profile: the analysis of the steps whose trace was kept."""
    if not path:
        return
    from workbench.profiling.runs import analyze_path
    from workbench.profiling.trace import TraceError

    try:
        written = _write_analysis(path, analyze_path(run_dir, findings=findings))  # type: ignore[arg-type]
    except TraceError as exc:  # a trace cut short where it stopped: said, not raised over the interrupt
        console.print(f"{path} not written: the partial trace cannot be analysed ({exc})", soft_wrap=True)
        return
    console.print(f"analysis of the partial trace written to {written}", soft_wrap=True)


def _write_analysis(path: str | None, analysis: object) -> str | None:
    """Write --json before anything about it is printed: a reader of stdout that leaves early
    (`| head`) ends the printing, and the file must not depend on it. Returns the path written."""
    if not path:
        return None
    from workbench.files import atomic_write_json

    return str(atomic_write_json(path, analysis, schema="workbench.profile/1"))


def _analyzed_inputs(path: str | None) -> list[tuple[str, str]]:
    """The trace files --analyze reads (as check_writable inputs): --json must not replace one."""
    if not path:
        return []
    from workbench.profiling.trace import TraceError, find_runs

    try:
        runs = find_runs(path)
    except TraceError:
        return []  # analyze_path says what is wrong with it, after the output checks
    return [("a trace being analysed", str(f.path)) for files in runs.values() for f in files]


def _leave_now(code: int) -> None:
    """End a torchrun rank without interpreter teardown, once everything is written.

    After destroy_process_group, a rank that had run the profiler and DDP sometimes
    aborts at exit ("terminate called without an active exception": a native thread
    still joinable during static destruction; seen once in a CI run, not reproducible
    by hand in 16 tries). torchrun then reports the job failed and kills the other
    ranks, rank 0 in the middle of its analysis. Nothing is left to do by then
    (traces, metadata and output are written), so skip the teardown.
    """
    from workbench.isolation import leave_now

    leave_now(code)


def _torchrun_rank_code(args, console, source, options, limit, findings) -> int:  # noqa: ANN001
    """The rank's exit code, its error reported as the CLI would: the rank then leaves at once."""
    from workbench.errors import report_exception

    try:
        return _as_torchrun_rank(args, console, source, options, limit, findings)
    except (Exception, KeyboardInterrupt) as exc:
        return report_exception(exc, bool(getattr(args, "verbose", False)),
                                prefix=f"rank {os.environ.get('RANK', '?')}: ")


def _as_torchrun_rank(args, console, source, options, limit, findings) -> int:  # noqa: ANN001
    """One rank of a torchrun job; rank 0 prints the files and the analysis of all ranks."""
    import os

    from workbench.profiling.ddp import profile_torchrun
    from workbench.profiling.runs import analyze_path
    from workbench.report.profile import estimate_line, files_view, run_view

    rank = int(os.environ["RANK"])
    lead = rank == 0
    result = profile_torchrun(
        source, args.device, args.logdir, options, run=args.run, max_trace_mb=limit, force=args.force,
        on_estimate=(lambda size: console.print(estimate_line(size))) if lead else None,
    )
    if not lead:
        for f in result.files:
            console.print(f"rank {rank} wrote {f}", soft_wrap=True)
        return 0 if result.files else 1
    console.print(files_view(result), soft_wrap=True)
    if not result.files:
        return 1
    analysis = analyze_path(result.run_dir, findings=findings)
    written = _write_analysis(args.json, analysis)
    console.print(run_view(analysis, args.top))
    if written:
        console.print(f"analysis written to {written}", soft_wrap=True)
    return 0


def _serve(console, logdir) -> int:  # noqa: ANN001 - rich Console, Path
    from rich.text import Text

    from workbench.profiling.tensorboard import start_tensorboard

    with console.status("starting TensorBoard ..."):
        tb = start_tensorboard(logdir)
    console.print(Text.assemble(f"TensorBoard serves {logdir} at ", (tb.url, "cyan"),
                                f" (pid {tb.pid}, log {tb.log_path})."))
    console.print("Press Ctrl-C to stop it.")
    try:
        tb.process.wait()
    except KeyboardInterrupt:
        console.print("stopping TensorBoard")
    finally:
        tb.stop()
    return 0
