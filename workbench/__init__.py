"""torch workbench: debug and profile PyTorch training from the terminal.

``from workbench import Scenario`` is the user-facing API for scenario files;
``from workbench import Engine, EngineConfig`` steps one from Python.
Heavy modules (torch) load on first use so ``workbench --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["Breakpoint", "Engine", "EngineConfig", "Scenario", "ScenarioError", "load", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from workbench.engine import Breakpoint, Engine, EngineConfig
    from workbench.scenario import Scenario, ScenarioError, load


# The package's own names live in its subpackages, which are lazy in turn.
__getattr__ = lazy_exports(__name__, {
    **dict.fromkeys(("Scenario", "ScenarioError", "load"), "scenario"),
    **dict.fromkeys(("Engine", "EngineConfig", "Breakpoint"), "engine"),
})
