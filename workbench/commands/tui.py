"""workbench tui [SCENARIO...]: the interactive stepping workbench."""

from __future__ import annotations

import argparse

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
    from workbench.scenario import resolve_device
    from workbench.tui.app import create_app

    device = str(resolve_device(args.device))  # a bad --device fails here, before the screen opens
    create_app(args.scenarios, device=device).run()
    return 0
