"""Fails in build() when an earlier scenario's process-wide changes leaked into this one."""

import sys

import torch

from tests.reliability_cases._tiny import tiny


def build(device):
    problems = []
    if torch.get_default_dtype() != torch.float32:
        problems.append(f"default dtype is {torch.get_default_dtype()}")
    if torch.nn.functional.relu(torch.ones(1)).item() != 1.0:
        problems.append("torch.nn.functional.relu is monkeypatched")
    if "utils" in sys.modules:
        problems.append("sys.modules has an 'utils' module")
    if problems:
        raise RuntimeError("state leaked from another scenario: " + "; ".join(problems))
    return tiny(device)
