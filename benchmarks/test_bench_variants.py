"""pytest-benchmark suite for `workbench bench`: the variants on the bundled scenarios.

    python -m pytest benchmarks/test_bench_variants.py --benchmark-json=bench.json

Groups are per scenario, so `--benchmark-group-by=group` puts fp32, amp,
accum-4, channels-last and int8-dynamic of one scenario side by side. The
training step is the same ``step(i)`` the workbench harness times; int8
rows time inference (their fp32 reference is the `fp32-inference` row).
Also here: the harness vs ``torch.utils.benchmark.Timer`` on the same step,
the wall time of the default variant matrix on cnn_image, and the rows that
need their own processes, workers, compiler or GPUs (ddp-2, loader-wN,
compile, amp-bf16, dataparallel) through the runner, skips with reasons.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from workbench.bench import Plan, run_bench
from workbench.bench.context import collect
from workbench.bench.steps import accum_step_fn, inference_fn, train_step_fn
from workbench.bench.timing import DEFAULT_PLAN, measure
from workbench.bench.variants.quantize import quantize
from workbench.bench.variants.training import has_conv2d
from workbench.scenario import Scenario, ScenarioSource, discover

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
SOURCES = discover(SCENARIOS)
VARIANTS = ["fp32", "amp", "accum-4", "channels-last", "fp32-inference", "int8-dynamic"]
ROUNDS, WARMUP = 10, 2


def _step(source: ScenarioSource, variant: str) -> Callable[[int], object]:
    scenario: Scenario = source.build("cpu")
    torch.manual_seed(scenario.seed)
    batches = list(collect(scenario, 8)[0])
    evals = list(collect(scenario, 8)[1])
    if variant == "fp32":
        return train_step_fn(scenario, batches)
    if variant == "amp":
        return train_step_fn(scenario, batches, autocast=torch.bfloat16)
    if variant == "accum-4":
        return accum_step_fn(scenario, batches, 4)
    if variant == "channels-last":
        if not ("cnn" in scenario.tags or has_conv2d(scenario.model)):
            pytest.skip("channels-last: not a CNN scenario")
        scenario.model.to(memory_format=torch.channels_last)
        nhwc = [type(b)(tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                              for t in b.inputs), b.targets) for b in batches]
        return train_step_fn(scenario, nhwc)
    if variant == "fp32-inference":
        return inference_fn(scenario, scenario.model.eval(), evals)
    if variant == "int8-dynamic":
        return inference_fn(scenario, quantize(scenario.model), evals)
    raise AssertionError(variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("source", SOURCES, ids=[s.label for s in SOURCES])
def test_variant_step(benchmark, source: ScenarioSource, variant: str) -> None:
    step = _step(source, variant)
    counter = iter(range(10**9))
    benchmark.group = source.label
    benchmark.name = variant
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(lambda: step(next(counter)), rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)


def test_harness_agrees_with_torch_utils_benchmark(benchmark) -> None:
    """The harness's fp32 median vs torch.utils.benchmark.Timer on the same step and threads.

    Interleaved rounds so a busy neighbour hurts both alike; the ratio goes
    into the benchmark JSON (extra_info) and must be within ±10 %.
    """
    from torch.utils.benchmark import Timer

    source = next(s for s in SOURCES if s.label == "cnn_image")
    step = _step(source, "fp32")
    counter = iter(range(10**9))
    ours, theirs = [], []

    def one_round() -> None:
        t = measure(lambda i: step(next(counter)), Plan(warmup=1, steps=5), torch.device("cpu"))
        ours.append(t.median)
        timer = Timer("step(next(counter))", globals={"step": step, "counter": counter},
                      num_threads=torch.get_num_threads())
        theirs.append(timer.timeit(5).median)

    benchmark.pedantic(one_round, rounds=7, iterations=1)
    ratio = statistics.median(ours) / statistics.median(theirs)
    benchmark.extra_info.update(harness_median_s=statistics.median(ours),
                                timer_median_s=statistics.median(theirs), ratio=ratio,
                                threads=torch.get_num_threads(), load_avg_1m=_load())
    print(f"\nharness / torch.utils.benchmark.Timer = {ratio:.3f} "
          f"({statistics.median(ours) * 1e3:.1f} ms vs {statistics.median(theirs) * 1e3:.1f} ms)")
    assert 0.9 <= ratio <= 1.1, f"harness/Timer ratio {ratio:.3f} outside ±10 %"


def test_default_matrix_on_cnn_image(benchmark) -> None:
    """Wall time of `workbench bench scenarios/cnn_image.py` (default matrix and time budget); target ≤ 60 s."""
    source = next(s for s in SOURCES if s.label == "cnn_image")
    runs = []

    def once() -> None:
        t0 = time.perf_counter()
        runs.append((run_bench(source, None, plan=DEFAULT_PLAN), time.perf_counter() - t0))

    benchmark.pedantic(once, rounds=1, iterations=1)
    run, wall = runs[0]
    benchmark.extra_info["wall_s"] = wall
    benchmark.extra_info["rows"] = {r.name: (r.timing.median if r.timing else r.status) for r in run.results}
    benchmark.extra_info["cut_short"] = [r.name for r in run.results if r.timing and r.timing.cut_short]
    benchmark.extra_info["load_avg_1m"] = _load()
    print(f"\ndefault matrix on cnn_image: {wall:.1f} s (1-min load average {_load()})")
    assert not [r for r in run.results if r.status == "failed"], [r.reason for r in run.results]


def _load() -> float | None:
    """The 1-minute load average: a figure measured on a shared machine needs it next to it."""
    import os

    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# Rows that cannot be a single in-process step closure: spawned DDP ranks, DataLoader
# workers, torch.compile (compile time reported apart), and the CUDA-only rows, which
# skip on a CPU machine with their reason recorded rather than vanish from the suite.
ROW_VARIANTS = ["fp32", "ddp-2", "loader-w0", "loader-w2", "compile", "amp-bf16", "dataparallel"]


def test_rows_with_processes_workers_compile_or_gpus(benchmark) -> None:
    """The rest of the variant registry, through the same runner as `workbench bench`."""
    source = next(s for s in SOURCES if s.label == "mlp_digits")
    runs = []

    def once() -> None:
        runs.append(run_bench(source, ROW_VARIANTS, plan=Plan(warmup=2, steps=12)))

    benchmark.pedantic(once, rounds=1, iterations=1)
    (run,) = runs
    rows = {}
    for r in run.results:
        rows[r.name] = {"status": r.status, "reason": r.reason,
                        "median_ms": r.timing.median * 1e3 if r.timing else None, "speedup": r.speedup}
    benchmark.extra_info.update(rows=rows, load_avg_1m=_load())
    print("\n" + "\n".join(
        f"{name:<13} {row['status']:<8} "
        + (f"{row['median_ms']:8.2f} ms  {row['speedup']:.2f}x" if row["median_ms"] is not None and row["speedup"]
           else row["reason"])
        for name, row in rows.items()))
    failed = {n: r["reason"] for n, r in rows.items() if r["status"] == "failed"}
    assert not failed, failed
    assert rows["fp32"]["status"] == "ok" and rows["ddp-2"]["status"] == "ok"
