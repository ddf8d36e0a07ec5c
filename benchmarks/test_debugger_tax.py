"""Debugger tax on five model shapes: instrumented steps vs the bare step, side by side, CPU.

Targets: stats every step <= 1.25x the bare step on every row and never slower than
naive per-layer ``.item()`` statistics; stats every 16th step <= 1.05x. Run with::

    .venv/bin/python -m pytest benchmarks/test_debugger_tax.py -s
    .venv/bin/python benchmarks/test_debugger_tax.py            # the table only

Columns (see tax_harness.py): ``floor`` the bare step plus the loss and the total
gradient norm read together (the least an unmeasured step may cost), ``refs`` hooks that only keep references, ``naive``
``.item()`` stats per layer, ``lean`` naive's numbers computed the cheapest way and
nothing else (the least an instrument that knows what naive knows costs), ``engine/1`` and ``engine/16`` the engine with stats every
step / every 16th step, ``watch/1`` and ``watch/16`` ``workbench.watch`` in a plain user
loop when it exists. All variants of a row run in one process on copies of the same
scenario and the same 8 batches, interleaved step by step in blocks of 16 steps (one step
of each variant in turn), so each sees the same background load: a ratio is median block
time over the bare step's median, with the range of the per-round ratios in brackets.
Timings on a shared machine are noisy; the ratios from interleaved blocks are what to
compare. ``WB_TAX_ROUNDS`` sets the rounds (default 7), ``WB_TAX_SCENARIOS`` a comma list
of rows, ``WB_TAX_THREADS`` torch's intra-op threads (default 1: on a machine whose cores
are shared, a second OpenMP thread waits on a busy core and a 1 ms step measured 185 ms).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from tax_harness import BLOCK, SCENARIOS, VARIANTS, Row, measure, table_header, table_row, watch

ROUNDS = int(os.environ.get("WB_TAX_ROUNDS", "7"))


def _variants(name: str) -> dict:
    variants = dict(VARIANTS)
    for every in (1, 16):
        make = watch(every)
        if make is not None:
            variants[f"watch/{every}"] = make
    return variants


def _scenarios() -> list[str]:
    chosen = os.environ.get("WB_TAX_SCENARIOS")
    return [n.strip() for n in chosen.split(",")] if chosen else list(SCENARIOS)


def run_table(print_line=print) -> list[Row]:
    """Measure every row, printing each as it is done (the slow rows take a minute under load)."""
    names = _scenarios()
    columns = ["floor", "refs", "naive", "lean", "engine/1", "engine/16"]
    if any(len(_variants(n)) > len(VARIANTS) for n in names):
        columns += ["watch/1", "watch/16"]
    threads = int(os.environ.get("WB_TAX_THREADS", "1"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    title = (f"debugger tax, cpu, {threads} threads, torch {torch.__version__}: ratio of median {BLOCK}-step "
             f"block times vs the bare step, {ROUNDS} rounds interleaved step by step (per-round range); "
             "targets engine/1 <= 1.25x and <= naive, engine/16 <= 1.05x")
    for line in table_header(columns, title):
        print_line(line)
    rows = []
    try:
        for name in names:
            row = measure(name, _variants(name), rounds=ROUNDS)
            rows.append(row)
            print_line(table_row(row, columns))
    finally:
        torch.set_num_threads(previous)
    return rows


@pytest.mark.benchmark(group="debugger-tax")
def test_debugger_tax_table(benchmark, request: pytest.FixtureRequest) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines: list[str] = []
    rows: list[Row] = []

    def once() -> None:
        rows.extend(run_table(lines.append))

    benchmark.pedantic(once, rounds=1, iterations=1)
    for line in lines:
        if reporter is not None:
            reporter.write_line(line)
        else:  # pragma: no cover
            print(line)
    benchmark.extra_info["table"] = lines
    benchmark.extra_info["ratios"] = {r.scenario: {v: r.ratio(v) for v in r.blocks} for r in rows}
    assert [r.scenario for r in rows] == _scenarios()
    for row in rows:
        assert all(len(t) == ROUNDS and min(t) > 0 for t in row.blocks.values()), row.scenario


if __name__ == "__main__":
    run_table()
    sys.exit(0)
