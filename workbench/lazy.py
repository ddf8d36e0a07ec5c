"""Package attributes that import their submodule on first use.

``workbench``, ``workbench.engine`` and ``workbench.scenario`` export names whose modules
import torch; resolving them lazily keeps ``workbench --help`` and the TUI's first frame free
of torch until something asks for a name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` lives in the submodule
    ``package.<homes[name]>``, imported the first time the name is asked for."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        namespace[name] = value  # later lookups skip this function
        return value

    return __getattr__
