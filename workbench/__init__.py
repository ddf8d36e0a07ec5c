"""torch workbench: debug and profile PyTorch training from the terminal.

``from workbench import Scenario`` is the user-facing API for scenario files;
``from workbench import Engine, EngineConfig`` steps one from Python;
``workbench.watch(model, optimizer)`` instruments a training loop you own (``workbench.Break``
is what it raises at a breakpoint).
Heavy modules (torch) load on first use so ``workbench --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["Break", "Breakpoint", "Engine", "EngineConfig", "Scenario", "ScenarioError", "load", "watch",
           "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from workbench.engine import Breakpoint, Engine, EngineConfig
    from workbench.scenario import Scenario, ScenarioError, load
    from workbench.session.watch import Break, watch


# The package's own names live in its subpackages, which are lazy in turn.
__getattr__ = lazy_exports(__name__, {
    **dict.fromkeys(("Scenario", "ScenarioError", "load"), "scenario"),
    **dict.fromkeys(("Engine", "EngineConfig", "Breakpoint"), "engine"),
    **dict.fromkeys(("watch", "Break"), "session.watch"),
})
