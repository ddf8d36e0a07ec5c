"""The scenario Engine in a child process of its own, serving the session protocol.

The TUI used to step the Engine on a thread of its own process, so the user's
code ran next to the screen: a forward that never returned kept the process
alive after ``q``, ``os._exit`` took the screen down with it. Here the engine
lives in a child, and the TUI is one client of it:

- ``EngineHost`` runs in the child: it builds the scenario, says ``Hello``, then
  serves commands (one phase, one step, run until a breakpoint, pause, skip,
  rewind, breakpoints, a tensor sample, stop) and publishes what the engine
  records (steps, findings, progress, errors) as protocol messages. Between the
  phases of a run it reads commands without blocking, so a pause or a sample
  request is answered mid-run.
- ``HostProcess`` is the parent's handle: it starts the child as a fork of the
  fork server ``workbench.isolation`` uses for ``check`` (torch imported once),
  reads its messages and what it prints (fd 1 and 2 of the child are pipes to
  the parent, so a C++ warning cannot draw over the screen either), and ends it:
  ``Stop``, then SIGTERM, then SIGKILL to its whole process group, each after a
  short grace, so nothing the user's code started is left behind.

The messages and commands are the session protocol's (``workbench.session.protocol``),
the same a ``watch`` host publishes. The wire between them is a ``Channel`` (host
side) and a ``HostProcess`` (client side) with the session transport's method names
(``publish``, ``commands``, ``wait_command``; ``send``, ``poll``, ``close``); this
module pickles the protocol's dataclasses over a ``multiprocessing`` pipe (no JSON
round trip between two processes of one workbench).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import select
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from workbench.engine.records import Finding, Phase, StepRecord
from workbench.errors import exception_text
from workbench.session.protocol import (
    Continue,
    Ended,
    Error,
    Findings,
    Hello,
    Pause,
    Progress,
    RequestSample,
    Rewind,
    RunSummary,
    Sample,
    SetBreakpoints,
    SkipStep,
    Step,
    StepPhase,
    Stop,
)
from workbench.session.views import (
    TUI_SNAPSHOTS,
    format_error,
    inspect_module,
    module_tree,
    run_reason,
    scenario_summary,
)

if TYPE_CHECKING:
    from workbench.engine.engine import Engine, EngineConfig
    from workbench.scenario import ScenarioSource

HOST_KIND: Literal["engine"] = "engine"
# How often a run publishes its progress (records go out as they are made; the
# step in progress, its phase and the throttled view at most this often).
PROGRESS_INTERVAL_S = 0.1
# Ending the child: how long Stop, then SIGTERM, get before the next, harder, step.
# Together well under the one second a quit may take.
STOP_GRACE_S = 0.25
TERM_GRACE_S = 0.3
# The child checks this often that the process that started it is still there.
PARENT_CHECK_S = 0.5
OUTPUT_LINE_LIMIT = 2000  # characters kept of one printed line
CHILD_NICE = 5  # the engine child's niceness above the TUI's
# Imported once by the fork server, so starting a host costs a fork (workbench.isolation).
ENGINE_HOST_PRELOAD = ("torch._dynamo", "psutil", "workbench.engine.engine", "workbench.scenario.loader",
                       "workbench.scenario.step", "workbench.session.engine_host")


class Channel(Protocol):
    """The host's side of a session's transport."""

    def publish(self, message: Any) -> None: ...
    def commands(self) -> list[Any]: ...
    def wait_command(self, timeout: float) -> Any | None: ...


class ClientGone(Exception):
    """The client's end of the channel closed: nobody is listening any more."""


