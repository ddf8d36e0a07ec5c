"""Running one piece of user code in a child process of its own.

``run_isolated(fn, *args)`` calls ``fn(*args)`` in a fresh child and returns what
it returned, or why the child gave nothing back: it exited (``os._exit(7)``), was
killed by a signal (a segfault), or ran past its timeout (an endless loop; the
child is killed). Only an interrupt of this process stops the command (Ctrl-C reaches
the parent with the child, SIGTERM the parent alone; partial results kept): a
KeyboardInterrupt the user code raises itself is the call's failure, like any other
exception. Whatever the user code does to the process (the default dtype,
monkeypatched torch functions, ``sys.modules`` entries, module-level memory,
threads that never end) dies with the child, so the next call starts clean.

Children come from a fork server (``multiprocessing``'s forkserver start method)
that imported torch and the ``preload`` modules once: each child is a fork of
that clean server, so a call costs a fork, not a torch import (measured in
benchmarks/test_isolation_cost.py). The server runs no torch op, so it has one thread (no
OpenMP pool a fork could leave half-copied: forking it is safe). Where there is no forkserver (Windows) each
child is spawned, importing everything anew. The child runs ``fn`` with no start method
chosen, as a plain process would: the fork server's is not inherited (a DataLoader's
workers are forked from the child, as they are under ``workbench run``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

# Polling interval of the parent while a child works: how soon a death or the
# timeout is noticed, and how soon Ctrl-C is (the wait itself is interruptible).
_POLL_S = 0.1


@dataclass(frozen=True)
class ChildOutcome:
    """What came back from one isolated call."""

    value: Any = None  # fn's return value, when it returned
    returned: bool = False
    failure: str | None = None  # "exited with status 7", "killed by signal SIGSEGV", "timed out after 5 s", ...
    exitcode: int | None = None  # the child's exit status; -N: killed by signal N
    stray_threads: tuple[str, ...] = ()  # non-daemon threads still running when fn returned
    seconds: float = 0.0  # wall time, process start to result


def _context(preload: Sequence[str]) -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Only takes effect before the server starts (the first child of this process).
        ctx.set_forkserver_preload(["torch", *preload])
        return ctx
    return multiprocessing.get_context("spawn")


def _child(conn: Any, cwd: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """The child's body: run fn, send its value back, leave without interpreter teardown
    (the user code's threads and atexit handlers must not keep the child alive)."""
    code = 0
    try:
        os.chdir(cwd)  # the fork server's cwd is the one it started in
        forget_start_method()
        value = fn(*args)
        import threading

        main = threading.main_thread()
        left = tuple(t.name for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive())
        conn.send(("ok", value, left))
        del value
        # DataLoader iterators shut their workers down and release their semaphores when
        # collected; os._exit below would skip that (the parent joins for at most 5 s).
        import gc

        gc.collect()
    except BaseException as exc:  # fn should not raise; if it does, say what, rather than die silently
        # KeyboardInterrupt too: a real Ctrl-C signals the parent as well, which stops before
        # it reads this; one the parent reads came without a signal, from the user code itself.
        try:
            conn.send(("raised", _raised_text(exc), ()))
        except BaseException:  # the parent is gone already (its Ctrl-C): it reads nothing now
            code = 1
    leave_now(code)


def forget_start_method() -> None:
    """Leave multiprocessing's start method unchosen, as in a process that never set one.

    A forkserver child has the server's method forced on it (``Process._bootstrap``), and
    ``torch.multiprocessing`` (a DataLoader's workers) goes through that same default
    context: its workers would be started by a fork server, which cannot unpickle a
    Dataset class defined in a scenario file (its module exists only in this child)."""
    multiprocessing.set_start_method(None, force=True)


def _raised_text(exc: BaseException) -> str:
    """'raised KeyboardInterrupt at /x/train.py:14' (the user's innermost frame), then the traceback."""
    from workbench.errors import exit_description, user_location

    location = user_location(exc)
    at = f" at {location}" if location else ""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{exit_description(exc)}{at}\n{text}"


def leave_now(code: int) -> NoReturn:
    """End the process at once with ``code`` once stdout and stderr are flushed: no
    interpreter teardown, so no thread the user's code left running is joined and no
    atexit handler of theirs runs."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: S110 - a closed pipe: nothing more can be said
            pass
    os._exit(code)


def describe_exit(exitcode: int | None) -> str:
    """'exited with status 7' / 'killed by signal SIGSEGV (11)'."""
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} ({-exitcode})"
    return f"exited with status {exitcode} without reporting a result"


def run_isolated(fn: Callable[..., Any], *args: Any, timeout_s: float | None = None,
                 preload: Sequence[str] = ()) -> ChildOutcome:
    """Call ``fn(*args)`` in a child process; ``fn``, its arguments and its result must
    pickle (module-level functions, frozen dataclasses). Never raises for what the
    child does, a KeyboardInterrupt it raises included; Ctrl-C or SIGTERM delivered to
    this process kills the child and propagates.

    A Ctrl-C signals the terminal's whole foreground process group at once, so this
    process has it pending before the child can report its own KeyboardInterrupt: the
    wait below raises it first. SIGTERM reaches this process alone (cli's handler)."""
    ctx = _context(preload)
    receive, send = ctx.Pipe(duplex=False)
    # Not daemonic: a scenario may start processes of its own (DataLoader workers),
    # which daemonic processes may not. The finally below ends it however this goes.
    proc = ctx.Process(target=_child, args=(send, os.getcwd(), fn, args), name="workbench-isolated")
    start = time.monotonic()
    proc.start()
    send.close()  # the child holds its own end: EOF here once it is gone
    message = None
    try:
        while True:
            if receive.poll(_POLL_S):
                try:
                    message = receive.recv()
                except (EOFError, OSError):  # the child died before (or while) sending
                    message = None
                break
            if not proc.is_alive():
                if receive.poll(0):
                    continue  # it sent its result, then exited: read it first
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                _stop(proc)
                return ChildOutcome(failure=f"timed out after {timeout_s:g} s and was killed",
                                    exitcode=proc.exitcode, seconds=time.monotonic() - start)
        proc.join(timeout=5.0)
    finally:
        if proc.is_alive():
            _stop(proc)
        receive.close()
    seconds = time.monotonic() - start
    if message is not None and message[0] == "ok":
        return ChildOutcome(message[1], True, None, proc.exitcode, tuple(message[2]), seconds)
    if message is not None:
        return ChildOutcome(failure=message[1], exitcode=proc.exitcode, seconds=seconds)
    return ChildOutcome(failure=describe_exit(proc.exitcode), exitcode=proc.exitcode, seconds=seconds)


def _stop(proc: Any) -> None:
    """Terminate, then kill, a child that must go now."""
    proc.terminate()
    proc.join(timeout=2.0)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=2.0)
