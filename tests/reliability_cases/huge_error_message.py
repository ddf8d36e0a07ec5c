"""The forward raises, at step 1, a ValueError whose message is a megabyte long."""

from tests.reliability_cases._tiny import tiny


def stop(call: int) -> None:
    if call == 2:
        raise ValueError("x" * 1_000_000)


def build(device):
    return tiny(device, stop)
