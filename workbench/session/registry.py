"""A session's files in its run directory, and the sessions live on this machine.

``RUN_DIR/session.json``   who hosts the session, where it listens, when it started and ended
                           (replaced atomically, so a reader never sees half of it);
``RUN_DIR/session.token``  the per-session random token, readable by its owner only (0600);
``RUN_DIR/session.jsonl``  every host message (log.py).

These names are the session's own: an existing file by one of them that is not a
workbench session's is never written over (SessionFileError names it), and neither is
the run directory of a session that is still live.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.files import OutputPathError, atomic_write_json, check_writable

SESSION_FILE = "session.json"
TOKEN_FILE = "session.token"
LOG_FILE = "session.jsonl"
SCHEMA = "workbench.session/1"
# list_sessions does not descend into these (or into hidden folders): they never hold run directories
# and can be huge.
_SKIP_DIRS = frozenset({"node_modules", "__pycache__", "site-packages", ".git", ".venv", "venv"})


class SessionFileError(Exception):
    """A session file cannot be written or read: which file, what is wrong, what to do."""


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """The contents of one ``session.json``."""

    run_dir: Path
    pid: int
    address: str  # "127.0.0.1:PORT" or "unix:PATH"
    host: str  # "watch" | "engine"
    title: str
    started_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    pid_started: float | None = None  # the process's start time: a reused pid is not the session
    hostname: str = ""
    protocol: int = 1

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def live(self) -> bool:
        """Not marked ended, and its process still runs on this machine."""
        if self.ended or (self.hostname and self.hostname != socket.gethostname()):
            return False
        return pid_alive(self.pid, self.pid_started)

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def token_path(self) -> Path:
        return self.run_dir / TOKEN_FILE


def process_started(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), None when it cannot be read."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # psutil missing, no such process, access denied: the pid check alone decides
        return None


def pid_alive(pid: int, started: float | None = None) -> bool:
    """Whether ``pid`` runs, and (when ``started`` is known) is the same process, not a reuse of its pid."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    except OSError:
        return False
    if started is not None:
        now = process_started(pid)
        if now is not None and abs(now - started) > 1.0:
            return False
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    # A child that exited but was not reaped still answers kill(0); it is not running.
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return True


def _is_ours(path: Path) -> bool:
    """Whether an existing file by a session name was written by a workbench session."""
    try:
        if path.name == SESSION_FILE:
            return json.loads(path.read_text(encoding="utf-8")).get("schema") == SCHEMA
        if path.name == TOKEN_FILE:
            text = path.read_text(encoding="ascii").strip()
            return 20 <= len(text) <= 100 and all(c.isalnum() or c in "-_" for c in text)
        if path.name == LOG_FILE:
            with path.open("rb") as fh:
                first = fh.readline(1 << 20)
            if not first:
                return path.stat().st_size == 0
            head = json.loads(first)
            # A protocol line (any version: a newer workbench's session is still a session's).
            return (isinstance(head, dict) and isinstance(head.get("v"), int) and isinstance(head.get("type"), str)
                    and isinstance(head.get("seq"), int))
    except (OSError, ValueError, AttributeError):
        return False
    return False


