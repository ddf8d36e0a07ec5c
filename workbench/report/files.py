"""Writing output files safely: checked before the work, written atomically after."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class OutputPathError(Exception):
    """An output path cannot be written; raised before any long work starts."""


def check_writable(path: str | os.PathLike[str], *, directory: bool = False) -> Path:
    """Fail early, with a clear message, when ``path`` cannot be written.

    For a file: its parent must exist (or be creatable) and be writable, and
    the path must not be a directory. For a directory: it must be creatable
    and writable. Creates missing parent directories.
    """
    p = Path(path)
    target_dir = p if directory else p.parent
    if not directory and p.is_dir():
        raise OutputPathError(f"{p} is a directory; expected a file path to write.")
    if directory and p.exists() and not p.is_dir():
        raise OutputPathError(f"{p} exists and is a file; expected a directory.")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create directory {target_dir}: {exc.strerror or exc}.") from exc
    if not os.access(target_dir, os.W_OK | os.X_OK):
        raise OutputPathError(f"directory {target_dir} is not writable; choose another path.")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicFile:
    """A text file that appears at ``path`` whole or not at all.

    Written to a temp file in the same directory (mode as a plain open() would
    give it); ``commit()`` fsyncs and renames it over ``path``; ``abort()``
    removes it. The one place the project writes output files safely.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600
            self.fh = os.fdopen(fd, "w", encoding="utf-8")
        except BaseException:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise

    @property
    def open(self) -> bool:
        return not self.fh.closed

    def commit(self) -> Path:
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    A reader sees either the old file or the complete new one, never a half;
    the temp file is removed if anything fails (including KeyboardInterrupt).
    """
    out = AtomicFile(path)
    try:
        out.fh.write(text)
    except BaseException:
        out.abort()
        raise
    return out.commit()


def jsonable(value: Any) -> Any:
    """Strict-JSON form: non-finite floats become the strings "NaN"/"Infinity"/"-Infinity"
    (jq and browsers reject bare NaN), tuples become lists, dataclasses dicts."""
    import dataclasses
    import math

    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


class JsonStream:
    """One JSON object written atomically, with one array in it streamed item by item.

    ``add(item)`` appends an element of the array ``key`` to a temp file in the
    target's directory, so memory stays flat however long the run; ``finish(rest)``
    writes the other keys, fsyncs and renames the file over ``path``; ``abort()``
    removes the temp file. A reader never sees a half-written report.
    """

    def __init__(self, path: str | os.PathLike[str], key: str, head: dict[str, Any]) -> None:
        self._out = AtomicFile(path)
        self.path, self.tmp = self._out.path, self._out.tmp
        self._count = 0
        self._write("{\n" + "".join(f"  {json.dumps(k)}: {_indented(v)},\n" for k, v in head.items())
                    + f"  {json.dumps(key)}: [")

    @property
    def open(self) -> bool:
        return self._out.open

    def _write(self, text: str) -> None:
        try:
            self._out.fh.write(text)
        except BaseException:
            self._out.abort()
            raise

    def add(self, item: Any) -> None:
        # One line per element: compact, and greppable in a long run's report.
        self._write(("," if self._count else "") + "\n    " + json.dumps(jsonable(item), allow_nan=False))
        self._count += 1

    def finish(self, rest: dict[str, Any]) -> Path:
        self._write(("\n  ]" if self._count else "]")
                    + "".join(f",\n  {json.dumps(k)}: {_indented(v)}" for k, v in rest.items()) + "\n}\n")
        return self._out.commit()

    def abort(self) -> None:
        self._out.abort()


def _indented(value: Any) -> str:
    """json.dumps at indent 2, nested one level (the value of a top-level key)."""
    return json.dumps(jsonable(value), indent=2, allow_nan=False).replace("\n", "\n  ")
