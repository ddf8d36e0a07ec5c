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


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    A reader sees either the old file or the complete new one, never a half;
    the temp file is removed if anything fails (including KeyboardInterrupt).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p


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
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        self.tmp = Path(tmp)
        self._fh = os.fdopen(fd, "w", encoding="utf-8")
        self._count = 0
        self._fh.write("{\n")
        for k, v in head.items():
            self._fh.write(f"  {json.dumps(k)}: {_indented(v)},\n")
        self._fh.write(f"  {json.dumps(key)}: [")

    @property
    def open(self) -> bool:
        return not self._fh.closed

    def add(self, item: Any) -> None:
        # One line per element: compact, and greppable in a long run's report.
        self._fh.write(("," if self._count else "") + "\n    " + json.dumps(jsonable(item), allow_nan=False))
        self._count += 1

    def finish(self, rest: dict[str, Any]) -> Path:
        try:
            self._fh.write("\n  ]" if self._count else "]")
            for k, v in rest.items():
                self._fh.write(f",\n  {json.dumps(k)}: {_indented(v)}")
            self._fh.write("\n}\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _indented(value: Any) -> str:
    """json.dumps at indent 2, nested one level (the value of a top-level key)."""
    return json.dumps(jsonable(value), indent=2, allow_nan=False).replace("\n", "\n  ")
