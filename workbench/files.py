"""Writing output files safely: checked before the work, written atomically after."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from workbench.errors import OutputPathError


# An existing file with one of these suffixes is someone's code: never a report's target.
SOURCE_SUFFIXES = frozenset({".py", ".pyw", ".pyi", ".ipynb"})

Inputs = Iterable[tuple[str, "str | os.PathLike[str]"]]  # (what it is, path): ("the scenario file", p)


# The head of a file the workbench wrote (a report, a JUnit file): one it may write over. The
# JSON outputs say "schema": "workbench.<kind>/N" first (bench: "format"); the unmarked heads
# of diff, summary and profile JSON from before they did are recognised by their first keys.
_OUR_HEADS = re.compile(
    r'\A\s*(?:\{\s*"(?:schema"\s*:\s*"workbench\.|format"\s*:\s*"torch-workbench-)'
    r'|\{\s*"scenario"\s*:\s*"[^"\n]*",\s*"(?:device"\s*:\s*"[^"\n]*",\s*"a"|model_class")\s*:'
    r'|\{\s*"run"\s*:\s*"[^"\n]*",\s*"run_dir"\s*:'
    r'|\{\s*"scenario"\s*:\s*"[^"\n]*",\s*"label"\s*:'  # a profile run's sidecar (workbench-profile.json)
    r'|<\?xml[^>]*\?>\s*<testsuites name="workbench )')
_HEAD_BYTES = 4096


def workbench_output(path: str | os.PathLike[str]) -> bool:
    """Whether the regular file at ``path`` is empty or one the workbench wrote (a report of an
    earlier run, a JUnit file): the only files a command writes over."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return False
    return not head or bool(_OUR_HEADS.match(head.decode("utf-8", errors="replace")))


def writes_to_stdout(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is this process's standard output (``/dev/stdout``, or the file stdout
    is redirected to): the command's own printing must then go to stderr."""
    if not path:
        return False
    try:
        here, out = os.stat(path), os.fstat(1)
    except (OSError, ValueError, TypeError):
        return False
    return (here.st_dev, here.st_ino) == (out.st_dev, out.st_ino)


