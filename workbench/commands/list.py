"""workbench list [DIR]: the scenarios in a directory with model, size and description."""

from __future__ import annotations

import argparse

NAME = "list"
ORDER = 10
HELP = "list the scenarios in a directory (default: the bundled scenarios/)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", nargs="?", help="directory of scenario files (default: scenarios/)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from workbench.report.scenarios import scenario_table
    from workbench.scenario import ScenarioError, default_scenario_dir, describe_source, discover

    directory = args.directory or default_scenario_dir()
    if directory is None:
        raise ScenarioError("no scenarios/ directory here and none bundled; pass a directory.")
    infos = [describe_source(src) for src in discover(directory)]
    console = Console()
    console.print(scenario_table(infos, title=f"scenarios in {directory}"))
    failed = [i for i in infos if i.error]
    for info in failed:
        console.print(f"[red]✖ {info.label}[/]: {info.error}", highlight=False)
    return 2 if failed else 0
