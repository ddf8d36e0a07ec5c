"""Rendering scenario listings (rich)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from workbench.report.numbers import human_count
from workbench.scenario import ScenarioInfo


def scenario_table(infos: Sequence[ScenarioInfo], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("scenario", style="bold cyan", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("description", overflow="fold")
    for info in infos:
        if info.unavailable:
            table.add_row(info.label, f"[yellow]needs {info.unavailable}[/]", "", info.description)
        elif info.error:
            first = info.error.splitlines()[0]
            table.add_row(info.label, "[red]failed to load[/]", "", f"[red]{first}[/]")
        elif not info.built:
            table.add_row(info.label, "[dim]not built[/]", "", info.description)
        else:
            table.add_row(
                info.label, info.model_class, human_count(info.parameters),
                info.description,
            )
    return table
