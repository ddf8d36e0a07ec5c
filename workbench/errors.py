"""Turning exceptions into one clear paragraph and an exit code (no UI imports).

Nothing here imports torch at module level: commands that must set
environment variables before torch loads (the profiler's log levels) can
import this module first.
"""

from __future__ import annotations

import os
import sys
import traceback

# Exit codes of every command.
EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE: what a shell reports for any tool whose output's reader went away
# (`seq 1000000 | head -1` under `set -o pipefail`).
EXIT_OUTPUT_CLOSED = 141


class OutputPathError(Exception):
    """An output path cannot be written: refused before any long work starts, or a
    write that failed (disk full ...), with the path and the reason."""


class UsageError(Exception):
    """A bad command-line value (unknown variant, steps <= 0 ...): exit 2."""


def is_user_exit(exc: BaseException) -> bool:
    """True for what user code may raise that ``except Exception`` misses: SystemExit
    (sys.exit(), exit()), GeneratorExit, a BaseException subclass of its own. Ctrl-C
    (KeyboardInterrupt) is the user's own wish to stop and is not one of them."""
    return not isinstance(exc, (Exception, KeyboardInterrupt))


# The workbench's own folder: its frames are never the user's.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_dirs(installed: bool) -> tuple[str, ...]:
    """The workbench and torch (when loaded); with ``installed``, also the standard library
    and every installed package."""
    dirs = [PACKAGE_DIR]
    torch = sys.modules.get("torch")  # never imported here: this module stays torch-free
    torch_file = getattr(torch, "__file__", None)
    if torch_file:
        dirs.append(os.path.dirname(torch_file))
    if installed:
        import sysconfig

        dirs += [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    return tuple(d.rstrip(os.sep) + os.sep for d in dirs if d)


def user_frames(exc: BaseException, *, installed: bool = False) -> list[traceback.FrameSummary]:
    """The frames of ``exc``'s traceback that are not the workbench's or torch's: the user's
    code and the libraries it calls (a transformers model's own code). With ``installed``,
    only code outside the standard library and every installed package: the user's own."""
    library = _library_dirs(installed)
    return [f for f in traceback.extract_tb(exc.__traceback__)
            if not f.filename.startswith(library) and not f.filename.startswith("<")]


def is_user_file(filename: str) -> bool:
    """Whether ``filename`` is the user's own code: not the workbench's, torch's, the standard
    library's or an installed package's, and a real file (not ``<string>``)."""
    return not filename.startswith(_library_dirs(True)) and not filename.startswith("<")


def user_frame(exc: BaseException, path: str | None = None) -> traceback.FrameSummary | None:
    """The innermost frame of ``path`` (or else of any code outside the workbench, the
    standard library and site-packages) on the exception's traceback."""
    if path is not None:
        real = os.path.realpath(path)
        mine = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.realpath(f.filename) == real]
        if mine:
            return mine[-1]
    user = user_frames(exc, installed=True)
    return user[-1] if user else None


def user_location(exc: BaseException, path: str | None = None) -> str | None:
    """'file:line' of :func:`user_frame`."""
    frame = user_frame(exc, path)
    return f"{frame.filename}:{frame.lineno}" if frame else None


def interrupted_at(exc: BaseException) -> str:
    """'interrupted' and, when Ctrl-C (or SIGTERM) came while the user's code ran, where it was:
    'interrupted at /x/train.py:41 in forward' (what a hung step was doing)."""
    # The first interrupt of the chain first: a command that keeps partial results raises its own
    # from the one that came while the user's code ran (profile's ProfileInterrupted).
    frame = next((f for e in reversed(_chain(exc)) if (f := user_frame(e)) is not None), None)
    return f"interrupted at {frame.filename}:{frame.lineno} in {frame.name}" if frame else "interrupted"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it or was being handled when it was raised (no cycles)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _stdout_has_no_reader() -> bool:
    """True when standard output is a pipe (or terminal) whose reading end is gone: poll()
    says POLLERR for a pipe with no reader left, POLLHUP for a hung-up terminal."""
    import select

    stream = sys.__stdout__
    if stream is None or not hasattr(select, "poll"):
        return False
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):  # closed or not a real file (a test's capture)
        return False


def stdout_closed(exc: BaseException) -> bool:
    """True when ``exc`` only says that standard output's reader went away (`workbench run x | head -2`):
    nobody failed, the output is just not wanted any more.

    Two shapes: a BrokenPipeError (print's flush, ours or the user code's), anywhere in the
    chain, while stdout indeed has no reader; or the SystemExit(1) that rich's Console raises
    from its ``on_broken_pipe`` (it has already pointed stdout at os.devnull, so the pipe can no
    longer be asked). That SystemExit is told from a user's sys.exit() by where it was raised:
    in library code (rich), with a BrokenPipeError being handled; a sys.exit() in the user's own
    code, even one answering a BrokenPipeError, stays the user's and is reported as such.
    """
    if isinstance(exc, SystemExit):
        frames = traceback.extract_tb(exc.__traceback__)
        library = _library_dirs(installed=True)
        return (isinstance(exc.__context__, BrokenPipeError) and bool(frames)
                and frames[-1].filename.startswith(library))
    return any(isinstance(e, BrokenPipeError) for e in _chain(exc)) and _stdout_has_no_reader()


