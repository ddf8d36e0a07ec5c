"""Rendering scenario listings (rich)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from workbench.report.numbers import human_count
from workbench.report.text import Table
from workbench.scenario import ScenarioInfo


def scenario_table(infos: Sequence[ScenarioInfo], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("scenario", style="bold cyan", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("description", overflow="fold")
    for info in infos:
        if info.unavailable:
            table.add_row(info.label, Text(f"needs {info.unavailable}", style="yellow"), "", info.description)
        elif info.error:
            first = info.error.splitlines()[0]
            table.add_row(info.label, Text("failed to load", style="red"), "", Text(first, style="red"))
        elif not info.built:
            table.add_row(info.label, Text("not built", style="dim"), "", info.description)
        else:
            table.add_row(
                info.label, info.model_class, human_count(info.parameters),
                info.description,
            )
    return table
