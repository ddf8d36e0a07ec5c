"""Reading JSON input files that may be hostile: bounded size, bounded nesting, gzip streamed.

Bench results (``bench --compare``), run reports (``profile --findings``) and
profiler traces (``profile --analyze``) are files a user hands us; they may be
truncated, corrupt, nested a million levels deep or a gzip bomb. Every failure
is an ``InputFileError`` whose message names the file and says what is wrong;
callers re-raise it as their own error type (BenchFileError, TraceError, ...).
No torch here: this sits at the bottom of the layers.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any

MB = 2**20
_CHUNK = 4 * MB


class InputFileError(ValueError):
    """An input file cannot be read as the JSON it should be; the message names it."""


def _too_big(path: Path, what: str, limit: int, inflated: bool) -> InputFileError:
    how = "inflates to more than" if inflated else "is larger than"
    return InputFileError(f"{path}: {how} {limit / MB:,.0f} MB, the most a {what} is read up to; "
                          "it is not one (or pass a larger limit where the command offers one).")


def read_text(path: str | os.PathLike[str], what: str, limit_bytes: int) -> str:
    """The file's text (a ``.gz`` file inflated, streamed, never past ``limit_bytes``)."""
    p = Path(path)
    try:
        if p.name.endswith(".gz"):
            parts: list[bytes] = []
            size = 0
            with gzip.open(p, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    size += len(chunk)
                    if size > limit_bytes:
                        raise _too_big(p, what, limit_bytes, inflated=True)
                    parts.append(chunk)
            data = b"".join(parts)
        else:
            if p.stat().st_size > limit_bytes:
                raise _too_big(p, what, limit_bytes, inflated=False)
            data = p.read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"{p}: no such file.") from None
    except IsADirectoryError:
        raise InputFileError(f"{p} is a directory; expected a {what} file.") from None
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise InputFileError(f"{p}: not a valid gzip file ({exc or type(exc).__name__}); the file is "
                             "corrupt or truncated.") from exc
    except OSError as exc:
        raise InputFileError(f"{p}: cannot be read ({exc.strerror or exc}).") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{p}: not UTF-8 text (byte {exc.start}); expected a {what} in JSON.") from exc


def read_json(path: str | os.PathLike[str], what: str, limit_bytes: int = 256 * MB) -> Any:
    """The parsed JSON of a file; InputFileError names the file, the line and the problem."""
    p = Path(path)
    text = read_text(p, what, limit_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{p}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); the file is corrupt "
                             f"or truncated, or not a {what}.") from exc
    except RecursionError:
        raise InputFileError(f"{p}: JSON nested deeper than the parser allows; not a {what}.") from None