class PipeChannel:
    """A Channel over a ``multiprocessing`` connection (pickled messages, in order)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def publish(self, message: Any) -> None:
        try:
            self.conn.send(message)
        except (OSError, EOFError) as exc:
            raise ClientGone(str(exc)) from exc

    def commands(self) -> list[Any]:
        out = []
        try:
            while self.conn.poll(0):
                out.append(self.conn.recv())
        except (OSError, EOFError) as exc:
            raise ClientGone(str(exc)) from exc
        return out

    def wait_command(self, timeout: float) -> Any | None:
        try:
            return self.conn.recv() if self.conn.poll(timeout) else None
        except (OSError, EOFError) as exc:
            raise ClientGone(str(exc)) from exc


# -- the host (in the child) -------------------------------------------------------------------
class EngineHost:
    """One scenario's Engine, driven by commands from a channel."""

    def __init__(self, source: ScenarioSource, device: str, config: EngineConfig | None,
                 channel: Channel) -> None:
        self.source = source
        self.device = device
        self.config = config
        self.channel = channel
        self.engine: Engine | None = None
        self._sent_step = -1  # the newest step whose record was published
        self._last_finding: Finding | None = None  # the newest finding published (by identity)
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------------
    def serve(self) -> int:
        """Build, then serve commands until Stop or the client goes; the exit status."""
        try:
            if not self._open():
                return 2
            while not self._stopping:
                command = self.channel.wait_command(PARENT_CHECK_S)
                if command is not None:
                    self._handle(command)
            self.channel.publish(Ended("stopped", 0))
            return 0
        except ClientGone:
            return 0
        finally:
            if self.engine is not None:
                try:
                    self.engine.close()
                except Exception:  # noqa: S110 - the process ends next; nothing left to restore for
                    pass

    def _open(self) -> bool:
        from workbench.engine.engine import Engine, EngineConfig

        try:
            config = self.config if self.config is not None else EngineConfig(snapshots=TUI_SNAPSHOTS)
            self.engine = engine = Engine.from_source(self.source, self.device, config)
            summary = scenario_summary(self.source, engine)
            modules = module_tree(engine)
        except BaseException as exc:  # the user's build(): SystemExit too is a failed build here
            title, details = format_error(exc)
            self.channel.publish(Error(kind=type(exc).__name__, message=title, file=None, line=None,
                                       traceback=details, fatal=True))
            self.channel.publish(Ended("the scenario failed to build", 2))
            return False
        self.channel.publish(Hello(host=HOST_KIND, pid=os.getpid(), title=self.source.where, device=summary.device,
                                   every=config.stats_every, modules=modules, breakpoints=self._conditions(),
                                   started_at=time.time(), summary=summary))
        self._publish_news()
        self._progress()
        return True

    # -- commands ------------------------------------------------------------------------------
    def _handle(self, command: Any) -> None:
        try:
            self._dispatch(command)
        except ClientGone:
            raise
        # KeyboardInterrupt too: here it is the user's code's (a scenario's load_state, say), see
        # _interrupted_step.
        except (Exception, KeyboardInterrupt) as exc:  # the host must outlive anything a command meets
            self._failed(exc, getattr(command, "id", None))

    def _dispatch(self, command: Any) -> None:
        engine = self.engine
        assert engine is not None
        if isinstance(command, Stop):
            self._stopping = True
        elif isinstance(command, Pause):
            self._progress(note="nothing is running")
        elif isinstance(command, RequestSample):
            self._sample(command)
        elif isinstance(command, SetBreakpoints):
            self._set_breakpoints(command)
        elif isinstance(command, StepPhase):
            self._guarded(command.id, engine.step_once if command.whole_step else engine.advance)
        elif isinstance(command, SkipStep):
            self._guarded(command.id, engine.skip_step)
        elif isinstance(command, Continue):
            self._run(command)
        elif isinstance(command, Rewind):
            self._rewind(command)
        else:
            self.channel.publish(Error(kind="protocol", file=None, line=None, traceback=repr(command),
                                       message=f"the engine host does not know the command "
                                       f"{type(command).__name__}"))

    def _guarded(self, reply_to: int, call: Callable[[], Any]) -> None:
        """Run one engine call; a failure of the user's code is an Error, then the state."""
        from workbench.engine.errors import StepError

        try:
            try:
                call()
            except KeyboardInterrupt as exc:
                raise _interrupted_step(self.engine, exc) from exc
        except StepError as exc:
            self._failed(exc, reply_to)
            return
        except RuntimeError as exc:  # the engine refused (skip with no step): say why
            self._publish_news()
            self._progress(reply_to, note=str(exc), warning=True)
            return
        except Exception as exc:
            self._failed(exc, reply_to)
            return
        self._publish_news()
        self._progress(reply_to)

    def _failed(self, exc: BaseException, reply_to: int | None) -> None:
        from workbench.engine.errors import StepError

        title, details = format_error(exc)
        if isinstance(exc, StepError):  # the user's step raised: its own exception, where and when
            file, line = _file_line(exc.user_frame)
            self.channel.publish(Error(kind=type(exc.original).__name__, message=title, file=file, line=line,
                                       traceback=details, step=exc.step, phase=exc.phase, reply_to=reply_to))
        else:
            self.channel.publish(Error(kind=type(exc).__name__, message=title, file=None, line=None,
                                       traceback=details, reply_to=reply_to))
        self._publish_news()
        self._progress(reply_to)

    def _run(self, command: Continue) -> None:
        engine = self.engine
        assert engine is not None
        last = [time.monotonic()]
        paused = [False]

        def should_stop() -> bool:
            # Between phases: answer what came in meanwhile; a pause ends the run here.
            for other in self.channel.commands():
                if isinstance(other, (Pause, Stop)):
                    paused[0] = True
                    self._stopping = self._stopping or isinstance(other, Stop)
                elif isinstance(other, (RequestSample, SetBreakpoints)):
                    self._handle(other)
                else:
                    self._progress(activity="run", note=f"{type(other).__name__} ignored: a run is in "
                                   "progress (pause it first)", warning=True)
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S:
                last[0] = now
                self._publish_news()
                self._progress(activity="run")
            return paused[0]

        def on_step(record: StepRecord) -> None:
            self._publish_news()

        try:
            outcome = engine.run(command.steps, until_break=True, should_stop=should_stop, on_step=on_step)
        except KeyboardInterrupt as exc:
            self._failed(_interrupted_step(engine, exc), command.id)
            return
        if outcome.error is not None:
            self._failed(outcome.error, command.id)
            return
        self._publish_news()
        summary = RunSummary(outcome.steps_done, outcome.stopped_by, run_reason(outcome))
        self._progress(command.id, summary=summary)

    def _rewind(self, command: Rewind) -> None:
        engine = self.engine
        assert engine is not None
        try:
            target = engine.rewind(command.steps)
        except ValueError as exc:  # nothing to rewind to: say why, change nothing
            self._progress(command.id, note=str(exc), warning=True)
            return
        replay = engine.replay_steps
        more = f"; u again goes back to step {target - 1}" if engine.rewindable_steps else ""
        note = (f"rewound to the start of step {target}: steps {target}..{replay[-1] if replay else target} "
                f"replay on the same batches with full stats{more}")
        self._sent_step = target - 1
        findings = engine.findings
        self.channel.publish(Findings(tuple(findings), replace=True))
        self._last_finding = findings[-1] if findings else None
        self._progress(command.id, note=note, history_from=target)

    def _set_breakpoints(self, command: SetBreakpoints) -> None:
        from workbench.engine.breakpoints import Breakpoint

        engine = self.engine
        assert engine is not None
        try:
            parsed = [Breakpoint.parse(c) for c in command.conditions]  # raises before any change
        except ValueError as exc:
            self.channel.publish(Error(kind="ValueError", message=f"bad breakpoint: {exc}", file=None, line=None,
                                       traceback=str(exc), reply_to=command.id))
            self._progress(command.id)
            return
        for bp in list(engine.breakpoints):
            engine.remove_breakpoint(bp)
        for bp in parsed:
            engine.add_breakpoint(bp)
        self._progress(command.id)

    def _sample(self, command: RequestSample) -> None:
        engine = self.engine
        assert engine is not None
        try:
            sample = inspect_module(engine, command.module, command.id)
        except Exception as exc:  # a sample must never end the session
            sample = Sample(command.id, command.module, command.kind, engine.step,
                            error=exception_text(exc))
        self.channel.publish(sample)

    # -- publishing ----------------------------------------------------------------------------
    def _conditions(self) -> tuple[str, ...]:
        assert self.engine is not None
        return tuple(bp.describe() for bp in self.engine.breakpoints)

    def _publish_news(self) -> None:
        """Records and findings made since the last publish, oldest first."""
        engine = self.engine
        assert engine is not None
        new: list[StepRecord] = []
        for record in reversed(engine.history):
            if record.step <= self._sent_step:
                break
            new.append(record)
        for record in reversed(new):
            self.channel.publish(Step(record))
            self._sent_step = record.step
        findings = engine.findings
        if not findings or findings[-1] is self._last_finding:
            return
        start = None
        if self._last_finding is not None:
            for i in range(len(findings) - 1, -1, -1):
                if findings[i] is self._last_finding:
                    start = i + 1
                    break
        if start is None and self._last_finding is not None:  # it left the ring: send the ring whole
            self.channel.publish(Findings(tuple(findings), replace=True))
        else:
            self.channel.publish(Findings(tuple(findings[start or 0:])))
        self._last_finding = findings[-1]

    def _progress(self, reply_to: int | None = None, *, activity: str | None = None,
                  summary: RunSummary | None = None, note: str | None = None, warning: bool = False,
                  history_from: int | None = None) -> None:
        engine = self.engine
        assert engine is not None
        current = engine.current
        self.channel.publish(Progress(
            step=engine.step, next_phase=Phase(engine.next_phase), current=current,
            pending_break=engine.pending_break, breakpoints=self._conditions(), busy=activity is not None,
            activity=activity, paused=engine.pending_break is not None, reply_to=reply_to, summary=summary,
            note=note or "",
            warning=warning, history_from=history_from,
        ))


