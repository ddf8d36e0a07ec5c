"""The forward raises, at step 1, an exception whose __str__ itself raises."""

from tests.reliability_cases._tiny import tiny


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str exploded")


def stop(call: int) -> None:
    if call == 2:
        raise Unprintable()


def build(device):
    return tiny(device, stop)
