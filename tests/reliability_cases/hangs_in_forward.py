"""The forward pass never returns from step 1 (an endless loop in user code)."""

import time

from tests.reliability_cases._tiny import tiny


def hang(call: int) -> None:
    while call >= 2:
        time.sleep(0.05)


def build(device):
    return tiny(device, hang)
