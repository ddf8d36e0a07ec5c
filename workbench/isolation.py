"""Running one piece of user code in a child process of its own.

``run_isolated(fn, *args)`` calls ``fn(*args)`` in a fresh child and returns what
it returned, or why the child gave nothing back: it exited (``os._exit(7)``), was
killed by a signal (a segfault), or ran past its timeout (an endless loop; the
child is killed). A KeyboardInterrupt in the child is raised again in the parent
(Ctrl-C stops the whole command, partial results kept). Whatever the user code does to the process (the default dtype,
monkeypatched torch functions, ``sys.modules`` entries, module-level memory,
threads that never end) dies with the child, so the next call starts clean.

Children come from a fork server (``multiprocessing``'s forkserver start method)
that imported torch and the ``preload`` modules once: each child is a fork of
that clean server, so a call costs a fork, not a torch import (measured in
benchmarks/test_isolation_cost.py). The server runs no torch op, so it has one thread (no
OpenMP pool a fork could leave half-copied: forking it is safe). Where there is no forkserver (Windows) each
child is spawned, importing everything anew.
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
    except KeyboardInterrupt:  # Ctrl-C (the whole process group gets it): the parent stops too
        code = 130
        try:
            conn.send(("interrupted", None, ()))
        except BaseException:  # noqa: S110 - the parent may be gone already
            pass
    except BaseException as exc:  # fn should not raise; if it does, say what, rather than die silently
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            conn.send(("raised", text, ()))
        except BaseException:
            code = 1
    leave_now(code)


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
    child does; Ctrl-C kills the child and propagates."""
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
    if message is not None and message[0] == "interrupted":
        raise KeyboardInterrupt  # the user's Ctrl-C, seen by the child first
    if message is not None and message[0] == "ok":
        return ChildOutcome(message[1], True, None, proc.exitcode, tuple(message[2]), seconds)
    if message is not None:
        return ChildOutcome(failure=f"raised in the child process:\n{message[1]}", exitcode=proc.exitcode,
                            seconds=seconds)
    return ChildOutcome(failure=describe_exit(proc.exitcode), exitcode=proc.exitcode, seconds=seconds)


def _stop(proc: Any) -> None:
    """Terminate, then kill, a child that must go now."""
    proc.terminate()
    proc.join(timeout=2.0)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=2.0)