def _file_line(frame: str | None) -> tuple[str | None, int | None]:
    """('path.py', 12) from the engine's 'path.py:12 in forward'."""
    if not frame:
        return None, None
    where = frame.rsplit(" in ", 1)[0]
    path, _, line = where.rpartition(":")
    return (path, int(line)) if path and line.isdigit() else (where, None)


# -- the child process -------------------------------------------------------------------------
def _host_main(source: ScenarioSource, device: str, config: EngineConfig | None, conn: Any, out: Any, err: Any,
               parent_pid: int, cwd: str, stack_path: str | None = None) -> None:
    """The child's body: own process group, output to the parent, serve, leave without teardown."""
    try:
        os.setpgid(0, 0)  # a group of its own: ending it ends what the user's code started too
    except OSError:
        pass
    for stream, target in ((out, 1), (err, 2)):
        os.dup2(stream.fileno(), target)
        stream.close()
    for stream in (sys.stdout, sys.stderr):
        try:
            cast(io.TextIOWrapper, stream).reconfigure(line_buffering=True)  # a print reaches the log when made
        except (AttributeError, ValueError):
            pass
    os.chdir(cwd)  # the fork server's cwd is the one it started in
    from workbench.isolation import arm_stack_dump, forget_start_method, watch_parent

    forget_start_method()  # DataLoader workers fork from here, as under `workbench run`
    arm_stack_dump(stack_path)  # HostProcess.stacks(): where a step that seems stuck is
    try:
        # Where training and the screen compete for the same cores, the screen wins: keys
        # stay answered (benchmarks/test_tui_latency.py). With cores to spare it costs nothing.
        os.nice(CHILD_NICE)
    except OSError:
        pass
    watch_parent(parent_pid, PARENT_CHECK_S)  # ended with its parent (killed, say), even mid-forward
    code = 1
    try:
        code = EngineHost(source, device, config, PipeChannel(conn)).serve()
    except BaseException:  # noqa: S110 - the host's own failure: the parent sees the exit status
        import traceback

        traceback.print_exc()
    from workbench.isolation import leave_now

    # Not sys.exit: threads the user's code left running must not keep the child alive.
    leave_now(code)