_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISREG, "file"), (stat.S_ISFIFO, "fifo"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def existing_kind(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is once symlinks are followed ("file", "directory", "fifo", ...), None if absent."""
    try:
        return _kind(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):  # below a file: creating its parent says why not
        return None
    except OSError as exc:
        raise OutputPathError(f"{path}: cannot be examined ({exc.strerror or exc}).") from exc


def writes_in_place(path: str | os.PathLike[str]) -> bool:
    """A FIFO (``>(jq .)``, ``mkfifo``) or character device (/dev/null, /dev/stdout) is written
    directly: a temp file renamed over it would replace the pipe or device with a regular file."""
    return existing_kind(path) in ("fifo", "character device")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and symlinks included
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_writable(path: str | os.PathLike[str], *, directory: bool = False, inputs: Inputs = ()) -> Path:
    """Fail early, with a clear message, when ``path`` cannot or must not be written.

    Refused: a path that is (or links to) one of ``inputs`` (the scenario file, a file
    being compared or analysed), an existing Python source file, an existing non-empty file
    the workbench did not write (a dataset, someone's notes: :func:`workbench_output`), and
    an existing socket or block device. A FIFO or character device is accepted (written in place);
    a symlink is followed. For a file: its parent must exist (or be creatable) and be
    writable, and the path must not be a directory. For a directory: it must be
    creatable and writable. Creates missing parent directories.
    """
    p = Path(path)
    for what, other in inputs:
        if other is not None and Path(other).exists() and _same_file(p, Path(other)):
            raise OutputPathError(
                f"{p} is {what} ({other}): writing there would replace it. Choose another output path.")
    kind = existing_kind(p)
    if directory:
        if kind is not None and kind != "directory":
            raise OutputPathError(f"{p} exists and is a {kind}; expected a directory.")
        target_dir = p
    else:
        if kind == "directory":
            raise OutputPathError(f"{p} is a directory; expected a file path to write.")
        if kind in ("fifo", "character device"):
            return p
        if kind is not None and kind != "file":
            raise OutputPathError(f"{p} exists and is a {kind}, not a regular file; choose a file path "
                                  "(a FIFO or /dev/stdout is written in place).")
        if kind == "file" and Path(os.path.realpath(p)).suffix.lower() in SOURCE_SUFFIXES:
            raise OutputPathError(f"{p} is a Python source file: a report written there would replace the code. "
                                  "Choose another output path (e.g. report.json).")
        if kind == "file" and not workbench_output(p):
            raise OutputPathError(
                f"{p} exists and is not an output of the workbench (a report, trace analysis or JUnit file "
                "of an earlier run), so it is not written over. Choose another path, or move that file away "
                "first.")
        target_dir = Path(os.path.realpath(p)).parent
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create directory {target_dir}: {exc.strerror or exc}.") from exc
    if not os.access(target_dir, os.W_OK | os.X_OK):
        raise OutputPathError(f"directory {target_dir} is not writable; choose another path.")
    return p


def scenario_inputs(*specs: str | None) -> list[tuple[str, str]]:
    """The files named by scenario specs (``path.py``, ``path.py:function``), as ``inputs``
    for check_writable. A dotted module name gives none: the source-file rule covers it."""
    found = []
    for spec in specs:
        if not spec:
            continue
        head, sep, _ = spec.rpartition(":")
        for candidate in (spec, head if sep else None):
            if candidate and Path(candidate).is_file():
                found.append(("the scenario file", candidate))
                break
    return found


def write_failed(exc: OSError, path: str | os.PathLike[str]) -> OutputPathError:
    """The OSError of a write as one message naming the path ("no space left on device writing PATH")."""
    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EFBIG: "file too large for the file system",
              errno.EPIPE: "the reader closed the pipe"}.get(exc.errno or 0)
    reason = reason or (exc.strerror or str(exc)).lower()
    return OutputPathError(f"{reason} writing {path}; nothing was left behind. Free some space "
                           "or choose another path, then run again." if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                           else f"{reason} writing {path}.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicFile:
    """A text file that appears at ``path`` whole or not at all.

    Written to a temp file in the same directory (mode as a plain open() would
    give it); ``commit()`` fsyncs and renames it over ``path``; ``abort()``
    removes it. A symlink at ``path`` is followed: its target is replaced, the
    link stays. A FIFO or character device is written in place (no temp file:
    a rename would replace it). A failed write (disk full ...) removes the temp
    file and raises OutputPathError naming the path; every later write or commit
    raises that same error. The one place the project writes output files safely.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.error: OutputPathError | None = None
        self.in_place = writes_in_place(self.path)
        self.tmp: Path | None = None
        if self.in_place:
            self.fh = _open_in_place(self.path)
            return
        target = Path(os.path.realpath(self.path))  # through symlinks: the link is kept
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as exc:
            raise write_failed(exc, self.path) from exc
        self.target = target
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

    def write(self, text: str) -> None:
        if self.error is not None:
            raise self.error
        try:
            self.fh.write(text)
        except OSError as exc:
            self._fail(exc)
        except BaseException:
            self.abort()
            raise

    def _fail(self, exc: OSError) -> None:
        self.error = write_failed(exc, self.path)
        self.abort()
        raise self.error from exc

    def commit(self) -> Path:
        if self.error is not None:
            raise self.error
        try:
            self.fh.flush()
            if not self.in_place:
                os.fsync(self.fh.fileno())
            self.fh.close()
            if self.tmp is not None:
                self._refuse_a_newcomer()
                os.replace(self.tmp, self.target)
        except OSError as exc:
            self._fail(exc)
        except BaseException:
            self.abort()
            raise
        return self.path

    def _refuse_a_newcomer(self) -> None:
        """The path was checked before the work began; a file that appeared there since (the
        scenario wrote it, another program did) and that the workbench did not write is not
        replaced either: what was written is kept beside it, under a free name, and the
        OutputPathError says where."""
        assert self.tmp is not None
        if existing_kind(self.target) is None or workbench_output(self.target):
            return
        for n in range(1, 1000):
            kept = self.target.with_name(f"{self.target.stem}.workbench-{n}{self.target.suffix}")
            try:
                os.link(self.tmp, kept)  # fails if the name is taken: nothing is written over
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system: the free name, then a rename
                if kept.exists():
                    continue
                os.replace(self.tmp, kept)
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
            raise OutputPathError(
                f"{self.path} appeared while the command ran and is not an output of the workbench, so it was "
                f"not written over; what was to go there is in {kept}.")

    def abort(self) -> None:
        if not self.fh.closed:
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                self.fh.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def _open_in_place(path: Path) -> Any:
    """Open a FIFO or device for writing. A FIFO nobody reads would block for ever:
    opened non-blocking first, which fails at once (ENXIO) when there is no reader."""
    flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OutputPathError(f"{path} is a FIFO that no process is reading; start the reader first "
                                  f"(e.g. `cat {path} &`) or choose a file path.") from exc
        raise write_failed(exc, path) from exc
    os.set_blocking(fd, True)  # from here writes wait for a slow reader instead of failing
    return os.fdopen(fd, "w", encoding="utf-8")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    A reader sees either the old file or the complete new one, never a half;
    the temp file is removed if anything fails (including KeyboardInterrupt).
    """
    out = AtomicFile(path)
    out.write(text)
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


def atomic_write_json(path: str | os.PathLike[str], data: Any, schema: str | None = None) -> Path:
    """``data`` as strict JSON (:func:`jsonable`), atomically; ``schema`` ("workbench.diff/1"), when
    given, is the object's first key: what marks the file as the workbench's to write over later."""
    value = jsonable(data)
    if schema is not None and isinstance(value, dict):
        value = {"schema": schema, **value}
    return atomic_write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


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
        self._out.write(text)

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
