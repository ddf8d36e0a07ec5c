"""What `workbench check` pays for running each scenario in a child process of its own.

Each scenario runs in a fork of a fork server that imported torch and the engine
once (workbench.isolation). Measured here, on the bundled scenarios at check's
default 20 steps:

- the fork server's start, paid once per `check` (the torch import moves there);
- the extra wall time per scenario: child (fork, result back, exit) minus the
  same check run in-process after a warm-up;
- `workbench check scenarios/` end to end from a fresh interpreter.

Run with ``.venv/bin/python -m pytest benchmarks/test_isolation_cost.py -s``.
The target: under 0.5 s extra per scenario (median). Figures grow on a busy
machine; the load average is printed beside them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = 20
TARGET_EXTRA_S = 0.5


def test_isolation_cost_per_scenario() -> None:
    from workbench.commands.check import CHILD_PRELOAD, check_one
    from workbench.isolation import run_isolated
    from workbench.scenario import discover

    sources = discover(ROOT / "scenarios")
    check_one(sources[0], "cpu", STEPS, 1)  # warm: first-use imports and allocator pools
    inproc = []
    for src in sources:
        t = time.perf_counter()
        check_one(src, "cpu", STEPS, 1)
        inproc.append(time.perf_counter() - t)
    t = time.perf_counter()
    first = run_isolated(check_one, sources[0], "cpu", STEPS, 1, preload=CHILD_PRELOAD)
    server_start = time.perf_counter() - t  # includes the fork server's start and torch import
    assert first.returned, first.failure
    child = []
    for src in sources:
        t = time.perf_counter()
        out = run_isolated(check_one, src, "cpu", STEPS, 1, preload=CHILD_PRELOAD)
        child.append(time.perf_counter() - t)
        assert out.returned, out.failure
    extra = [c - i for c, i in zip(child, inproc)]
    load = os.getloadavg()[0]
    print(f"\n{len(sources)} scenarios, {STEPS} steps, load average {load:.1f}")
    print(f"first child (fork server start, torch import): {server_start:.2f} s")
    print(f"in-process per scenario: median {statistics.median(inproc):.3f} s")
    print(f"in a child per scenario: median {statistics.median(child):.3f} s")
    print(f"extra per scenario: median {statistics.median(extra):.3f} s, max {max(extra):.3f} s")
    assert statistics.median(extra) < TARGET_EXTRA_S


def test_check_bundled_scenarios_end_to_end() -> None:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "workbench", "check", str(ROOT / "scenarios")], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\n`workbench check scenarios/`: {wall:.1f} s wall (load average {os.getloadavg()[0]:.1f})")