def claim_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Make ``run_dir`` ready for a new session, or say why it cannot be.

    Creates it if needed. Refused: a path that is not a directory, a directory whose
    session is still live, and a directory holding a file by one of the session names
    that a workbench session did not write (never overwritten). A finished session's
    files are replaced by the new session's.
    """
    p = Path(run_dir)
    try:
        check_writable(p, directory=True)
    except OutputPathError as exc:
        raise SessionFileError(f"the session's run directory: {exc}") from None
    for name in (SESSION_FILE, TOKEN_FILE, LOG_FILE):
        f = p / name
        if f.is_symlink() or (f.exists() and not f.is_file()):
            raise SessionFileError(f"{f} exists and is not a plain file; a session will not write over it. "
                                   "Choose another run directory or move it away.")
        if f.exists() and not _is_ours(f):
            raise SessionFileError(f"{f} exists and was not written by a workbench session; it will not be "
                                   "written over. Choose another run directory or move the file away.")
    old = None
    if (p / SESSION_FILE).exists():
        with contextlib.suppress(SessionFileError):  # unreadable: ours (checked above) and damaged, replaced
            old = read_session(p)
    if old is not None and old.live and old.pid != os.getpid():
        raise SessionFileError(f"{p} is the run directory of a live session (pid {old.pid}, "
                               f"{old.title}); choose another run directory or stop that one first.")
    return p


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(run_dir: Path, token: str) -> Path:
    """The token in RUN_DIR/session.token, created 0600 (never readable by others, not even briefly)."""
    path = run_dir / TOKEN_FILE
    path.unlink(missing_ok=True)  # claim_run_dir checked that an existing one is a session's
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token + "\n")
    return path


def read_token(run_dir: str | os.PathLike[str]) -> str:
    path = Path(run_dir) / TOKEN_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise SessionFileError(f"{path} is missing: the session has ended, or it was started by another user. "
                               "Pass the token explicitly if you have it.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionFileError(f"cannot read the session token {path}: {exc}.") from exc


def _info_json(info: SessionInfo) -> dict[str, Any]:
    data = dataclasses.asdict(info)
    data.pop("run_dir")
    return {"schema": SCHEMA, **data}


def write_session(info: SessionInfo) -> Path:
    return atomic_write_json(info.run_dir / SESSION_FILE, _info_json(info))


def start_session(run_dir: Path, *, address: str, host: str, title: str, started_at: float | None = None,
                  ) -> SessionInfo:
    info = SessionInfo(run_dir=run_dir, pid=os.getpid(), address=address, host=host, title=title,
                       started_at=time.time() if started_at is None else started_at,
                       pid_started=process_started(os.getpid()), hostname=socket.gethostname())
    write_session(info)
    return info


def mark_ended(info: SessionInfo, reason: str) -> SessionInfo:
    ended = dataclasses.replace(info, ended_at=time.time(), end_reason=reason)
    write_session(ended)
    return ended


def read_session(run_dir: str | os.PathLike[str]) -> SessionInfo:
    """RUN_DIR/session.json as a SessionInfo; SessionFileError says what is missing or wrong."""
    p = Path(run_dir)
    path = p / SESSION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SessionFileError(f"{p} holds no {SESSION_FILE}: not the run directory of a workbench session "
                               "(pass the directory given to watch(..., live=...) or shown by "
                               "`workbench attach --list`).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionFileError(f"{path}: not readable as JSON ({exc}).") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SessionFileError(f"{path}: not a workbench session file (expected \"schema\": \"{SCHEMA}\").")
    fields = {f.name: f for f in dataclasses.fields(SessionInfo)}
    kwargs = {k: v for k, v in data.items() if k in fields and k != "run_dir"}
    try:
        info = SessionInfo(run_dir=p, **kwargs)
    except TypeError as exc:
        raise SessionFileError(f"{path}: {exc}; the file is damaged or from another version.") from exc
    if not isinstance(info.pid, int) or not isinstance(info.address, str):
        raise SessionFileError(f"{path}: \"pid\" must be an integer and \"address\" a string.")
    return info


def _session_dirs(root: Path, depth: int) -> Iterator[Path]:
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    if any(e.name == SESSION_FILE and e.is_file() for e in entries):
        yield root
    if depth <= 0:
        return
    for e in sorted(entries, key=lambda e: e.name):
        if e.name.startswith(".") or e.name in _SKIP_DIRS:
            continue
        with contextlib.suppress(OSError):
            if e.is_dir(follow_symlinks=False):
                yield from _session_dirs(Path(e.path), depth - 1)


def list_sessions(root: str | os.PathLike[str] = ".", *, include_ended: bool = False,
                  depth: int = 4) -> list[SessionInfo]:
    """The sessions in run directories under ``root`` (up to ``depth`` folders down), oldest first:
    those with a live process, or every one readable with ``include_ended``."""
    found = []
    for d in _session_dirs(Path(root), depth):
        try:
            info = read_session(d)
        except SessionFileError:
            continue  # a damaged or foreign session.json is not a session to list
        if include_ended or info.live:
            found.append(info)
    return sorted(found, key=lambda i: i.started_at)
