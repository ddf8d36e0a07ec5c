"""A thread the forward starts calls os._exit(5) at step 1: that thread ends, the run goes on."""

import os
import threading

from tests.reliability_cases._tiny import tiny


def stop(call: int) -> None:
    if call == 2:
        worker = threading.Thread(target=os._exit, args=(5,), name="quitter")
        worker.start()
        worker.join()


def build(device):
    return tiny(device, stop)