def _interrupted_step(engine: Engine | None, exc: KeyboardInterrupt) -> BaseException:
    """A KeyboardInterrupt out of the engine, as the failure of the step it interrupted.

    In this child it is never the user's Ctrl-C: the child leads a process group of its own, so
    the terminal's SIGINT reaches the TUI only, which ends the host with Stop, SIGTERM, SIGKILL.
    So the user's code raised it (``raise KeyboardInterrupt``, a library's own stop), and like a
    SystemExit it fails the step rather than the process, which would take every good step and
    the rewind snapshots with it (``Engine.advance`` lets it through: a headless run stops on it).
    """
    return exc if engine is None else engine.fail_step(exc)


# -- the parent's handle -----------------------------------------------------------------------
_LIVE: weakref.WeakSet[HostProcess] = weakref.WeakSet()


_EXIT_HOOK: list[bool] = []


def _close_live_hosts() -> None:
    for proc in list(_LIVE):
        proc.close()


def _register_exit_hook() -> None:
    # Registered after multiprocessing's own exit handler (it is imported by now), so it
    # runs first: that one joins every child still alive, and a host stuck in user code
    # would hold the interpreter's exit for ever.
    if not _EXIT_HOOK:
        _EXIT_HOOK.append(True)
        atexit.register(_close_live_hosts)


