"""Printing user text literally.

Scenario names and descriptions, file paths, module names and finding messages
come from users and may hold square brackets (``cifar [/mnt/data/cifar]``,
``[red]raw[/red]``). Rich reads brackets in a plain ``str`` as markup: a stray
closing tag raises MarkupError and a well-formed one vanishes into a style. So
every table in report/ turns its ``str`` cells, title and caption into
``Text`` (never parsed), and the commands print through a Console with markup
off; styled words are ``Text`` objects with explicit styles.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, cast

from rich import table as _rich_table
from rich.console import Console
from rich.text import Text


def literal(value: Any) -> Any:
    """``value`` as a renderable printed exactly as written (non-strings unchanged)."""
    return Text(value) if isinstance(value, str) else value


class Table(_rich_table.Table):
    """rich's Table, with every str cell, title and caption shown literally."""

    def __init__(self, *headers: Any, title: Any = None, caption: Any = None, **kwargs: Any) -> None:
        super().__init__(*headers, title=literal(title), caption=literal(caption), **kwargs)

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(literal(r) for r in renderables), **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, literal(value) if name in ("title", "caption") else value)


# Width of output piped to a file or another program. rich falls back to 80 columns
# there, which crops the tables' numbers and names; a log or a pager has room for more.
HEADLESS_WIDTH = 160


# Set when a report is written to standard output (``--json /dev/stdout``): every table and
# message then goes to stderr, so what reaches stdout is the report alone.
_stdout_is_the_report = [False]


def stdout_is_the_report() -> None:
    """From here on, the commands' consoles print to stderr (a report is written to stdout)."""
    _stdout_is_the_report[0] = True


class _Standard:
    """``sys.stdout`` (or ``sys.stderr``) as it was when the console was made, and after that
    stream is closed, whatever ``sys.stdout`` is then (isolation.ProcessGuard reopens it there)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stream: Any = getattr(sys, name)

    def _target(self) -> Any:
        if getattr(self.stream, "closed", False):
            self.stream = getattr(sys, self.name)
        return self.stream

    def write(self, text: str) -> int:
        return int(self._target().write(text) or 0)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding ...: the stream's own
        return getattr(self._target(), name)


def plain_console(stderr: bool = False, file: IO[str] | None = None) -> Console:
    """The commands' Console: strings are never read as markup (user text is everywhere).

    Not a terminal and no ``COLUMNS`` set (``workbench check | tee log``, CI): print
    :data:`HEADLESS_WIDTH` wide instead of rich's 80. An explicit ``COLUMNS`` wins. After
    :func:`stdout_is_the_report`, stderr.

    The stream is the one in place when the console is made, not whatever ``sys.stdout`` is at
    each print: a scenario's code run since (it may set ``sys.stdout`` to anything) does not
    take the command's output, nor a status line's refresh in the middle of a step.
    """
    to_stderr = stderr or _stdout_is_the_report[0]
    console = Console(stderr=to_stderr, markup=False,
                      file=file if file is not None else cast(IO[str], _Standard("stderr" if to_stderr else "stdout")))
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = HEADLESS_WIDTH
    return console
