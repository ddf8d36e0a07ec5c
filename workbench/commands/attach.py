"""workbench attach [RUN_DIR | HOST:PORT | unix:PATH]: the TUI on a script's live (or finished) session."""

from __future__ import annotations

import argparse
import os
from typing import Any

NAME = "attach"
ORDER = 2
HELP = "open the workbench on a training script's session (workbench.watch(..., serve=True))"
DESCRIPTION = (
    "Show the session a script publishes with workbench.watch(model, opt, serve=True): the model "
    "table, findings, charts, memory and inspector fill in as the script trains; breakpoints set "
    "here (B) reach it; with on_break='wait' the script holds at a breakpoint until r continues or x "
    "skips the step. A finished or crashed run's directory opens read-only from its log. Over SSH: "
    "ssh -L PORT:127.0.0.1:PORT host, then workbench attach 127.0.0.1:PORT --token TOKEN "
    "(TOKEN: the contents of RUN_DIR/session.token there). --list shows the live sessions."
)
TOKEN_ENV = "WORKBENCH_SESSION_TOKEN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="RUN_DIR | HOST:PORT | unix:PATH",
                   help="the run directory a session writes session.json in, or its address")
    p.add_argument("--list", action="store_true",
                   help="list the live sessions under --root (run dir, host, title, pid, address)")
    p.add_argument("--root", default=".", metavar="DIR",
                   help="where --list (and an address without --token) looks for run directories "
                        "(default: the current directory)")
    p.add_argument("--token", default=None,
                   help=f"the session's token for HOST:PORT or unix:PATH (default: ${TOKEN_ENV}, else "
                        "the token file of the run directory under --root serving that address)")


def run(args: argparse.Namespace) -> int:
    import sys

    from workbench.errors import UsageError

    if args.list:
        if args.target is not None:
            raise UsageError("workbench attach: give a target or --list, not both.")
        return _list(args.root)
    if args.target is None:
        raise UsageError("workbench attach: which session? Give RUN_DIR, HOST:PORT or unix:PATH "
                         "(`workbench attach --list` shows the live ones).")
    connection = open_target(args.target, args.token, args.root)
    if not (sys.stdin.isatty() and sys.stderr.isatty()) and not os.environ.get("WORKBENCH_TUI_FORCE"):
        connection.close()
        raise UsageError("workbench attach needs an interactive terminal (stdin or stderr is not a TTY); "
                         "run it in a terminal.")
    from workbench.commands.tui import run_to_the_end
    from workbench.tui.app import create_app

    app = create_app(attach=args.target, connection=connection)
    run_to_the_end(app)
    return int(app.return_code or 0)


def open_target(target: str, token: str | None, root: str) -> Any:
    """The open connection to ``target``; UsageError (exit 2) naming it when it cannot be opened."""
    from workbench.errors import UsageError
    from workbench.session.transport import SessionError, connect

    if token is None:
        token = os.environ.get(TOKEN_ENV) or _local_token(target, root)
    try:
        return connect(target, token, client="workbench attach")
    except SessionError as exc:
        raise UsageError(f"workbench attach {target}: {exc}") from None


def _local_token(target: str, root: str) -> str | None:
    """An address served by a session on this machine: the token of its run directory."""
    if os.path.isdir(target) or not (target.startswith("unix:") or ":" in target):
        return None
    from workbench.session.registry import SessionFileError, list_sessions, read_token

    for info in list_sessions(root):
        if info.address == target:
            try:
                return read_token(info.run_dir)
            except SessionFileError:
                return None
    return None


def _list(root: str) -> int:
    from workbench.session.registry import list_sessions

    sessions = list_sessions(root)
    if not sessions:
        print(f"no live sessions under {os.path.abspath(root)} (a script publishes one with "
              "workbench.watch(model, opt, serve=True))")
        return 0
    for info in sessions:
        print(f"{info.run_dir}  {info.host}  {info.title}  pid {info.pid}  {info.address}")
    return 0
