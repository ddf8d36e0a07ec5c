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

Nothing the child did is lost with it: ``fn`` may call :func:`report_progress` as it goes
(the parent's ``on_progress`` receives each value at once), and a child that hangs or
crashes says where. Before a child past its timeout is killed, it is asked for its
threads' stacks (``faulthandler`` on SIGUSR1, which answers even from inside a C call),
and a segfault writes them too; ``ChildOutcome.stuck_at`` is the user's innermost line of
the main thread. A child whose parent is gone (SIGKILLed) ends itself.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

# Polling interval of the parent while a child works: how soon a death or the
# timeout is noticed, and how soon Ctrl-C is (the wait itself is interruptible).
_POLL_S = 0.1
# How often a child looks for its parent, and how long the parent waits for a stuck child's
# stacks before it kills it (faulthandler writes them from the signal handler, at once).
PARENT_CHECK_S = 0.5
_DUMP_WAIT_S = 1.0
_DUMP_SIGNAL = getattr(signal, "SIGUSR1", None)  # None on Windows: no stacks from a stuck child
_MAIN_MARK = "workbench main thread "
_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+)")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')

# In a child: its end of the pipe to the parent (report_progress) and its stack file.
_to_parent: Any = None
_stack_file: Any = None


@dataclass(frozen=True)
class ChildOutcome:
    """What came back from one isolated call."""

    value: Any = None  # fn's return value, when it returned
    returned: bool = False
    failure: str | None = None  # "exited with status 7", "killed by signal SIGSEGV", "timed out after 5 s", ...
    exitcode: int | None = None  # the child's exit status; -N: killed by signal N
    stray_threads: tuple[str, ...] = ()  # non-daemon threads still running when fn returned
    seconds: float = 0.0  # wall time, process start to result
    stuck_at: str | None = None  # a hung or crashed child, or os._exit's caller: "file:line in func"
    stack: str = ""  # its main thread's stack then, innermost frame first (faulthandler's dump)


def _context(preload: Sequence[str]) -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Only takes effect before the server starts (the first child of this process).
        ctx.set_forkserver_preload(["torch", *preload])
        return ctx
    return multiprocessing.get_context("spawn")


def _child(conn: Any, cwd: str, fn: Callable[..., Any], args: tuple[Any, ...], parent: int,
           stack_path: str | None) -> None:
    """The child's body: run fn, send its value back, leave without interpreter teardown
    (the user code's threads and atexit handlers must not keep the child alive)."""
    global _to_parent
    code = 0
    try:
        os.chdir(cwd)  # the fork server's cwd is the one it started in
        forget_start_method()
        watch_parent(parent)
        arm_stack_dump(stack_path)
        _report_exits()
        _to_parent = conn
        value = fn(*args)
        _to_parent = None
        main = threading.main_thread()
        left = tuple(t.name for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive())
        conn.send(("ok", value, left))
        del value
        # DataLoader iterators shut their workers down and release their semaphores when
        # collected; os._exit below would skip that (the parent joins for at most 5 s).
        import gc

        gc.collect()
    except BaseException as exc:  # fn should not raise; if it does, say what, rather than die silently
        _to_parent = None
        # KeyboardInterrupt too: a real Ctrl-C signals the parent as well, which stops before
        # it reads this; one the parent reads came without a signal, from the user code itself.
        try:
            conn.send(("raised", _raised_text(exc), ()))
        except BaseException:  # the parent is gone already (its Ctrl-C): it reads nothing now
            code = 1
    leave_now(code)


def _report_exits() -> None:
    """Have ``os._exit`` in this child tell the parent who called it first (it leaves no stack
    behind): the user's innermost frame, so the failure names its line, as a hang's does."""
    real, me = os._exit, os.getpid()

    def exit_now(status: int) -> NoReturn:
        conn = _to_parent  # None once fn is done: the child's own leave_now
        if conn is not None and os.getpid() == me:  # not in a forked DataLoader worker
            try:
                conn.send(("exit", status, _caller()))
            except BaseException:  # noqa: S110 - the parent is gone: nothing to tell
                pass
        real(status)

    os._exit = exit_now


def _caller() -> str | None:
    """'file:line in func' of the innermost user frame calling (see errors.is_user_file)."""
    from workbench.errors import is_user_file

    frame = sys._getframe(2)
    while frame is not None:
        if is_user_file(frame.f_code.co_filename):
            return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return None


