"""The Scenario contract, the batches it yields, the training-step vocabulary, the loader.

``contract``  Scenario (contract v1 and v2 fields), LossValue
``batch``     Batch: any batch structure, moved, split and measured in one place
``outputs``   a model output's tensor fields, its prediction, its own loss
``step``      one implementation of each step mechanism, shared by every command
``loader``    files and modules in, ScenarioSource out; discovery read from the syntax tree
``describe``  what ``workbench list`` shows, builds isolated in a child process
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from workbench.scenario.batch import MAPPING, PAIR, TREE, Batch, split_batch, tree_map, tree_tensors
    from workbench.scenario.contract import LossValue, Scenario
    from workbench.scenario.describe import ScenarioInfo, describe_source, describe_sources, static_info
    from workbench.scenario.errors import ScenarioError, ScenarioUnavailable
    from workbench.scenario.loader import (
        Discovery,
        ScenarioSource,
        Skipped,
        default_scenario_dir,
        discover,
        discover_all,
        load,
        load_source,
        replace,
        resolve_device,
    )
    from workbench.scenario.outputs import output_loss, output_tensors, prediction_tensor
    from workbench.scenario.step import DataCycle, instrumented

# Names load from their submodule on first use: the loader and the errors need no torch, so
# `workbench --help`, `list`'s static pass and the TUI's first frame do not wait ~2 s for it.
_HOME = {
    **dict.fromkeys(("MAPPING", "PAIR", "TREE", "Batch", "split_batch", "tree_map", "tree_tensors"), "batch"),
    **dict.fromkeys(("LossValue", "Scenario"), "contract"),
    **dict.fromkeys(("ScenarioInfo", "describe_source", "describe_sources", "static_info"), "describe"),
    **dict.fromkeys(("ScenarioError", "ScenarioUnavailable"), "errors"),
    **dict.fromkeys(("Discovery", "ScenarioSource", "Skipped", "default_scenario_dir", "discover", "discover_all",
                     "load", "load_source", "replace", "resolve_device"), "loader"),
    **dict.fromkeys(("output_loss", "output_tensors", "prediction_tensor"), "outputs"),
    **dict.fromkeys(("DataCycle", "instrumented"), "step"),
}

__all__ = [
    "Scenario",
    "ScenarioError",
    "ScenarioUnavailable",
    "ScenarioSource",
    "ScenarioInfo",
    "Batch",
    "LossValue",
    "DataCycle",
    "Discovery",
    "Skipped",
    "PAIR",
    "MAPPING",
    "TREE",
    "load",
    "load_source",
    "discover",
    "discover_all",
    "describe_source",
    "describe_sources",
    "static_info",
    "split_batch",
    "tree_map",
    "tree_tensors",
    "resolve_device",
    "default_scenario_dir",
    "replace",
    "instrumented",
    "output_tensors",
    "output_loss",
    "prediction_tensor",
]


__getattr__ = lazy_exports(__name__, _HOME)
