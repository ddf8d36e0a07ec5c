"""workbench run SCENARIO: train N steps under the debugger, print layers and findings, write JSON."""

from __future__ import annotations

import argparse

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

    from workbench.commands._session import run_session

    return run_session(args, tuple(breakpoints))