def report_progress(value: Any) -> None:
    """From ``fn`` in its child: hand ``value`` (it must pickle) to the parent's ``on_progress``
    now, so it is kept whatever the child does next. Does nothing outside an isolated child."""
    conn = _to_parent
    if conn is None:
        return
    try:
        conn.send(("progress", value))
    except OSError:  # the parent is gone: watch_parent ends this process
        pass


def watch_parent(pid: int, every_s: float = PARENT_CHECK_S) -> None:
    """End this process when process ``pid`` (its parent) is gone, killed say, even while the
    main thread is inside a forward: a daemon thread looks every ``every_s`` seconds."""
    def watch() -> None:
        while True:
            time.sleep(every_s)
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):  # gone (or the pid reused by someone else's)
                real_exit(0)

    threading.Thread(target=watch, name="workbench-parent-watch", daemon=True).start()


def arm_stack_dump(path: str | None) -> None:
    """In a child: have faulthandler write every thread's stack to ``path`` on a crash and when
    :func:`ask_for_stacks` signals (its handlers are C code: they answer while the main thread
    is stuck in a C call)."""
    global _stack_file
    if path is None:
        return
    import faulthandler

    _stack_file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - kept open: the handlers write to it
    _stack_file.write(f"{_MAIN_MARK}0x{threading.main_thread().ident or 0:016x}\n")
    _stack_file.flush()
    faulthandler.enable(file=_stack_file, all_threads=True)
    if _DUMP_SIGNAL is not None:
        faulthandler.register(_DUMP_SIGNAL, file=_stack_file, all_threads=True)


def main_thread_frames(dump: str) -> list[tuple[str, int, str]]:
    """The main thread's frames in a stack file (innermost first) as (file, line, function)."""
    lines = dump.splitlines()
    main = lines[0][len(_MAIN_MARK):] if lines and lines[0].startswith(_MAIN_MARK) else None
    blocks: dict[str, list[tuple[str, int, str]]] = {}
    current: list[tuple[str, int, str]] | None = None
    first: str | None = None
    for line in lines[1:]:
        thread = _THREAD.match(line)
        if thread:
            current = blocks.setdefault(thread.group(1), [])
            first = first or thread.group(1)
            continue
        frame = _FRAME.match(line)
        if frame and current is not None:
            current.append((frame.group(1), int(frame.group(2)), frame.group(3)))
    if main in blocks:
        return blocks[main]
    return blocks[first] if first is not None else []


def _stuck_at(frames: list[tuple[str, int, str]]) -> str | None:
    """'file:line in func' of the innermost frame that is the user's own code (else the innermost)."""
    from workbench.errors import is_user_file

    if not frames:
        return None
    chosen = next((f for f in frames if is_user_file(f[0])), frames[0])
    return f"{chosen[0]}:{chosen[1]} in {chosen[2]}"


def read_stacks(path: str, since: int = 0) -> tuple[str | None, str]:
    """Where the main thread was in the stack file's dump written after byte ``since`` (the
    file keeps every dump): its :func:`_stuck_at` and its frames, as text."""
    try:
        with open(path, "rb") as f:
            header = f.readline()
            f.seek(max(since, f.tell()))
            dump = (header + f.read()).decode("utf-8", errors="replace")
    except OSError:
        return None, ""
    frames = main_thread_frames(dump)
    from workbench.errors import PACKAGE_DIR

    # The frames down to the workbench's own (the scenario's code and what it called): the
    # workbench's and the child's bootstrap below them say nothing about the hang.
    ours = next((i for i, f in enumerate(frames) if f[0].startswith(PACKAGE_DIR)), len(frames))
    text = "\n".join(f'  File "{file}", line {line} in {func}' for file, line, func in frames[:ours])
    return _stuck_at(frames), text


def ask_for_stacks(pid: int | None, path: str) -> int:
    """Signal a stuck child (armed with :func:`arm_stack_dump` on ``path``) to write its stacks,
    and wait briefly until they are written; returns where in the file the new dump starts."""
    try:
        before = os.path.getsize(path)
    except OSError:
        return 0
    if _DUMP_SIGNAL is None or pid is None:
        return before
    try:
        os.kill(pid, _DUMP_SIGNAL)
    except OSError:
        return before
    deadline = time.monotonic() + _DUMP_WAIT_S
    size = before
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            now = os.path.getsize(path)
        except OSError:
            return before
        if now > before and now == size:  # written, and no longer growing
            return before
        size = now
    return before


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
    real_exit(code)


