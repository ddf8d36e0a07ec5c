"""The forward pass dereferences a NULL pointer at step 1 (SIGSEGV)."""

import ctypes

from tests.reliability_cases._tiny import tiny


def crash(call: int) -> None:
    if call == 2:
        ctypes.string_at(0)


def build(device):
    return tiny(device, crash)
