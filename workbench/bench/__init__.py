"""Side-by-side benchmarks of training variants (no UI imports).

    from workbench.bench import run_bench
    run = run_bench(load_source("scenarios/cnn_image.py"), ["fp32", "amp", "ddp-2"])

Results are frozen dataclasses (:mod:`workbench.bench.results`); rich
formatting lives in :mod:`workbench.report.bench`.
"""

from __future__ import annotations

from workbench.bench.results import BenchFileError, BenchRun, Timing, VariantResult, load_run, save_run
from workbench.bench.runner import BenchProgress, run_bench
from workbench.bench.timing import Plan

__all__ = ["run_bench", "BenchRun", "BenchProgress", "VariantResult", "Timing", "Plan", "load_run",
           "save_run", "BenchFileError"]
