"""RUN_DIR/session.jsonl: every host message of a session, one protocol line each.

The host appends each message as it publishes it and flushes after every line, so a
crash or a kill loses at most the line being written; the file then opens afterwards
(read-only) like a live session. A torn last line (the process died mid-write) is
skipped with a note; a bad line anywhere else is an error naming the file and line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import IO, Any

from workbench.files import write_failed
from workbench.session.protocol import ProtocolError, decode


class SessionLog:
    """The writer: appends lines to a fresh log file (the caller checked the path with claim_run_dir)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.error: Exception | None = None  # the first failed write; later writes are skipped
        try:
            # O_NOFOLLOW: a symlink planted at the log's name is refused rather than followed.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise write_failed(exc, self.path) from exc
        self._fh: IO[str] | None = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, line: str) -> None:
        """Append one line and flush it to the OS (a crash of this process then loses nothing).

        A failed write (disk full) is kept in ``error`` and stops the log, never the training:
        the live clients still get every message.
        """
        if self._fh is None or self.error is not None:
            return
        try:
            self._fh.write(line + "\n")
            self._fh.flush()
        except OSError as exc:
            self.error = write_failed(exc, self.path)

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                self.error = self.error or write_failed(exc, self.path)
            self._fh = None


@dataclasses.dataclass(frozen=True)
class LogContents:
    messages: tuple[Any, ...]
    notes: tuple[str, ...] = ()  # what was skipped and why (a torn last line)


def read_log(path: str | os.PathLike[str]) -> LogContents:
    """Every message of a session log; ProtocolError names the file and line of a bad one.

    The last line may be torn (no newline at its end and not a whole message): it is
    skipped with a note in ``notes``, since that is how a crash mid-write leaves the file.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ProtocolError(f"{p} is missing: the session wrote no log (it may not have started).") from None
    except OSError as exc:
        raise ProtocolError(f"{p}: cannot be read ({exc.strerror or exc}).") from exc
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline (b"" when it ends cleanly)
    messages = []
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        messages.append(decode(raw, where=f"{p} line {number}"))
    notes: list[str] = []
    if tail.strip():
        if _whole_json(tail):  # a whole line that only lacks its newline: read it (errors are real)
            messages.append(decode(tail, where=f"{p} line {len(complete) + 1}"))
        else:
            notes.append(f"{p} line {len(complete) + 1}: the last line is incomplete ({len(tail)} bytes, no "
                         "newline): the run ended while writing it; skipped.")
    return LogContents(tuple(messages), tuple(notes))


def _whole_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True