class HostProcess:
    """Start, talk to and end one engine host child."""

    def __init__(self, source: ScenarioSource, device: str, config: EngineConfig | None = None,
                 on_output: Callable[[str, bool], None] | None = None,
                 preload: Sequence[str] = ENGINE_HOST_PRELOAD) -> None:
        self.source = source
        self.device = device
        self.config = config
        self.on_output = on_output
        self.preload = tuple(preload)
        self._proc: Any = None
        self._conn: Any = None
        self._readers: list[threading.Thread] = []
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.forced = False  # close() had to terminate or kill the child
        self._stack_path: str | None = None  # where the child writes its stacks when asked

    @staticmethod
    def fork_server_running() -> bool:
        """Whether children come fast now (the fork server has imported torch already)."""
        try:
            from multiprocessing import forkserver

            return forkserver._forkserver._forkserver_pid is not None  # type: ignore[attr-defined]
        except (ImportError, AttributeError):
            return False

    def start(self) -> None:
        """Start the child (blocks while the fork server starts: call it off the UI thread)."""
        from workbench.isolation import _context, ensure_resource_tracker

        ctx = _context(self.preload)
        _register_exit_hook()
        ensure_resource_tracker()
        parent, child = ctx.Pipe(duplex=True)
        out_r, out_w = ctx.Pipe(duplex=False)
        err_r, err_w = ctx.Pipe(duplex=False)
        import tempfile

        handle, self._stack_path = tempfile.mkstemp(prefix="workbench-host-stacks-", suffix=".txt")
        os.close(handle)
        proc = ctx.Process(target=_host_main, name="workbench-engine-host",
                           args=(self.source, self.device, self.config, child, out_w, err_w, os.getpid(),
                                 os.getcwd(), self._stack_path))
        if self._closed.is_set():
            for c in (parent, child, out_r, out_w, err_r, err_w):
                c.close()
            return
        # Not under the lock: the first start waits for the fork server to import torch,
        # and close() (a quit meanwhile) must not wait for that.
        proc.start()
        with self._lock:
            self._proc, self._conn = proc, parent
            _LIVE.add(self)
            closed_meanwhile = self._closed.is_set()
        for c in (child, out_w, err_w):
            c.close()  # the child holds its own ends
        if closed_meanwhile:
            self._closed.clear()
            self.close()
            return
        for conn, stderr in ((out_r, False), (err_r, True)):
            t = threading.Thread(target=self._read_output, args=(conn, stderr), daemon=True,
                                 name=f"workbench-host-{'stderr' if stderr else 'stdout'}")
            t.start()
            self._readers.append(t)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stacks(self) -> tuple[str | None, str]:
        """Where the child's main thread is now ("file:line in func", the user's innermost
        frame, and its frames as text), read from a stack dump it writes when signalled; a
        blocking call of up to a second (the pump thread's, never the UI's)."""
        from workbench.isolation import ask_for_stacks, read_stacks

        if self._stack_path is None or not self.alive():
            return None, ""
        since = ask_for_stacks(self.pid, self._stack_path)
        return read_stacks(self._stack_path, since)

    def alive(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.is_alive()

    @property
    def exitcode(self) -> int | None:
        return None if self._proc is None else self._proc.exitcode

    def send(self, command: Any) -> bool:
        """Send one command; False when the child is gone (or not started)."""
        conn = self._conn
        if conn is None or self._closed.is_set():
            return False
        try:
            conn.send(command)
            return True
        except (OSError, EOFError, ValueError):
            return False

    def poll(self, timeout: float = 0.0) -> list[Any]:
        """Messages that arrived (waits up to ``timeout`` for the first); [] once it is gone."""
        conn = self._conn
        out: list[Any] = []
        if conn is None:
            return out
        try:
            if conn.poll(timeout):
                while True:
                    out.append(conn.recv())
                    if not conn.poll(0):
                        break
        except (OSError, EOFError, ValueError):
            pass
        return out

    def close(self) -> bool:
        """End the child however it is doing: Stop, SIGTERM, SIGKILL. True if it had to be forced."""
        with self._lock:
            self._closed.set()
            proc, conn = self._proc, self._conn
        if proc is None:
            return False
        if proc.exitcode is None and conn is not None:
            try:
                conn.send(Stop())
            except (OSError, EOFError, ValueError):
                pass
            proc.join(STOP_GRACE_S)
        if proc.exitcode is None:
            self.forced = True
            self._signal(proc.pid, signal.SIGTERM)
            proc.join(TERM_GRACE_S)
        if proc.exitcode is None:
            self._signal(proc.pid, signal.SIGKILL)
            proc.join(1.0)
        else:
            # The user's code may have left processes in the group (DataLoader workers).
            self._signal(proc.pid, signal.SIGKILL, group_only=True)
        if conn is not None:
            conn.close()
        if self._stack_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._stack_path)
        return self.forced

    @staticmethod
    def _signal(pid: int, sig: int, group_only: bool = False) -> None:
        try:
            os.killpg(pid, sig)  # the child leads a group of its own (os.setpgid in _host_main)
            return
        except (ProcessLookupError, PermissionError):
            pass
        if group_only:
            return
        try:
            os.kill(pid, sig)  # not yet a group leader: the child alone
        except (ProcessLookupError, PermissionError):
            pass

    def _read_output(self, conn: Any, stderr: bool) -> None:
        """What the child prints, line by line to ``on_output`` (bounded lines)."""
        fd = conn.fileno()
        partial = b""
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    if self._closed.is_set() and not self.alive():
                        break
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                *lines, partial = (partial + chunk).split(b"\n")
                partial = partial[-OUTPUT_LINE_LIMIT * 4:]
                for line in lines:
                    self._emit(line, stderr)
            if partial:
                self._emit(partial, stderr)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _emit(self, line: bytes, stderr: bool) -> None:
        if self.on_output is not None:
            text = line[:OUTPUT_LINE_LIMIT * 4].decode("utf-8", "replace")[:OUTPUT_LINE_LIMIT]
            self.on_output(text.rstrip("\r"), stderr)
