"""torch workbench: debug and profile PyTorch training from the terminal.

``from workbench import Scenario`` is the user-facing API for scenario files;
``from workbench import Engine, EngineConfig`` steps one from Python.
Heavy modules (torch) load on first use so ``workbench --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Breakpoint", "Engine", "EngineConfig", "Scenario", "ScenarioError", "load", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from workbench.engine import Breakpoint, Engine, EngineConfig
    from workbench.scenario import Scenario, ScenarioError, load


def __getattr__(name: str) -> Any:
    if name in ("Scenario", "ScenarioError", "load"):
        from workbench import scenario

        return getattr(scenario, name)
    if name in ("Engine", "EngineConfig", "Breakpoint"):
        from workbench import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