class ProcessGuard:
    """What user code running in the command's own process may take from it, put back.

    Made before any user code runs; :meth:`check` (after a build, between phases: a few
    attribute reads) restores what was replaced since, and says so once:

    * the SIGINT/SIGTERM handlers (``signal.signal(SIGINT, SIG_IGN)`` in a build made ``run``
      impossible to stop but by SIGKILL, with no report); only in the main thread, the one
      Python lets set handlers;
    * ``sys.stdout`` and ``sys.stderr`` (a scenario that set them to an object whose write
      raises, or to a StringIO, took the command's tables, its report's path and its errors
      with it, and made a finished run end as a failure). The scenario's prints after that go
      to the real streams too.
    """

    SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)
    STREAMS = ("stdout", "stderr")

    def __init__(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        self.handlers = {s: signal.getsignal(s) for s in self.SIGNALS} if main else {}
        self.streams = {name: getattr(sys, name) for name in self.STREAMS}
        # A copy of each stream's file descriptor: a scenario that closes sys.stdout closes its
        # descriptor too, and the command's output would have nowhere to go.
        self.fds: dict[str, int] = {}
        for name, stream in self.streams.items():
            try:
                self.fds[name] = os.dup(stream.fileno())  # not inherited by child processes
            except (AttributeError, OSError, ValueError):  # no real file (a test's capture)
                pass
        self.told = False

    def __del__(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def check(self) -> None:
        changed = []
        for sig, handler in self.handlers.items():
            if signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
                changed.append(f"the {signal.Signals(sig).name} handler")
        for name, stream in self.streams.items():
            if getattr(sys, name) is not stream:
                setattr(sys, name, stream)
                changed.append(f"sys.{name}")
            if stream.closed and name in self.fds:
                # Closed by the user's code: a new stream on the descriptor kept at the start.
                reopened = os.fdopen(os.dup(self.fds[name]), "w", encoding=getattr(stream, "encoding", None),
                                     errors="backslashreplace", buffering=1)
                self.streams[name] = reopened
                setattr(sys, name, reopened)
                changed.append(f"sys.{name} (it closed it)")
        if changed and not self.told:
            self.told = True
            print(f"warning: the scenario's code changed {' and '.join(changed)}; the workbench put "
                  f"{'them' if len(changed) > 1 else 'it'} back, so Ctrl-C and SIGTERM still stop the command "
                  "with its results kept, and its output (the scenario's prints too) reaches the terminal.",
                  file=sys.stderr)


def real_exit(code: int) -> NoReturn:
    """``os._exit`` itself, past :func:`guard_process_exit`: the workbench's own exits."""
    exit_now = os._exit
    while hasattr(exit_now, "__wrapped__"):
        exit_now = exit_now.__wrapped__
    exit_now(code)


def guard_process_exit() -> None:
    """Make ``os._exit`` in user code that runs in this process raise ``ProcessExit`` at the call.

    The commands that run a scenario in their own process (run, bench, profile, summary,
    diff) then report it like a ``sys.exit``: the scenario's failure, with its line, exit
    2, and the reports gathered so far written. Without it the process would vanish with
    the scenario's status (``os._exit(0)``: a green CI job and no report). Only this process
    is guarded: a forked child (a DataLoader worker) exits for real, and so do the
    workbench's own exits (:func:`real_exit`). A thread of the user's that calls it ends,
    with a warning saying where (the main thread goes on). Installing it twice does nothing.
    """
    if hasattr(os._exit, "__wrapped__"):
        return
    real, me = os._exit, os.getpid()

    def exit_guarded(status: int) -> NoReturn:
        if os.getpid() != me:
            real(status)
        from workbench.errors import ProcessExit

        if threading.current_thread() is not threading.main_thread():
            at = _caller()
            print(f"warning: thread {threading.current_thread().name!r} called os._exit({status!r})"
                  f"{f' at {at}' if at else ''}; that thread ended, the workbench goes on.", file=sys.stderr)
        raise ProcessExit(status)

    exit_guarded.__wrapped__ = real  # type: ignore[attr-defined]
    os._exit = exit_guarded


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


def ensure_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with a real stderr.

    It hands ``sys.stderr.fileno()`` to the tracker it spawns; under a running
    Textual app ``sys.stderr`` is the app's capture object, with no file
    descriptor, and the spawn fails. The swap lasts as long as that spawn.
    """
    from multiprocessing import resource_tracker

    try:
        sys.stderr.fileno()
        resource_tracker.ensure_running()
        return
    except (AttributeError, OSError, ValueError):
        pass
    saved = sys.stderr
    real = sys.__stderr__
    devnull = None
    try:
        real.fileno()  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        real = devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        sys.stderr = real
        resource_tracker.ensure_running()
    finally:
        sys.stderr = saved
        if devnull is not None:
            devnull.close()


def run_isolated(fn: Callable[..., Any], *args: Any, timeout_s: float | None = None,
                 preload: Sequence[str] = (), on_progress: Callable[[Any], None] | None = None) -> ChildOutcome:
    """Call ``fn(*args)`` in a child process; ``fn``, its arguments and its result must
    pickle (module-level functions, frozen dataclasses). Never raises for what the
    child does, a KeyboardInterrupt it raises included; Ctrl-C or SIGTERM delivered to
    this process kills the child and propagates. ``on_progress`` receives, in this
    process and in order, each value ``fn`` passes to :func:`report_progress`.

    A Ctrl-C signals the terminal's whole foreground process group at once, so this
    process has it pending before the child can report its own KeyboardInterrupt: the
    wait below raises it first. SIGTERM reaches this process alone (cli's handler)."""
    ctx = _context(preload)
    ensure_resource_tracker()  # under a Textual app too, whose sys.stderr has no descriptor
    receive, send = ctx.Pipe(duplex=False)
    handle, stack_path = tempfile.mkstemp(prefix="workbench-stacks-", suffix=".txt")
    os.close(handle)
    # Not daemonic: a scenario may start processes of its own (DataLoader workers),
    # which daemonic processes may not. The finally below ends it however this goes.
    proc = ctx.Process(target=_child, args=(send, os.getcwd(), fn, args, os.getpid(), stack_path),
                       name="workbench-isolated")
    start = time.monotonic()
    message = None
    exited: tuple[int, str | None] | None = None  # os._exit(code) called at, before the child went
    try:
        proc.start()
        send.close()  # the child holds its own end: EOF here once it is gone
        while True:
            if receive.poll(_POLL_S):
                try:
                    message = receive.recv()
                except (EOFError, OSError):  # the child died before (or while) sending
                    message = None
                    break
                if message[0] == "exit":
                    exited, message = (message[1], message[2]), None
                    continue
                if message[0] != "progress":
                    break
                if on_progress is not None:
                    on_progress(message[1])
                message = None
            elif not proc.is_alive():
                if receive.poll(0):
                    continue  # it sent its result, then exited: read it first
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                ask_for_stacks(proc.pid, stack_path)
                _stop(proc)
                stuck_at, stack = read_stacks(stack_path)
                return ChildOutcome(failure=f"timed out after {timeout_s:g} s and was killed",
                                    exitcode=proc.exitcode, seconds=time.monotonic() - start,
                                    stuck_at=stuck_at, stack=stack)
        proc.join(timeout=5.0)
        seconds = time.monotonic() - start
        if message is not None and message[0] == "ok":
            return ChildOutcome(message[1], True, None, proc.exitcode, tuple(message[2]), seconds)
        if message is not None:
            return ChildOutcome(failure=message[1], exitcode=proc.exitcode, seconds=seconds)
        if exited is not None:  # the user's code called os._exit: where, from the call itself
            return ChildOutcome(failure=f"called os._exit({exited[0]})", exitcode=proc.exitcode, seconds=seconds,
                                stuck_at=exited[1])
        # Died without a word: a crash (a segfault) left its stacks.
        stuck_at, stack = read_stacks(stack_path) if (proc.exitcode or 0) < 0 else (None, "")
        return ChildOutcome(failure=describe_exit(proc.exitcode), exitcode=proc.exitcode, seconds=seconds,
                            stuck_at=stuck_at, stack=stack)
    finally:
        if proc.is_alive():
            _stop(proc)
        receive.close()
        try:
            os.unlink(stack_path)
        except OSError:
            pass


def _stop(proc: Any) -> None:
    """Terminate, then kill, a child that must go now."""
    proc.terminate()
    proc.join(timeout=2.0)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=2.0)
