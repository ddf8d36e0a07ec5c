"""workbench bench: variants, harness, results JSON, compare, CLI (CPU, tiny scenario)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from workbench.bench import Plan, run_bench
from workbench.bench.compare import compare_runs
from workbench.bench.context import BenchContext, collect
from workbench.bench.hardware import detect
from workbench.bench.results import (
    BenchFileError, BenchRun, Timing, VariantResult, from_dict, load_run, save_run, to_dict,
)
from workbench.bench.steps import accumulated_gradients
from workbench.bench.variants import DEFAULT, Variant, resolve
from workbench.cli import main
from workbench.errors import UsageError
from workbench.scenario import load_source

# A tiny classifier: a Linear/ReLU/Linear MLP, 8 batches of 16, no dropout.
TINY = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from workbench import Scenario

def build(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4)).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 12, generator=g)
    y = (x[:, :4].argmax(1))
    return Scenario(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        loss_fn=nn.CrossEntropyLoss(),
        data=DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(2)),
        eval_data=DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16),
        name="tiny",
    )
'''

# The same shape of problem as a 2-conv CNN (for channels-last and int8's Conv2d report).
TINY_CNN = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from workbench import Scenario

def build(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3)).to(device)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    return Scenario(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                    loss_fn=nn.CrossEntropyLoss(),
                    data=DataLoader(TensorDataset(x, y), batch_size=8), name="tiny-cnn", tags=("cnn",))
'''

PLAN = Plan(warmup=1, steps=3)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    return path


@pytest.fixture
def tiny_cnn(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_cnn.py"
    path.write_text(TINY_CNN)
    return path


def _bench(path: Path, names: list[str], plan: Plan = PLAN) -> BenchRun:
    return run_bench(load_source(str(path)), names, plan=plan)


# -- variants -------------------------------------------------------------------------


@pytest.mark.slow
def test_training_variants_run_and_score_against_fp32(tiny: Path) -> None:
    run = _bench(tiny, ["fp32", "amp", "accum-2", "accum-4"])
    assert [r.name for r in run.results] == ["fp32", "amp", "accum-2", "accum-4"]
    base = run.get("fp32")
    assert base is not None and base.ok and base.speedup == pytest.approx(1.0)
    for r in run.results:
        assert r.ok, r.reason
        assert r.timing is not None and len(r.timing.samples) == PLAN.steps
        assert r.timing.throughput == pytest.approx(16 / r.timing.median)
        assert r.final_loss is not None and math.isfinite(r.final_loss)
        assert r.memory_method
    # Accumulation at the same effective batch follows fp32's trajectory up to rounding.
    assert run.get("accum-4").final_loss == pytest.approx(base.final_loss, rel=1e-4)
    # bf16 autocast really changes the arithmetic, but not the outcome of 4 steps much.
    assert run.get("amp").extras["autocast_dtype"] == "bfloat16"
    assert run.get("amp").final_loss == pytest.approx(base.final_loss, rel=0.05)


@pytest.mark.slow
def test_accumulation_gives_the_full_batch_gradient(scenarios_dir: Path) -> None:
    source = load_source(str(scenarios_dir / "mlp_digits.py"))  # no dropout, no batchnorm
    scenario = source.build("cpu")
    batch = collect(scenario, 1)[0][0]
    scenario.optimizer.zero_grad(set_to_none=True)
    scenario.loss_fn(scenario.call_model(batch.inputs), batch.targets).backward()
    full = [p.grad.clone() for p in scenario.model.parameters()]
    for k in (2, 4, 5):  # 5 does not divide 64: uneven micro-batches are weighted by size
        accum = accumulated_gradients(scenario, batch, k)
        assert len(accum) == len(full)
        for a, f in zip(accum, full):
            torch.testing.assert_close(a, f, rtol=1e-5, atol=1e-6)


def test_dataparallel_is_skipped_without_two_gpus(tiny: Path) -> None:
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has ≥2 GPUs: the row runs")
    row = _bench(tiny, ["dataparallel"]).get("dataparallel")
    assert row.status == "skipped"
    assert row.reason == f"needs ≥2 CUDA devices, found {torch.cuda.device_count()}"
    assert row.timing is None  # the bare module was never timed under that name


def test_int8_dynamic_reports_layers_error_and_agreement(tiny_cnn: Path) -> None:
    row = _bench(tiny_cnn, ["int8-dynamic"]).get("int8-dynamic")
    assert row.ok, row.reason
    e = row.extras
    assert e["quantized_layers"] == ["3 (Linear→int8)"]
    assert e["float_layers"] == ["0 (Conv2d)"]  # quantize_dynamic leaves Conv2d float
    assert "quantize_dynamic" in e["api"]
    assert 0 <= e["max_abs_error"] < 0.5
    assert 0.5 <= e["argmax_agreement"] <= 1.0
    assert e["size_ratio"] > 1.0
    assert row.speedup_basis == "fp32 inference" and row.reference is not None
    assert row.speedup == pytest.approx(row.reference.median / row.timing.median)


def test_int8_skips_a_model_with_nothing_to_quantize(tmp_path: Path) -> None:
    path = tmp_path / "conv_only.py"
    path.write_text(TINY_CNN.replace("nn.Flatten(), nn.Linear(8 * 6 * 6, 3)", "nn.AdaptiveAvgPool2d(1), nn.Flatten()"))
    row = _bench(path, ["int8-dynamic"]).get("int8-dynamic")
    assert row.status == "skipped" and "no Linear/LSTM/GRU" in row.reason


def test_channels_last_only_for_cnns(tiny: Path, tiny_cnn: Path) -> None:
    assert _bench(tiny, ["channels-last"]).get("channels-last").status == "skipped"
    row = _bench(tiny_cnn, ["channels-last"]).get("channels-last")
    assert row.ok, row.reason
    base = _bench(tiny_cnn, ["fp32"]).get("fp32")
    assert row.final_loss == pytest.approx(base.final_loss, rel=1e-4)


@pytest.mark.slow
def test_dataloader_rows_same_batches_and_workers_shut_down(tiny: Path) -> None:
    import multiprocessing

    run = _bench(tiny, ["fp32", "dataloader"])
    w0, w2, pin = run.get("loader-w0"), run.get("loader-w2"), run.get("loader-w2-pin")
    assert w0.ok and w2.ok, (w0.reason, w2.reason)
    assert pin.status == "skipped" and "pin_memory" in pin.reason
    # Same sampler seed: the loader rows train on the very batches fp32 used.
    assert w0.final_loss == pytest.approx(run.get("fp32").final_loss, rel=1e-5)
    assert w2.final_loss == pytest.approx(w0.final_loss, rel=1e-6)
    assert w2.extras["workers_left"] == 0 and not multiprocessing.active_children()
    assert len(w2.extras["pipeline_samples"]) == PLAN.steps and w2.extras["pipeline_samples_per_s"] > 0


def test_amp_bf16_row_is_cuda_only(tiny: Path) -> None:
    row = _bench(tiny, ["amp-bf16"]).get("amp-bf16")
    assert row.status == "skipped" and "CUDA" in row.reason


@pytest.mark.slow
def test_compile_reports_compile_time(tiny: Path) -> None:
    row = _bench(tiny, ["compile"], Plan(warmup=1, steps=2)).get("compile")
    if row.status == "failed":
        pytest.fail(f"torch.compile failed here: {row.reason}")
    assert row.extras["compile_s"] >= 0 and row.extras["first_step_s"] > row.timing.median
    base_loss = _bench(tiny, ["fp32"], Plan(warmup=1, steps=2)).get("fp32").final_loss
    assert row.final_loss == pytest.approx(base_loss, rel=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_on_cuda_uses_fp16_and_grad_scaler(tiny: Path) -> None:
    run = run_bench(load_source(str(tiny)), ["fp32", "amp", "amp-bf16"], device="cuda", plan=PLAN)
    amp = run.get("amp")
    assert amp.ok, amp.reason
    assert amp.extras["autocast_dtype"] == "float16"
    assert amp.extras["gradscaler_skipped_steps"] is not None
    assert amp.memory_method == "CUDA max allocated"


# -- the runner ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Boom(Variant):
    name: str = "boom"

    def run(self, ctx: BenchContext) -> VariantResult:
        raise RuntimeError("kaboom in the step")


def test_a_variant_that_raises_keeps_the_other_rows(tiny: Path) -> None:
    run = run_bench(load_source(str(tiny)), [*resolve(["fp32"]), Boom(), *resolve(["accum-2"])[1:]], plan=PLAN)
    assert [(r.name, r.status) for r in run.results] == [("fp32", "ok"), ("boom", "failed"), ("accum-2", "ok")]
    # The line it raised from, outside the workbench: here this test file's Boom.run.
    assert run.get("boom").reason.startswith(f"RuntimeError: kaboom in the step ({__file__}:")
    assert run.get("boom").reason.endswith(" in run)")


def test_registry_names_aliases_and_baseline_first() -> None:
    names = [v.name for v in resolve(["ddp-3", "amp", "dataloader", "amp"])]
    assert names == ["fp32", "ddp-3", "amp", "loader-w0", "loader-w2", "loader-w2-pin"]
    assert "compile" not in DEFAULT
    assert "compile" in [v.name for v in resolve(["all"])]
    with pytest.raises(UsageError) as err:
        resolve(["fp32", "fp16"])
    assert "'fp16'" in str(err.value) and "accum-K" in str(err.value) and "ddp-N" in str(err.value)
    with pytest.raises(UsageError):
        resolve(["accum-0"])


def test_thread_count_is_fixed_reported_and_restored(tiny: Path) -> None:
    before = torch.get_num_threads()
    run = run_bench(load_source(str(tiny)), ["fp32"], plan=PLAN, threads=1)
    assert run.settings.threads == 1
    assert torch.get_num_threads() == before


def test_timing_statistics() -> None:
    t = Timing((0.010, 0.011, 0.012, 0.030), samples_per_step=32)
    assert t.median == pytest.approx(0.0115)
    assert t.min == 0.010
    assert t.iqr == pytest.approx(0.0165 - 0.01075)  # inclusive quartiles, like numpy
    assert t.noisy  # IQR is 50 % of the median
    assert t.throughput == pytest.approx(32 / 0.0115)
    assert not Timing((0.01, 0.01, 0.0101)).noisy


# -- JSON and compare -----------------------------------------------------------------


def test_json_round_trip_keeps_every_sample(tiny: Path, tmp_path: Path) -> None:
    run = _bench(tiny, ["fp32", "accum-2", "int8-dynamic", "dataparallel"])
    path = save_run(tmp_path / "run.json", run)
    data = json.loads(path.read_text())
    assert data["format"] == "torch-workbench-bench"
    assert data["results"][0]["timing"]["samples"] == list(run.results[0].timing.samples)
    assert load_run(path) == run
    assert from_dict(to_dict(run)) == run


def _scaled(run: BenchRun, name: str | None, factor: float) -> BenchRun:
    rows = []
    for r in run.results:
        if (name is None or r.name == name) and r.timing:
            r = dataclasses.replace(r, timing=dataclasses.replace(
                r.timing, samples=tuple(s * factor for s in r.timing.samples)))
        rows.append(r)
    return dataclasses.replace(run, results=tuple(rows))


def _steady(run: BenchRun) -> BenchRun:
    """Every timed row with the same 8 steady samples (10.0-10.7 ms): a real run's few, noisy
    samples could not show a 25 % change as significant, and these tests are about the rule."""
    samples = tuple(0.010 + 0.0001 * i for i in range(8))
    return dataclasses.replace(run, results=tuple(
        dataclasses.replace(r, timing=dataclasses.replace(r.timing, samples=samples)) if r.timing else r
        for r in run.results))


def test_compare_flags_slowdowns_past_the_threshold(tiny: Path) -> None:
    run = _steady(_bench(tiny, ["fp32", "accum-2"]))
    same = compare_runs(run, run)
    assert not same.regressions and {c.verdict for c in same.changes} == {"same"}
    slower = compare_runs(run, _scaled(run, "accum-2", 1.25), threshold=0.10)
    assert [c.name for c in slower.regressions] == ["accum-2"]
    assert slower.regressions[0].change == pytest.approx(0.25)
    assert not compare_runs(run, _scaled(run, "accum-2", 1.25), threshold=0.30).regressions
    failed = dataclasses.replace(run, results=(run.results[0], VariantResult("accum-2", "failed", reason="x")))
    assert [c.verdict for c in compare_runs(run, failed).changes] == ["same", "regressed"]


def test_cli_compare_refuses_two_scenarios(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _steady(_bench(tiny, ["fp32"]))
    old, other = tmp_path / "old.json", tmp_path / "other.json"
    save_run(old, run)
    save_run(other, dataclasses.replace(run, scenario="another-model"))
    assert main(["bench", "--compare", str(old), str(other)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{old} benchmarks scenario {run.scenario!r} and {other} benchmarks 'another-model'" in err


def test_cli_compare_exit_codes(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _steady(_bench(tiny, ["fp32", "accum-2"]))
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    save_run(old, run)
    save_run(new, _scaled(run, "fp32", 1.5))
    assert main(["bench", "--compare", str(old), str(old)]) == 0
    assert main(["bench", "--compare", str(old), str(new)]) == 1
    assert "slower" in capsys.readouterr().out
    assert main(["bench", "--compare", str(old), str(new), "--threshold", "60"]) == 0

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(old.read_text()[:200])
    assert main(["bench", "--compare", str(old), str(corrupt)]) == 2
    assert "corrupt.json:" in capsys.readouterr().err
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"benchmarks": []}))
    assert main(["bench", "--compare", str(foreign), str(old)]) == 2
    assert "not a workbench bench result" in capsys.readouterr().err
    assert main(["bench", "--compare", str(tmp_path / "missing.json"), str(old)]) == 2
    with pytest.raises(BenchFileError):
        load_run(foreign)


def test_cli_bench_writes_json_and_rejects_bad_input(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one table line per row
    out = tmp_path / "b.json"
    code = main(["bench", str(tiny), "--variants", "fp32,accum-2,dataparallel", "--steps", "2",
                 "--warmup", "1", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "hardware" in captured.out and "accum-2" in captured.out
    assert "needs ≥2 CUDA devices" in captured.out
    assert [r.name for r in load_run(out).results] == ["fp32", "accum-2", "dataparallel"]

    assert main(["bench", str(tiny), "--variants", "fp32,turbo"]) == 2
    err = capsys.readouterr().err
    assert "unknown variant 'turbo'" in err and "int8-dynamic" in err
    assert main(["bench", str(tiny), "--steps", "0"]) == 2
    assert main(["bench"]) == 2
    assert main(["bench", str(tiny), "--json", str(tmp_path)]) == 2  # a directory: refused before work
    assert "is a directory" in capsys.readouterr().err


def test_cli_exit_1_when_a_row_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad_int8.py"
    # A forward that breaks only for the quantized copy: the int8 row fails, fp32 survives.
    path.write_text(TINY + '''
def _forward(model, inputs):
    if any(".quantized." in type(m).__module__ for m in model.modules()):
        raise ValueError("this model refuses int8")
    return model(*inputs)

def build_fragile(device):
    s = build(device)
    s.forward = _forward
    return s
''')
    code = main(["bench", f"{path}:build_fragile", "--variants", "fp32,int8-dynamic", "--steps", "2",
                 "--warmup", "1"])
    out = capsys.readouterr().out
    assert code == 1
    assert "ValueError: this model refuses int8" in out


def test_cli_exit_2_with_the_traceback_when_every_row_fails(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "always_raises.py"
    path.write_text(TINY + '''
def _forward(model, inputs):
    raise RuntimeError("this scenario never trains")

def build_broken(device):
    s = build(device)
    s.forward = _forward
    return s
''')
    report = tmp_path / "bench.json"
    code = main(["bench", f"{path}:build_broken", "--variants", "fp32,accum-2", "--steps", "2", "--warmup", "1",
                 "--json", str(report)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "every row failed, so the scenario does not train here" in err
    assert "RuntimeError: this scenario never trains" in err and f"traceback in {report}" in err
    rows = json.loads(report.read_text())["results"]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    tb = rows[0]["extras"]["traceback"]
    assert tb.startswith("Traceback") and f'File "{path}", line' in tb and "never trains" in tb


def test_report_renders_every_status(tiny: Path) -> None:
    from rich.console import Console

    from workbench.report.bench import render_run

    run = _bench(tiny, ["fp32", "int8-dynamic", "dataparallel"])
    run = dataclasses.replace(run, results=(*run.results, VariantResult("boom", "failed", reason="RuntimeError: x")))
    console = Console(width=160, record=True)
    console.print(render_run(run))
    text = console.export_text()
    for needle in ("fp32", "1.00×", "vs fp32 inference", "skipped: needs ≥2 CUDA", "failed: RuntimeError: x",
                   detect().cpu, "torch threads"):
        assert needle in text


@pytest.mark.slow  # one fresh process (a torch import) per row
def test_isolate_memory_measures_each_row_in_a_fresh_process(tiny: Path) -> None:
    run = run_bench(load_source(str(tiny)), ["fp32", "loader-w2"], plan=Plan(warmup=1, steps=2),
                    isolate_memory=True)
    for row in run.results:
        assert row.ok, row.reason
        assert row.memory_method.startswith("peak RSS of an isolated process"), row.memory_method
        start = row.extras["isolated_start_rss"]
        # The whole process: torch's runtime (tens of MB at least) plus the row's own work.
        assert start > 20 * 2**20 and row.peak_memory > start  # the row's own work on top of the runtime
        assert row.extras["in_process_method"].startswith("RSS high-water rise")
    # loader-w2's isolated process starts DataLoader workers of its own: it must not be daemonic.
    assert not [w for r in run.results for w in r.warnings if "isolated memory run failed" in w]
