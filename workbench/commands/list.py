"""workbench list [DIR]: the scenarios in a directory with model, size and description."""

from __future__ import annotations

import argparse

NAME = "list"
ORDER = 10
HELP = "list the scenarios in a directory (default: the bundled scenarios/)"
DESCRIPTION = (
    "List the scenarios in a directory. Files are read without running them (a file with no "
    "top-level build is named as skipped, with the reason); model class and parameter counts come "
    "from building each scenario on CPU in a separate process, one build at a time, with a time "
    "limit per build (--static skips the builds)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", nargs="?", help="directory of scenario files (default: scenarios/)")
    p.add_argument("--static", action="store_true",
                   help="read the files only: no build() runs (no model class or parameter counts)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds one build() may take before it is stopped (default 30)")


def run(args: argparse.Namespace) -> int:
    from rich.text import Text

    from workbench.errors import UsageError
    from workbench.report.scenarios import scenario_table
    from workbench.report.text import plain_console
    from workbench.scenario import ScenarioError, default_scenario_dir, describe_sources, discover_all

    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}.")
    directory = args.directory or default_scenario_dir()
    if directory is None:
        raise ScenarioError("no scenarios/ directory here and none bundled; pass a directory.")
    found = discover_all(directory)
    if not found.sources and not found.skipped:
        raise ScenarioError(
            f"{directory}: no scenario files found (a scenario is a .py file with a top-level "
            "`def build(device)`; `workbench init` writes one).", path=str(directory))
    console = plain_console()
    # No spinner: its thread would make the build child a spawned process instead of a fork.
    infos = describe_sources(found.sources, build=not args.static, timeout_s=args.timeout)
    console.print(scenario_table(infos, title=f"scenarios in {directory}"))
    failed = [i for i in infos if i.error and not i.unavailable]
    for info in infos:
        if info.error:
            style = "yellow" if info.unavailable else "red"
            mark = "–" if info.unavailable else "✖"
            console.print(Text.assemble((f"{mark} {info.label}", style), f": {info.error}"), highlight=False)
    for skipped in found.skipped:
        console.print(Text(f"skipped {skipped.path}: {skipped.reason}", style="dim"), highlight=False)
    return 2 if failed else 0
