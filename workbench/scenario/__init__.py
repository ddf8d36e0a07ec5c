"""The Scenario contract, the batches it yields, the training-step vocabulary, the loader.

``contract``  Scenario (contract v1 and v2 fields), LossValue
``batch``     Batch: any batch structure, moved, split and measured in one place
``outputs``   a model output's tensor fields, its prediction, its own loss
``step``      one implementation of each step mechanism, shared by every command
``loader``    files and modules in, ScenarioSource out; discovery read from the syntax tree
``describe``  what ``workbench list`` shows, builds isolated in a child process
"""

from __future__ import annotations

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
