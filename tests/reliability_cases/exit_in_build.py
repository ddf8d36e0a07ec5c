"""build() calls sys.exit(3) before returning a scenario."""

import sys


def build(device):
    sys.exit(3)
