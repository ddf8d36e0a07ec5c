"""build() starts a non-daemon thread that never ends (a background poller left behind)."""

import threading
import time

from tests.reliability_cases._tiny import tiny


def _poll() -> None:
    while True:
        time.sleep(0.05)


def build(device):
    threading.Thread(target=_poll, name="user-poller", daemon=False).start()
    return tiny(device)
