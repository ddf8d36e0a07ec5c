"""build() changes process-wide state: default dtype float64, a monkeypatched torch
function, a module in sys.modules and 50 MB held at module level."""

import sys
import types

import torch

from tests.reliability_cases._tiny import tiny

HELD = bytearray(50 * 2**20)


def build(device):
    torch.set_default_dtype(torch.float64)
    torch.nn.functional.relu = lambda x, inplace=False: x * 0  # noqa: ARG005
    sys.modules["utils"] = types.SimpleNamespace(VALUE="leaked")
    scenario = tiny(device)
    return scenario
