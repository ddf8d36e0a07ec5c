"""A session's transport: the host's SessionServer and a client's connection, over protocol lines.

Host side::

    server = SessionServer(run_dir, bind="127.0.0.1:0", host="watch", title="train.py")
    server.publish(Hello(...))            # never blocks the training thread
    for cmd in server.commands(): ...     # queued commands, without waiting
    cmd = server.wait_command(timeout=1)  # or wait for one (a "wait" breakpoint)
    server.close()                        # or `with SessionServer(...) as server:`

One background thread ("workbench-session-io") accepts clients on a loopback TCP port or
a Unix socket, checks each one's first line for the session token, replays what the
session has said so far (the latest Hello, then the kept messages in order) and then
streams every published message. Each client has a bounded backlog: a client that
stops reading is dropped when its backlog passes the limit, and the host never waits
for it. Every message also goes to RUN_DIR/session.jsonl (log.py); RUN_DIR/session.json
and RUN_DIR/session.token (registry.py) say where the session listens.

Client side: ``connect(target)`` with a run directory, ``HOST:PORT`` or ``unix:PATH``
gives a ClientConnection (``send``, ``poll``, ``close``); a run directory whose process
is gone opens its log read-only (a ReplayConnection with the same methods).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import heapq
import ipaddress
import os
import queue
import re
import secrets
import selectors
import socket
import stat
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from workbench.session import protocol as P
from workbench.session.log import SessionLog, read_log
from workbench.session.registry import (
    LOG_FILE,
    SessionFileError,
    SessionInfo,
    claim_run_dir,
    mark_ended,
    new_token,
    read_session,
    read_token,
    start_session,
    write_token,
)

DEFAULT_BIND = "127.0.0.1:0"
MAX_LINE = 1 << 20  # a client line longer than this is not a command: the client is dropped
AUTH_SECONDS = 10.0  # a client that has not sent its token by then is refused
_UNIX_PATH_MAX = 104  # sun_path is 108 bytes on Linux, 104 on macOS
# Kinds of which only the latest matters to a client that connects late.
_LATEST_ONLY = (P.Hello, P.Progress)
# Kinds replayed from a ring of the most recent ones (the rest are kept up to keep_limit).
_RECENT = (P.Step, P.Log)
_NOT_REPLAYED = (P.Sample, P.Refused)  # answers to one request: live only


class SessionError(Exception):
    """A session cannot be served or reached: what happened, where, what to do."""


class SessionRefused(SessionError):
    """The host refused this client (a wrong or missing token)."""


class SessionReadOnly(SessionError):
    """A command was sent to a finished session opened from its log."""


def parse_address(text: str) -> tuple[str, Any]:
    """``("unix", path)`` for ``unix:PATH``, ``("tcp", (host, port))`` for ``HOST:PORT`` / ``[::1]:PORT``."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise SessionError("unix: needs a socket path, e.g. unix:/tmp/run/session.sock")
        return "unix", path
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]/\s]+):(\d+)", text)
    if not m:
        raise SessionError(f"{text!r} is not an address; expected HOST:PORT (127.0.0.1:7301), [::1]:PORT "
                           "or unix:PATH.")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if int(port) > 65535:
        raise SessionError(f"{text!r}: port {port} is out of range (0-65535).")
    return "tcp", (host, int(port))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(bind: str) -> tuple[socket.socket, str, str | None]:
    """The listening socket, its address as session.json writes it, and the Unix socket path."""
    kind, where = parse_address(bind)
    if kind == "unix":
        path = os.path.abspath(where)
        if len(os.fsencode(path)) >= _UNIX_PATH_MAX:
            raise SessionError(f"unix socket path {path} is {len(os.fsencode(path))} bytes; the system allows "
                               f"under {_UNIX_PATH_MAX}. Choose a shorter path (e.g. under /tmp).")
        if os.path.lexists(path):
            raise SessionError(f"{path} already exists; a session will not replace it. Choose another socket "
                               "path or remove the old one if nothing uses it.")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)  # the socket file is created 0600: only its owner may connect
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise SessionError(f"cannot listen on unix:{path}: {exc.strerror or exc}.") from exc
        return sock, f"unix:{path}", path
    host, port = where
    if not _is_loopback(host):
        raise SessionError(f"{bind}: a session listens on this machine only (127.0.0.1, ::1 or localhost); "
                           f"from another machine forward the port over SSH: ssh -L PORT:127.0.0.1:PORT HOST.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise SessionError(f"cannot listen on {bind}: {exc.strerror or exc}. Choose another port "
                           "(port 0 picks a free one).") from exc
    got_host, got_port = sock.getsockname()[:2]
    return sock, (f"[{got_host}]:{got_port}" if family == socket.AF_INET6 else f"{got_host}:{got_port}"), None


