"""build() calls os._exit(0) before returning a scenario: a 'success' status that must not pass for one."""

import os


def build(device):
    os._exit(0)
