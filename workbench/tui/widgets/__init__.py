"""Widgets of the workbench TUI; importable by every screen."""

from workbench.tui.widgets.common import ErrorPanel, ProgressPanel

__all__ = ["ErrorPanel", "ProgressPanel"]