def leave_output_closed() -> int:
    """The conventional quiet end when stdout's reader has gone: point stdout at os.devnull (what
    is still buffered would make the interpreter's last flush raise again, with a message)
    and return 141. Nothing is printed: the reader left on purpose."""
    stream = sys.__stdout__
    try:
        if stream is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
    except (OSError, ValueError):  # stdout already closed: nothing left to flush into it
        pass
    return EXIT_OUTPUT_CLOSED


# Characters of an exception's message that a report or the terminal shows; the rest is counted.
MESSAGE_LIMIT = 2000


def message_of(exc: BaseException) -> str:
    """``str(exc)``, cut to MESSAGE_LIMIT characters, and never raising: user code's exception may
    have a ``__str__`` that raises, or a message of megabytes."""
    try:
        text = str(exc)
    except KeyboardInterrupt:
        raise
    except BaseException as failed:  # noqa: BLE001 - whatever it raised, the failure is still reported
        return f"<its message cannot be shown: {type(exc).__name__}.__str__ raised {type(failed).__name__}>"
    if len(text) > MESSAGE_LIMIT:
        return f"{text[:MESSAGE_LIMIT]}... ({len(text) - MESSAGE_LIMIT:,} more characters)"
    return text


def exception_text(exc: BaseException) -> str:
    """'ValueError: boom', with :func:`message_of`'s message (the type alone when it is empty)."""
    text = message_of(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ProcessExit(SystemExit):
    """User code called ``os._exit(status)`` in the workbench's own process, which raised this
    at the call instead (isolation.guard_process_exit): reported as the scenario's failure."""

    def __init__(self, status: object) -> None:
        super().__init__(status)
        self.status = status

    def __str__(self) -> str:
        return f"os._exit({self.status!r}) was called"


def exit_description(exc: BaseException) -> str:
    """'called sys.exit(3)' / 'called os._exit(7)' / 'raised GeneratorExit: ...': what the user's code did."""
    if isinstance(exc, ProcessExit):
        return f"called os._exit({exc.status!r})"
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})" if exc.code is not None else "called sys.exit()"
    return f"raised {exception_text(exc)}"


class UserCodeExit(Exception):
    """User code tried to end the process (SystemExit ...): a scenario failure, exit 2.

    ``original`` is what it raised, ``location`` 'file:line' where (None if unknown)."""

    def __init__(self, exc: BaseException, what: str, path: str | None = None) -> None:
        self.original = exc
        self.location = user_location(exc, path)
        at = f" at {self.location}" if self.location else ""
        super().__init__(f"{what} {exit_description(exc)}{at}: user code must not end the workbench's "
                         "process (return or raise an exception instead). Fix the scenario and run again.")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is complete for a user (no traceback hint)."""
    import sys

    errors: list[type[BaseException]] = [UsageError, OutputPathError, UserCodeExit]
    # Only look at the scenario module if something already imported it: an
    # error raised by it implies it is loaded, and we never pull torch in here.
    scenario = sys.modules.get("workbench.scenario")
    if scenario is not None:
        errors.append(scenario.ScenarioError)
    step = sys.modules.get("workbench.engine.errors")
    if step is not None:
        errors.append(step.TrainingStepError)  # names the step, the phase and the user's file:line already
    distributed = sys.modules.get("workbench.distributed")
    if distributed is not None:
        errors.append(distributed.RankFailed)  # names the rank and its error already
    return tuple(errors)


def describe(exc: BaseException) -> tuple[str, int]:
    """The message a user sees and the exit code for an exception."""
    if isinstance(exc, user_errors()):
        return str(exc), 2  # the workbench's own words: whole (what they quote is cut where quoted)
    return exception_text(exc), 2


def report_exception(exc: BaseException, verbose: bool, prefix: str = "") -> int:
    """Print a command's failure as one clear paragraph (the traceback only with
    --verbose) and return its exit code: 130 for Ctrl-C / SIGTERM, 141 (quietly) when
    stdout's reader closed the pipe."""
    if isinstance(exc, KeyboardInterrupt):
        print(interrupted_at(exc), file=sys.stderr)
        return EXIT_INTERRUPTED
    if stdout_closed(exc):  # `| head`: the reader has all it wanted; neither we nor user code failed
        return leave_output_closed()
    if is_user_exit(exc):  # sys.exit() in a scenario: a failure of the scenario, never our exit
        exc = UserCodeExit(exc, "the scenario's code")

    message, code = describe(exc)
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"error: {prefix}{message}", file=sys.stderr)
    if not verbose and code == EXIT_ERROR and not isinstance(exc, user_errors()):
        print("(run with --verbose for the full traceback)", file=sys.stderr)
    return code
