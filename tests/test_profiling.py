"""Trace analysis and recommendation rules on crafted inputs (no profiling, no torch work)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from workbench.profiling import advice, intervals
from workbench.profiling.advice import Facts, GpuFacts, recommend
from workbench.profiling.analysis import CATEGORIES, analyze_trace
from workbench.profiling.runs import analyze_path
from workbench.profiling.trace import TraceError, find_runs, load_trace

# -- interval arithmetic -----------------------------------------------------------------


def test_merge_fuses_overlaps_and_drops_empty_spans() -> None:
    assert intervals.merge([(5, 7), (0, 2), (1, 3), (3, 4), (9, 9)]) == [(0, 4), (5, 7)]


def test_intersect_and_subtract_partition_the_time() -> None:
    a = [(0, 10), (20, 30)]
    b = [(5, 25), (28, 40)]
    both = intervals.intersect(a, b)
    rest = intervals.subtract(a, b)
    assert both == [(5, 10), (20, 25), (28, 30)]
    assert rest == [(0, 5), (25, 28)]
    assert intervals.total(both) + intervals.total(rest) == intervals.total(a)


def test_subtract_handles_one_span_covering_many() -> None:
    assert intervals.subtract([(0, 10)], [(1, 2), (3, 4), (9, 12)]) == [(0, 1), (2, 3), (4, 9)]
    assert intervals.subtract([(0, 10)], [(-5, 20)]) == []


# -- a crafted GPU trace -----------------------------------------------------------------
# One step [0, 100) on the host that launches a kernel running until 130, so
# the step stretches to 130; a second step [100, 150) then starts at 130.
# Expected claims in step 1 (priority order):
#   kernel   [20,60) + [98,130)                     = 72
#   memcpy   [60,70)                                = 10
#   runtime  [10,12) + [95,97) ([30,32) is kernel)  = 4
#   dataloader [0,5)                                = 5
#   cpu_exec DataParallel.forward [5,35) and mm [5,15), less kernel [20,35) and
#            runtime [10,12) = 13; conv [94,98)-[95,97) = 2; copy_ is inside the kernel -> 15
#   other    130 - 72 - 10 - 4 - 5 - 15             = 24
# (forward [5,40) is one of our phase ranges: reported per phase, not as CPU exec.)


def _x(cat: str, name: str, ts: float, dur: float, pid: int = 1, tid: int = 1, **args) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": pid, "tid": tid, "args": args}


def _mem(ts: float, allocated: int, device: int = 0) -> dict:
    return {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "ts": ts, "pid": 1, "tid": 1,
            "args": {"Total Allocated": allocated, "Total Reserved": allocated, "Device Type": 1,
                     "Device Id": device, "Bytes": 0}}


GIB = 2**30


def gpu_trace() -> dict:
    events = [
        _x("user_annotation", "ProfilerStep#1", 0, 100),
        _x("user_annotation", "ProfilerStep#2", 100, 50),
        _x("user_annotation", "dataloader", 0, 5),
        _x("user_annotation", "forward", 5, 35),
        _x("user_annotation", "DataParallel.forward", 5, 30),
        _x("cpu_op", "aten::mm", 5, 10, **{"External id": 1, "Input Dims": [[64, 32], [32, 16]]}),
        _x("cuda_runtime", "cudaLaunchKernel", 10, 2, correlation=7, **{"External id": 1}),
        _x("kernel", "volta_sgemm_128x64_nn", 20, 40, pid=0, tid=7, correlation=7, device=0,
           **{"External id": 1}),
        _x("cpu_op", "aten::copy_", 29, 4, **{"External id": 2}),
        _x("cuda_runtime", "cudaMemcpyAsync", 30, 2, correlation=8, **{"External id": 2}),
        _x("gpu_memcpy", "Memcpy HtoD", 60, 10, pid=0, tid=8, correlation=8, device=0),
        _x("cpu_op", "aten::conv2d", 94, 4, **{"External id": 3}),
        _x("cuda_runtime", "cudaLaunchKernel", 95, 2, correlation=9, **{"External id": 3}),
        _x("kernel", "implicit_convolve_sgemm", 98, 32, pid=0, tid=7, correlation=9, device=0,
           **{"External id": 3}),
        _mem(1, 1 * GIB),
        _mem(20, 15 * GIB),
        _mem(120, 2 * GIB),
    ]
    return {
        "deviceProperties": [{"id": 0, "name": "Tesla V100", "totalGlobalMem": 16 * GIB,
                              "computeMajor": 7, "computeMinor": 0}],
        "traceEvents": events,
    }


def test_gpu_breakdown_claims_each_microsecond_once_in_priority_order() -> None:
    a = analyze_trace(gpu_trace())
    first, second = a.steps
    assert (first.start_us, first.duration_us) == (0, 130)
    assert dict(first.categories) == {
        "kernel": 72, "memcpy": 10, "memset": 0, "communication": 0,
        "runtime": 4, "dataloader": 5, "cpu_exec": 15, "other": 24,
    }
    assert [c for c, _ in first.categories] == list(CATEGORIES)
    assert (second.start_us, second.duration_us) == (130, 20)
    assert second.time("other") == 20
    for step in a.steps:
        assert sum(t for _, t in step.categories) == pytest.approx(step.duration_us)


def test_gpu_side_copies_of_the_step_ranges_are_not_more_steps() -> None:
    # Kineto repeats each record_function range on the GPU timeline (gpu_user_annotation),
    # ProfilerStep#N and the phase ranges included, spanning the kernels they launched.
    trace = gpu_trace()
    trace["traceEvents"] += [
        _x("gpu_user_annotation", "ProfilerStep#1", 20, 110, pid=0, tid=7),
        _x("gpu_user_annotation", "ProfilerStep#2", 130, 0.5, pid=0, tid=7),
        _x("gpu_user_annotation", "forward", 20, 50, pid=0, tid=7),
        _x("gpu_user_annotation", "dataloader", 60, 10, pid=0, tid=8),
    ]
    plain, doubled = analyze_trace(gpu_trace()), analyze_trace(trace)
    assert [s.name for s in doubled.steps] == ["ProfilerStep#1", "ProfilerStep#2"]
    assert [dict(s.categories) for s in doubled.steps] == [dict(s.categories) for s in plain.steps]
    assert [s.duration_us for s in doubled.steps] == [130, 20]


def test_gpu_trace_device_time_reaches_the_launching_operator() -> None:
    a = analyze_trace(gpu_trace())
    ops = {o.name: o for o in a.operators}
    assert ops["aten::mm"].self_device_us == 40
    assert ops["aten::mm"].input_shapes == "[64, 32], [32, 16]"
    assert ops["aten::conv2d"].self_device_us == 32
    assert ops["aten::copy_"].self_device_us == 10
    assert a.operators[0].name == "aten::mm"  # heaviest device time first
    phases = {m.name: m for m in a.modules if m.kind == "phase"}
    assert phases["forward"].device_us == 40 + 10  # kernels/copies launched inside forward
    assert a.gpu_utilization == pytest.approx(72 / 150)
    assert a.tc_eligible_kernel_us == 72 and a.tensor_core_kernel_us == 0
    assert [(k.name, k.calls, k.total_us, k.tensor_core) for k in a.kernels] == [
        ("volta_sgemm_128x64_nn", 1, 40, False), ("implicit_convolve_sgemm", 1, 32, False)]


def test_gpu_trace_renders_kernel_table_and_gpu_rows() -> None:
    import io

    from rich.console import Console

    from workbench.report.profile import worker_view

    console = Console(width=140, record=True, file=io.StringIO())
    console.print(worker_view(analyze_trace(gpu_trace())))
    text = console.export_text()
    for expected in ("Kernel", "Memcpy", "Runtime", "self device", "top 2 kernels", "volta_sgemm_128x64_nn",
                     "GPU kernel-busy share: 48.0%", "cuda:0", "93.8% used",
                     "GPU 0: Tesla V100, 16.0 GB, compute capability 7.0"):
        assert expected in text, expected


@pytest.mark.parametrize(("name", "tensor_core"), [
    ("volta_h884gemm_64x64_nt", True),
    ("ampere_tf32_s1688gemm_64x128_sliced1x2_ldg8_f2f_tn", True),
    ("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8", True),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas", True),
    ("volta_sgemm_128x64_nn", False),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", False),
])
def test_tensor_core_kernel_names(name: str, tensor_core: bool) -> None:
    from workbench.profiling.analysis import _is_tensor_core_kernel

    assert _is_tensor_core_kernel(name) is tensor_core


def test_gpu_memory_curve_peak_capacity_and_where() -> None:
    (curve,) = analyze_trace(gpu_trace()).memory
    assert curve.device == "cuda:0"
    assert (curve.start_bytes, curve.peak_bytes, curve.end_bytes) == (GIB, 15 * GIB, 2 * GIB)
    assert curve.capacity_bytes == 16 * GIB
    assert curve.peak_step == "ProfilerStep#1" and curve.peak_phase == "forward"


def test_gpu_trace_fires_the_gpu_rules() -> None:
    rules = {r.rule: r for r in recommend(analyze_trace(gpu_trace()))}
    assert set(rules) == {"dataparallel", "gpu_utilization", "tensor_cores", "memory"}
    assert rules["tensor_cores"].variant == "amp"
    assert rules["memory"].measured == "93.8%"
    assert rules["gpu_utilization"].command("scenarios/cnn_image.py") == (
        "workbench bench scenarios/cnn_image.py --variants compile"
    )


def test_nccl_kernels_count_as_communication_not_kernel() -> None:
    trace = {"traceEvents": [
        _x("user_annotation", "ProfilerStep#0", 0, 100),
        _x("cpu_op", "nccl:all_reduce", 10, 5, **{"External id": 1}),
        _x("cuda_runtime", "cudaLaunchKernel", 11, 1, correlation=1, **{"External id": 1}),
        _x("kernel", "ncclDevKernel_AllReduce_Sum_f32_RING_LL", 20, 30, pid=0, correlation=1),
        _x("user_annotation", "DistributedDataParallel.forward", 0, 10),
    ]}
    a = analyze_trace(trace)
    (step,) = a.steps
    assert step.time("communication") == 30 + 5  # the kernel, and the host op (it outranks runtime)
    assert step.time("kernel") == 0
    assert a.uses_ddp and a.comm_libs == ("nccl",)


def test_trace_without_profiler_steps_is_one_step_with_a_note() -> None:
    a = analyze_trace({"traceEvents": [_x("cpu_op", "aten::add", 0, 10), _x("cpu_op", "aten::mul", 20, 10)]})
    (step,) = a.steps
    assert step.duration_us == 30 and step.time("cpu_exec") == 20 and step.time("other") == 10
    assert "no ProfilerStep" in a.notes[0]


def test_empty_trace_says_so_and_recommends_nothing() -> None:
    a = analyze_trace({"traceEvents": []})
    assert a.steps == () and "nothing to break down" in a.notes[0]
    assert recommend(a) == ()


def test_self_time_subtracts_nested_children() -> None:
    a = analyze_trace({"traceEvents": [
        _x("user_annotation", "ProfilerStep#0", 0, 100),
        _x("cpu_op", "aten::linear", 0, 50),
        _x("cpu_op", "aten::addmm", 10, 30),
        _x("cpu_op", "aten::copy_", 15, 5),
    ]})
    ops = {o.name: o for o in a.operators}
    assert ops["aten::linear"].self_cpu_us == 20 and ops["aten::linear"].total_cpu_us == 50
    assert ops["aten::addmm"].self_cpu_us == 25
    assert ops["aten::copy_"].self_cpu_us == 5


# -- rules on crafted facts: each fires past its threshold and stays silent below --------

V100 = GpuFacts(0, "V100", 7.0, 16 * GIB, None)
K80 = GpuFacts(0, "K80", 3.7, 12 * GIB, None)
P100 = GpuFacts(0, "P100", 6.0, 16 * GIB, None)


@pytest.mark.parametrize(
    ("rule", "fires", "silent", "variant"),
    [
        ("dataloader", Facts(dataloader_share=0.06), Facts(dataloader_share=0.05), "dataloader"),
        ("dataparallel", Facts(uses_dataparallel=True, used_devices=2), Facts(used_devices=2), "ddp-2"),
        ("ddp_backend", Facts(uses_ddp=True, comm_libs=("gloo",), gpus=(K80,)),
         Facts(uses_ddp=True, comm_libs=("nccl",), gpus=(K80,)), "ddp-2"),
        ("communication", Facts(communication_share=0.11), Facts(communication_share=0.10), "accum-4"),
        ("gpu_utilization", Facts(gpu_utilization=0.49), Facts(gpu_utilization=0.5), "compile"),
        ("tensor_cores", Facts(tensor_core_share=0.0, tc_eligible_share=0.4, gpus=(V100,)),
         Facts(tensor_core_share=0.2, tc_eligible_share=0.4, gpus=(V100,)), "amp"),
        ("memory", Facts(gpus=(GpuFacts(0, "V100", 7.0, 100, 91),)),
         Facts(gpus=(GpuFacts(0, "V100", 7.0, 100, 90),)), "amp"),
        ("host_overhead", Facts(other_share=0.31), Facts(other_share=0.30), "compile"),
    ],
)
def test_rule_fires_past_its_threshold_and_not_at_it(rule: str, fires: Facts, silent: Facts, variant: str) -> None:
    fired = {r.rule: r for r in recommend(fires)}
    assert rule in fired
    assert fired[rule].variant == variant
    assert fired[rule].threshold and fired[rule].measured
    assert rule not in {r.rule for r in recommend(silent)}


def test_rules_stay_silent_where_they_do_not_apply() -> None:
    assert recommend(Facts()) == ()
    # DDP without NCCL on CPU only, or on a GPU too old for NCCL: nothing to advise.
    assert not recommend(Facts(uses_ddp=True, comm_libs=("gloo",)))
    assert not recommend(Facts(uses_ddp=True, gpus=(GpuFacts(0, "old", 3.0, None, None),)))
    # No Tensor Cores on a P100 (compute capability 6.0); no eligible ops; or no kernels at all.
    assert not recommend(Facts(tensor_core_share=0.0, tc_eligible_share=0.5, gpus=(P100,)))
    assert not recommend(Facts(tensor_core_share=0.0, tc_eligible_share=0.0, gpus=(V100,)))
    assert not recommend(Facts(gpus=(V100,)))
    # CPU-only: no utilisation figure; with --stack the Python tracer inflates "Other".
    assert not recommend(Facts(gpu_utilization=None))
    assert not recommend(Facts(other_share=0.9, with_stack=True))
    # Memory without a known capacity is not judged.
    assert not recommend(Facts(gpus=(GpuFacts(0, "x", 7.0, None, 10**12),)))


def test_every_rule_has_its_threshold_stated() -> None:
    assert [name for name, _ in advice.THRESHOLDS] == [r.__name__.removeprefix("rule_") for r in advice.RULES]


def test_engine_findings_are_folded_in_one_per_kind() -> None:
    findings = [
        SimpleNamespace(kind="nan_inf", message="loss is NaN at step 3", severity="error", value=None),
        SimpleNamespace(kind="nan_inf", message="loss is NaN at step 4", severity="error", value=None),
        SimpleNamespace(kind="dead_units", message="fc1: 80% of ReLU units never fire"),
        SimpleNamespace(message="no kind: ignored"),
    ]
    recs = recommend(Facts(), findings)
    assert [r.rule for r in recs] == ["engine:nan_inf", "engine:dead_units"]
    assert "(2 findings of this kind)" in recs[0].message and recs[0].source == "engine"
    assert recs[0].command("s.py") == "workbench bench s.py --variants fp32,amp"
    assert recs[1].variant is None and recs[1].command() is None


def test_engine_findings_become_recommendations() -> None:
    from workbench.engine import records

    finding = records.Finding(step=1, phase=records.Phase.BACKWARD, module="fc1", parameter="fc1.weight",
                              kind=records.EXPLODING_GRADIENT, severity="warning", value=1e6,
                              threshold=1e3, message="fc1.weight gradient norm 1e6")
    (rec,) = recommend(Facts(), [finding])
    assert rec.rule == "engine:exploding_gradient" and rec.variant == "fp32,amp"


# -- reading traces: clear errors --------------------------------------------------------


def test_find_runs_accepts_run_dir_logdir_and_file(tmp_path: Path) -> None:
    run = tmp_path / "logs" / "r1"
    run.mkdir(parents=True)
    f = run / "host_rank0.123.pt.trace.json"
    f.write_text(json.dumps(gpu_trace()))
    (run / "workbench-profile.json").write_text("{}")
    assert list(find_runs(run)) == ["r1"]
    assert find_runs(tmp_path / "logs")["r1"][0].worker == "host_rank0"
    (tf,) = find_runs(f)["r1"]
    assert tf.span == "123"


def test_gzip_trace_loads(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    with gzip.open(run / "w_rank0.1.pt.trace.json.gz", "wt") as fh:
        json.dump(gpu_trace(), fh)
    result = analyze_path(run)
    assert len(result.workers) == 1 and result.workers[0].steps


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda p: p / "missing", "no such file or directory"),
        (lambda p: p, "no *.pt.trace.json"),
        (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "not a profiler trace"),
    ],
    ids=["missing", "empty", "wrong-file"],
)
def test_bad_paths_say_what_was_expected(tmp_path: Path, setup, expected: str) -> None:  # noqa: ANN001
    with pytest.raises(TraceError, match=expected.replace("*", r"\*")):
        find_runs(setup(tmp_path))


def test_truncated_or_foreign_json_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "w.1.pt.trace.json"
    bad.write_text('{"traceEvents": [{"ph": "X"')
    with pytest.raises(TraceError, match=r"w\.1\.pt\.trace\.json:1:\d+: not valid JSON.*truncated"):
        load_trace(bad)
    bad.write_text('{"events": []}')
    with pytest.raises(TraceError, match="without a 'traceEvents' list"):
        load_trace(bad)


def test_every_named_variant_is_one_workbench_bench_knows() -> None:
    from workbench.bench import variants

    everything = Facts(
        dataloader_share=0.5, communication_share=0.5, other_share=0.5, uses_dataparallel=True,
        used_devices=2, uses_ddp=True, comm_libs=("gloo",), gpu_utilization=0.1,
        tensor_core_share=0.0, tc_eligible_share=0.5, gpus=(GpuFacts(0, "V100", 7.0, 100, 99),),
    )
    recs = recommend(everything)
    assert len(recs) == len(advice.RULES)  # all of them fire at once
    named = {r.variant for r in recs} | {v for v in advice.ENGINE_VARIANTS.values() if v}
    for name in named:
        assert variants.resolve(name.split(","))  # raises UsageError for an unknown name