@dataclasses.dataclass(eq=False)
class _Client:
    sock: socket.socket
    name: str
    connected_at: float
    authed: bool = False
    inbuf: bytearray = dataclasses.field(default_factory=bytearray)
    out: deque[bytes] = dataclasses.field(default_factory=deque)  # filled under the server lock
    backlog: int = 0  # bytes queued and not yet sent (under the lock)
    pending: memoryview | bytes = b""  # taken from out, partly sent (IO thread only)
    drop: str | None = None  # set when the client is to be closed, with the reason
    closed: bool = False


class SessionServer:
    """The host end of a session (see the module docstring).

    ``max_backlog`` bounds the bytes waiting for one client; ``replay_steps`` how many
    recent Step/Log messages a late client gets (the latest Hello and Progress, and up
    to ``keep_limit`` findings, break hits, errors and the end, are always replayed).
    ``token`` is generated when not given (a parent process may choose it and pass it
    to the child that hosts). Threads: one daemon thread named "workbench-session-io".
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, bind: str = DEFAULT_BIND, host: str = "watch",
                 title: str = "", token: str | None = None, max_backlog: int = 32 << 20,
                 replay_steps: int = 2000, keep_limit: int = 10000) -> None:
        try:
            self.run_dir = claim_run_dir(run_dir)
        except SessionFileError as exc:
            raise SessionError(str(exc)) from None
        self.token = token or new_token()
        self.max_backlog = max_backlog
        self._listener, self.address, self._unix_path = _listen(bind)
        self._lock = threading.Lock()
        self._clients: list[_Client] = []
        self._commands: queue.Queue[Any] = queue.Queue()
        self._seq = 0
        self._latest: dict[type, tuple[int, bytes]] = {}
        self._recent: deque[tuple[int, int, bytes]] = deque(maxlen=replay_steps)  # (seq, step, line)
        self._kept: deque[tuple[int, bool, bytes]] = deque(maxlen=keep_limit)  # (seq, is Findings, line)
        self._ended: P.Ended | None = None
        self._closing = False
        self._closed = False
        self.notes: list[str] = []  # what happened to clients (dropped, refused, bad lines), for the host
        self._log: SessionLog | None = None
        try:
            write_token(self.run_dir, self.token)
            self._log = SessionLog(self.run_dir / LOG_FILE)
            self.info: SessionInfo = start_session(self.run_dir, address=self.address, host=host, title=title)
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            self._release_listener()
            if self._log is not None:
                self._log.close()
            (self.run_dir / "session.token").unlink(missing_ok=True)
            raise
        for s in (self._wake_r, self._wake_w, self._listener):
            s.setblocking(False)
        self._thread = threading.Thread(target=self._serve, name="workbench-session-io", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # -- host API (any thread) ---------------------------------------------------------------

    @property
    def log_error(self) -> Exception | None:
        """The first failed write of session.jsonl (disk full ...), None while it is fine."""
        return None if self._log is None else self._log.error

    @property
    def clients(self) -> int:
        with self._lock:
            return sum(1 for c in self._clients if c.authed and not c.drop)

    def publish(self, msg: Any) -> int:
        """Send ``msg`` to every client and the log; returns its seq. Never waits for a client."""
        if not P.is_message(msg):
            raise TypeError(f"publish takes a host message (Hello, Step, ...), not {type(msg).__name__}")
        with self._lock:
            if self._closed:
                return -1
            seq = self._seq
            self._seq += 1
            line = P.encode(msg, seq)
            data = (line + "\n").encode("utf-8")
            if self._log is not None and not isinstance(msg, _NOT_REPLAYED):  # a reply is for its asker only
                self._log.write(line)
            self._remember(msg, seq, data)
            for c in self._clients:
                if c.authed:
                    self._queue(c, data)
            if isinstance(msg, P.Ended):
                self._ended = msg
        self._wake()
        return seq

    def commands(self) -> list[Any]:
        """The commands clients sent since the last call, oldest first (never waits)."""
        out: list[Any] = []
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return out
            if cmd is not _CLOSED:
                out.append(cmd)

    def wait_command(self, timeout: float | None = None) -> Any | None:
        """The next command, waiting up to ``timeout`` seconds; None on timeout or once closed."""
        if self._closed:
            while True:
                try:
                    cmd = self._commands.get_nowait()
                except queue.Empty:
                    return None
                if cmd is not _CLOSED:
                    return cmd
        try:
            cmd = self._commands.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if cmd is _CLOSED else cmd

    def close(self, ended: P.Ended | None = None, *, drain: float = 1.0) -> None:
        """End the session: publish ``ended`` (or Ended("closed") if the host sent none), give the
        clients up to ``drain`` seconds to receive what is queued, then close every socket, remove
        the Unix socket and the token file and mark session.json ended."""
        if self._closed or self._closing:
            return
        atexit.unregister(self._at_exit)
        if ended is not None:
            self.publish(ended)
        elif self._ended is None:
            self.publish(P.Ended(reason="closed"))
        self._drain_until = time.monotonic() + drain
        self._closing = True
        self._wake()
        self._thread.join(timeout=drain + 2.0)
        with self._lock:
            self._closed = True
            if self._log is not None:
                self._log.close()
        self._commands.put(_CLOSED)  # a host blocked in wait_command wakes up
        (self.run_dir / "session.token").unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the directory vanished: nothing left to mark
            self.info = mark_ended(self.info, self._ended.reason if self._ended else "closed")

    def _at_exit(self) -> None:
        """The interpreter exits and the host never closed the session: end it properly, so
        session.json says so and the socket and token files go (a crash leaves them; readers
        then go by the dead pid)."""
        self.close(P.Ended(reason="exited", message="the process exited without closing its session")
                   if self._ended is None else None, drain=0.2)

    def __enter__(self) -> SessionServer:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self._ended is None:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
            self.close(P.Ended(reason=reason, message=f"{type(exc).__name__}: {exc}"))
        else:
            self.close()

    # -- internals ---------------------------------------------------------------------------

    def _remember(self, msg: Any, seq: int, data: bytes) -> None:
        """Keep what a late client is replayed (under the lock).

        A rewind (Progress.history_from) drops the replayed steps it undid, and
        Findings(replace=True) the findings it supersedes, so a late client sees the
        session as it stands rather than a history that was taken back.
        """
        if isinstance(msg, P.Progress) and msg.history_from is not None:
            cut = msg.history_from
            self._recent = deque((r for r in self._recent if r[1] < cut), maxlen=self._recent.maxlen)
        if isinstance(msg, P.Findings) and msg.replace:
            self._kept = deque((k for k in self._kept if not k[1]), maxlen=self._kept.maxlen)
        if isinstance(msg, _LATEST_ONLY):
            self._latest[type(msg)] = (seq, data)
        elif isinstance(msg, _RECENT):
            self._recent.append((seq, msg.record.step if isinstance(msg, P.Step) else msg.step, data))
        elif not isinstance(msg, _NOT_REPLAYED):
            self._kept.append((seq, isinstance(msg, P.Findings), data))

    def _replay(self) -> list[bytes]:
        hello = self._latest.get(P.Hello)
        rest = [(s, 0, d) for k, (s, d) in self._latest.items() if k is not P.Hello]
        ordered = heapq.merge(self._kept, self._recent, sorted(rest))  # by seq: the order published
        return ([hello[1]] if hello else []) + [data for *_, data in ordered]

    def _queue(self, c: _Client, data: bytes) -> None:
        if c.drop:
            return
        if c.backlog + len(data) > self.max_backlog:
            c.drop = (f"client {c.name} fell behind ({c.backlog + len(data)} bytes waiting, limit "
                      f"{self.max_backlog}); dropped so the training does not wait for it")
            c.out.clear()
            return
        c.out.append(data)
        c.backlog += len(data)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: the IO thread is awake already
            self._wake_w.send(b"\0")

    def _release_listener(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self._unix_path).st_mode):
                    os.unlink(self._unix_path)

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._listener, selectors.EVENT_READ, "listen")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._loop(sel)
        except Exception as exc:  # a bug here must not take the training down: note it and stop serving
            self.notes.append(f"the session server stopped: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                clients, self._clients = self._clients, []
            for c in clients:
                with contextlib.suppress(OSError):
                    c.sock.close()
            sel.close()
            self._release_listener()
            for s in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    s.close()

    def _loop(self, sel: selectors.BaseSelector) -> None:
        while True:
            for key, mask in sel.select(timeout=0.25):
                if key.data == "listen":
                    self._accept(sel)
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        while self._wake_r.recv(4096):
                            pass
                else:
                    c = key.data
                    if mask & selectors.EVENT_READ:
                        self._read(c)
                    if mask & selectors.EVENT_WRITE and not c.closed:
                        self._flush(c)
            now = time.monotonic()
            busy = False
            for c in list(self._clients):
                if not c.closed and not c.drop:
                    if not c.authed and now - c.connected_at > AUTH_SECONDS:
                        self._refuse(c, "no token within 10 s")
                    else:
                        self._flush(c)
                if c.drop and not c.closed:
                    self.notes.append(c.drop)
                if c.closed or c.drop:
                    self._forget(sel, c)
                    continue
                waiting = bool(c.pending or c.out)
                busy = busy or waiting
                sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0), c)
            if self._closing and (not busy or now >= self._drain_until):
                return

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.notes.append(f"accepting a client failed: {exc}")
                return
            sock.setblocking(False)
            name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix client"
            c = _Client(sock=sock, name=name, connected_at=time.monotonic())
            with self._lock:
                self._clients.append(c)
            sel.register(sock, selectors.EVENT_READ, c)

    def _forget(self, sel: selectors.BaseSelector, c: _Client) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(c.sock)
        with contextlib.suppress(OSError):
            c.sock.close()
        c.closed = True
        with self._lock:
            if c in self._clients:
                self._clients.remove(c)

    def _read(self, c: _Client) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            c.closed = True  # the client went away
            return
        c.inbuf += data
        while not c.closed and not c.drop:
            end = c.inbuf.find(b"\n")
            if end < 0:
                if len(c.inbuf) > MAX_LINE:
                    c.drop = f"client {c.name} sent a line over {MAX_LINE} bytes; dropped"
                return
            raw = bytes(c.inbuf[:end])
            del c.inbuf[:end + 1]
            if raw.strip():
                self._line(c, raw)

    def _line(self, c: _Client, raw: bytes) -> None:
        try:
            cmd = P.decode(raw, where=f"client {c.name}")
        except P.ProtocolError as exc:
            if not c.authed:
                self._refuse(c, f"the first line must be an attach command with the session token ({exc})")
            else:
                self.notes.append(f"{exc} (ignored)")
            return
        if not c.authed:
            if isinstance(cmd, P.Attach) and secrets.compare_digest(cmd.token.encode(), self.token.encode()):
                with self._lock:  # replay and go live in one step: nothing missed, nothing twice
                    c.authed = True
                    for data in self._replay():
                        self._queue(c, data)
                self._flush(c)
            else:
                self._refuse(c, "wrong or missing session token" if isinstance(cmd, P.Attach)
                             else f"the first line must be an attach command with the token, not {P.type_name(cmd)}")
            return
        if P.is_command(cmd) and not isinstance(cmd, P.Attach):
            self._commands.put(cmd)
        else:
            self.notes.append(f"client {c.name} sent {P.type_name(cmd)}, which is not a command (ignored)")

    def _refuse(self, c: _Client, why: str) -> None:
        line = P.encode(P.Refused(reason=f"{why}. Read the token from RUN_DIR/session.token "
                                         "(`workbench attach RUN_DIR` does) and send it first."))
        with contextlib.suppress(OSError):  # best effort: one line, then the door closes
            c.sock.send((line + "\n").encode("utf-8"))
        self.notes.append(f"refused client {c.name}: {why}")
        c.drop = f"refused client {c.name}"
        c.closed = True

    def _flush(self, c: _Client) -> None:
        if not c.pending:
            with self._lock:
                if not c.out:
                    return
                c.pending = memoryview(b"".join(c.out))
                c.out.clear()
        try:
            sent = c.sock.send(c.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            c.closed = True
            return
        c.pending = c.pending[sent:]  # a view: what is left is not copied
        with self._lock:
            c.backlog -= sent


_CLOSED = object()


# -- client side ---------------------------------------------------------------------------------


class ClientConnection:
    """A live session: ``send(command)``, ``poll(timeout=0)`` -> new messages, ``close()``.

    ``hello`` is the latest Hello received. When the host goes away without an Ended, the
    next poll returns one with reason "disconnected". A line the client cannot read is
    skipped and described in ``notes``.
    """

    read_only = False

    def __init__(self, sock: socket.socket, target: str, info: SessionInfo | None = None) -> None:
        self._sock = sock
        self.target = target
        self.info = info
        self.hello: P.Hello | None = None
        self.notes: list[str] = []
        self._buf = bytearray()
        self._seq = 0
        self._ended = False
        self._held: list[Any] = []  # what arrived while connecting, returned by the first poll
        self._send_failed: str | None = None  # why the last send failed: later ones fail alike
        self.closed = False

    def send(self, command: Any) -> None:
        if not P.is_command(command):
            raise TypeError(f"send takes a command (Pause, Continue, ...), not {type(command).__name__}")
        if self.closed:
            raise SessionError(f"the connection to {self.target} is closed; connect again.")
        if self._send_failed is not None:
            raise SessionError(self._send_failed)
        self._seq += 1
        try:
            self._sock.settimeout(5.0)
            self._sock.sendall((P.encode(command, self._seq) + "\n").encode("utf-8"))
        except OSError as exc:
            # The socket stays open for reading: a host that ended sent its Ended before it
            # closed, and the next poll still reads it (closing here threw it away).
            self._send_failed = f"the session at {self.target} is gone ({exc}); the command did not reach it."
            raise SessionError(self._send_failed) from exc

    def poll(self, timeout: float = 0.0) -> list[Any]:
        """The messages that arrived (waiting up to ``timeout`` s for the first); raises SessionRefused."""
        out, self._held = self._held, []
        if self.closed:
            return self._disconnected(out, "the connection is closed")
        wait = 0.0 if out else timeout
        while True:
            try:
                ready = self._wait_readable(wait)
            except (OSError, ValueError):
                return self._disconnected(out, "the connection is closed")
            if not ready:
                break
            try:
                data = self._sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                data = b""
                self.notes.append(f"{self.target}: {exc}")
            if not data:
                self._take_lines(out)
                return self._disconnected(out, "the host closed the connection")
            self._buf += data
            wait = 0.0
        self._take_lines(out)
        return out

    def _wait_readable(self, timeout: float) -> bool:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._sock, selectors.EVENT_READ)
            return bool(sel.select(timeout=max(0.0, timeout)))
        finally:
            sel.close()

    def _take_lines(self, out: list[Any]) -> None:
        buf, start = self._buf, 0
        try:
            while (end := buf.find(b"\n", start)) >= 0:
                raw, start = bytes(buf[start:end]), end + 1
                if raw.strip():
                    self._take(raw, out)
        finally:
            del buf[:start]  # once: deleting line by line from the front is quadratic in a replay

    def _take(self, raw: bytes, out: list[Any]) -> None:
        try:
            msg = P.decode(raw, where=self.target)
        except P.ProtocolError as exc:
            self.notes.append(str(exc))
            return
        if isinstance(msg, P.Refused):
            self._lost(msg.reason)
            raise SessionRefused(f"{self.target} refused this client: {msg.reason}")
        if isinstance(msg, P.Hello):
            self.hello = msg
        if isinstance(msg, P.Ended):
            self._ended = True
        out.append(msg)

    def _disconnected(self, out: list[Any], why: str) -> list[Any]:
        self._lost(why)
        if not self._ended:
            self._ended = True
            out.append(P.Ended(reason="disconnected", message=f"{self.target}: {why} before the session ended."))
        return out

    def _lost(self, why: str) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self._sock.close()

    def close(self) -> None:
        self._ended = True  # closed by us: no "disconnected" message
        self._lost("closed")

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReplayConnection:
    """A finished (or crashed) session opened from its RUN_DIR/session.jsonl, read-only.

    The first ``poll`` returns every logged message (ending with an Ended: the logged one,
    or one saying the run stopped without closing its session); ``send`` raises
    SessionReadOnly. ``notes`` says what was skipped (a torn last line).
    """

    read_only = True

    def __init__(self, run_dir: Path, info: SessionInfo | None = None) -> None:
        self.target = str(run_dir)
        self.info = info
        contents = read_log(run_dir / LOG_FILE)
        self.notes = list(contents.notes)
        messages = list(contents.messages)
        if not any(isinstance(m, P.Ended) for m in messages):
            reason = info.end_reason if info is not None and info.end_reason else "crashed"
            messages.append(P.Ended(reason=reason, message=(
                f"{run_dir}: the run stopped without closing its session (killed or crashed); "
                "this is what it logged until then.")))
        self.hello = next((m for m in reversed(messages) if isinstance(m, P.Hello)), None)
        self._pending = messages
        self.closed = False

    def send(self, command: Any) -> None:
        pid = f" (pid {self.info.pid} is gone)" if self.info is not None else ""
        raise SessionReadOnly(f"the session in {self.target} has ended{pid}: it is open read-only from its "
                              "log, and commands cannot reach it.")

    def poll(self, timeout: float = 0.0) -> list[Any]:
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> ReplayConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_socket(address: str, timeout: float) -> socket.socket:
    kind, where = parse_address(address)
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = where
    else:
        host, port = where
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        target = (host, port)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except OSError as exc:
        sock.close()
        raise SessionError(f"cannot connect to {address}: {exc.strerror or exc}. Is the session still running "
                           "(`workbench attach --list`)?") from exc
    return sock


def connect(target: str | os.PathLike[str], token: str | None = None, *, timeout: float = 5.0,
            client: str = "") -> ClientConnection | ReplayConnection:
    """Open a session: a run directory (live: over its socket with its token file; finished: its
    log, read-only), ``HOST:PORT`` or ``unix:PATH`` (pass ``token``).

    Raises SessionRefused when the host refuses the token, SessionError when it cannot be reached.
    """
    text = os.fspath(target)
    info: SessionInfo | None = None
    if text.startswith("unix:") or (not Path(text).is_dir() and re.search(r":\d+$", text)):
        address = text
        if token is None:
            raise SessionError(f"connecting to {address} needs the session token: pass the contents of "
                               "RUN_DIR/session.token (or connect to the run directory itself).")
    else:
        run_dir = Path(text)
        if not run_dir.is_dir():
            raise SessionError(f"{text}: no such run directory (and not HOST:PORT or unix:PATH); pass the "
                               "directory a session writes session.json in, as `workbench attach --list` shows.")
        try:
            info = read_session(run_dir)
        except SessionFileError as exc:
            raise SessionError(str(exc)) from None
        if not info.live:
            return ReplayConnection(run_dir, info)
        address = info.address
        if token is None:
            try:
                token = read_token(run_dir)
            except SessionFileError as exc:
                raise SessionError(str(exc)) from None
        try:
            sock = _open_socket(address, timeout)
        except SessionError:
            if not read_session(run_dir).live:  # it ended while we looked: open what it logged
                return ReplayConnection(run_dir, read_session(run_dir))
            raise
        return _attach(sock, text, token, info, client, timeout)
    return _attach(_open_socket(address, timeout), text, token, info, client, timeout)


def _attach(sock: socket.socket, target: str, token: str, info: SessionInfo | None, client: str,
            timeout: float) -> ClientConnection:
    conn = ClientConnection(sock, target, info)
    try:
        sock.sendall((P.encode(P.Attach(token=token, client=client or f"pid {os.getpid()}")) + "\n").encode())
    except OSError as exc:
        sock.close()
        raise SessionError(f"cannot reach {target}: {exc}.") from exc
    # A refusal comes at once; a host that has not said Hello yet sends nothing: wait briefly only.
    conn._held = conn.poll(timeout=min(timeout, 1.0))
    return conn
