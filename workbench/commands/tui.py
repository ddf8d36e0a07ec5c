"""workbench tui [SCENARIO...]: the interactive stepping workbench."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.tui.app import WorkbenchApp

NAME = "tui"
ORDER = 1
HELP = "open the interactive workbench (the default with no command)"
DESCRIPTION = (
    "Step a scenario phase by phase (forward, loss, backward, optimizer step), watch per-module "
    "statistics and health findings fill in, set breakpoints, inspect tensors. With no scenario, "
    "or with several paths or a directory, a picker lists them with the bundled scenarios."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help="scenario file (PATH.py or PATH.py:build_variant), module, or directory")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


# A device name the TUI accepts before torch is loaded; whether CUDA is there is known only
# after torch loads (in the worker), and an unavailable one shows in the error panel.
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# After q, the app has this long to end on its own; a scenario still inside user code (a
# forward that never returns) would keep the process alive, so it is left behind instead.
EXIT_GRACE_S = 0.5


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    # Before torch loads: its C++ and profiler logs would draw over the screen.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from workbench.errors import UsageError

    if not (sys.stdin.isatty() and sys.stderr.isatty()) and not os.environ.get("WORKBENCH_TUI_FORCE"):
        raise UsageError(
            "workbench tui needs an interactive terminal (stdin or stderr is not a TTY). Run it in a "
            "terminal, or use the headless commands (`workbench --help`)."
        )
    device = str(args.device).lower()
    if not _DEVICE.fullmatch(device):  # a typo fails here, before the screen opens
        raise UsageError(f"unknown device {args.device!r}; expected cpu, cuda, cuda:N or auto.")
    # torch is imported by the app's worker after the first frame is drawn, not here.
    from workbench.tui.app import create_app

    app = create_app(args.scenarios, device=device)
    run_to_the_end(app)
    if getattr(app, "stopped_running_code", False):
        print("workbench: the scenario's code was still running when you quit; its process was ended.",
              file=sys.stderr, flush=True)
    return int(app.return_code or 0)


def run_to_the_end(app: WorkbenchApp, grace: float = EXIT_GRACE_S) -> None:
    """``app.run()``, but a quit ends the process even if user code never returns.

    Thread workers run in asyncio's default executor, and ``asyncio.run`` joins
    it on the way out: a worker stuck in the scenario's forward would hold the
    process forever after the screen was restored. A watchdog waits for the
    app to unmount, gives it ``grace`` seconds to return, then exits the process
    (the screen is already restored by then; the stuck thread dies with it).
    """
    import os
    import sys
    import threading

    returned = threading.Event()

    def watchdog() -> None:
        app_closed.wait()
        if returned.wait(grace):
            return
        print("workbench: the scenario's code was still running when you quit; it was stopped.",
              file=sys.stderr, flush=True)
        os._exit(int(app.return_code or 0))

    app_closed = app.closed  # set in WorkbenchApp.on_unmount
    threading.Thread(target=watchdog, name="workbench-exit-watchdog", daemon=True).start()
    try:
        app.run()
    finally:
        returned.set()
    # The app returned, but a worker thread may still be inside user code (the executor is
    # not joined when the loop was not asyncio.run's): leave without waiting on it.
    stuck = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(app.return_code or 0))
