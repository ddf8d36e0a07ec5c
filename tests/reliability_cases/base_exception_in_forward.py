"""The forward pass raises a BaseException subclass of its own (not an Exception) at step 1."""

from tests.reliability_cases._tiny import tiny


class Abort(BaseException):
    pass


def stop(call: int) -> None:
    if call == 2:
        raise Abort("user code gave up")


def build(device):
    return tiny(device, stop)
