"""Command-line entry point.

Each subcommand is a module in ``workbench/commands/`` defining ``NAME``,
``HELP``, ``ORDER``, ``add_arguments(parser)`` and ``run(args) -> int``.
Command modules import nothing heavy at module level, so parsing stays fast
and headless commands never load Textual.

Exit codes shared by every command: 0 success, 1 the work ran and found
errors (error findings, failed checks, a regression), 2 bad input or the
scenario failed, 130 interrupted (Ctrl-C or SIGTERM; partial results kept), 141
stdout's reader closed it (`| head`: a quiet stop, as SIGPIPE is for other tools).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
from collections.abc import Sequence
from types import ModuleType

from workbench.errors import EXIT_OK, report_exception


def _command_modules() -> list[ModuleType]:
    from workbench import commands

    mods = []
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"workbench.commands.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    from workbench import __version__

    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Debug and profile PyTorch training from the terminal. "
        "With no command, opens the interactive workbench on the bundled scenarios.",
    )
    parser.add_argument("--version", action="version", version=f"torch-workbench {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show full tracebacks on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    table = {}
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks on errors")
        mod.add_arguments(p)
        table[mod.NAME] = mod
    return parser, table


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the same path as Ctrl-C: partial results are written by
    # the commands' KeyboardInterrupt handling, then exit 130.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, table = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")
                    and all(a in ("-v", "--verbose") for a in argv)):
        argv = [*argv, "tui"] if "tui" in table else argv
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    except ValueError:  # not in the main thread (tests calling main() from a worker)
        pass
    from workbench.isolation import guard_process_exit

    guard_process_exit()  # a scenario's os._exit is its failure, reported, never our silent end
    verbose = bool(getattr(args, "verbose", False))
    empty = _empty_output_flag(args)
    if empty is not None:
        from workbench.errors import UsageError

        return report_exception(UsageError(
            f"--{empty} is empty (\"\"): expected a path to write to. Give one, or leave --{empty} out (an "
            "empty argument is often an unset shell variable)."), verbose)
    _report_on_stdout(args)
    if not verbose and args.command != "tui":
        _short_warnings()
    try:
        code = int(table[args.command].run(args) or 0)
        # A reader that left (`| head`) shows here at the latest, not in the interpreter's
        # own last flush (a message and exit 120).
        sys.stdout.flush()
        return code
    except BaseException as exc:  # SystemExit too: user code's, or rich's for a closed stdout (errors.py tells them apart)
        return report_exception(exc, verbose)


def entry(argv: Sequence[str] | None = None) -> None:
    """The console script (and ``python -m workbench``): main(), then leave.

    A scenario may leave non-daemon threads running; the interpreter would wait for
    them at exit for ever after the command's work is done. Everything is written by
    then (reports are committed before main returns), so flush, say which threads
    were left, and end the process without waiting for them.
    """
    code = main(argv)
    left = stray_threads()
    if not left:
        raise SystemExit(code)
    names = ", ".join(repr(t.name) for t in left)
    print(f"warning: the scenario left {len(left)} non-daemon thread{'s' if len(left) > 1 else ''} running "
          f"({names}); exiting without waiting for {'them' if len(left) > 1 else 'it'}.", file=sys.stderr)
    from workbench.isolation import leave_now

    leave_now(code)


def stray_threads() -> list:  # list[threading.Thread]
    """Live non-daemon threads other than the main thread (what interpreter exit would join)."""
    import threading

    main_thread = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main_thread and not t.daemon and t.is_alive()]


def _empty_output_flag(args: argparse.Namespace) -> str | None:
    """The output flag given as "" (``--json "$OUT"`` with OUT unset): it wrote nothing, silently."""
    for flag in ("json", "junit", "tensorboard", "logdir"):
        if getattr(args, flag, None) == "":
            return flag
    return None


def _report_on_stdout(args: argparse.Namespace) -> None:
    """``--json /dev/stdout`` (or the file stdout goes to): the tables go to stderr, so stdout
    carries the report alone (`workbench run x.py --json /dev/stdout | jq`)."""
    from workbench.files import writes_to_stdout

    if any(writes_to_stdout(getattr(args, flag, None)) for flag in ("json", "junit")):
        from workbench.report.text import stdout_is_the_report

        stdout_is_the_report()


def _short_warnings() -> None:
    """Library warnings as one line each, without a site-packages path (--verbose keeps them whole)."""
    import warnings

    seen: set[tuple[str, str]] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        key = (category.__name__, str(message))
        if key in seen:
            return
        seen.add(key)
        print(f"warning: {category.__name__}: {message}", file=sys.stderr)

    warnings.showwarning = show


if __name__ == "__main__":  # pragma: no cover
    entry()
