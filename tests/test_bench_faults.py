"""workbench bench under faults and time pressure: out of memory, the time budget, the CLI flags.

Out of memory is simulated on CPU by a forward that raises torch.OutOfMemoryError
(what torch.cuda.OutOfMemoryError is) for some batches only; a CUDA test makes
a real one where a GPU exists.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.test_bench import TINY
from workbench.bench import Plan, run_bench
from workbench.bench.context import BenchContext, collect
from workbench.bench.hardware import detect
from workbench.bench.results import VariantResult, load_run
from workbench.bench.runner import format_traceback, run_one
from workbench.bench.timing import BenchStepError, describe_failure, measure, where_failed
from workbench.bench.variants import Variant
from workbench.bench.variants.base import fp32_loss_after
from workbench.cli import main
from workbench.scenario import load_source

FAULTS = TINY + '''
import time

def _with_forward(forward):
    def build_with(device):
        s = build(device)
        s.forward = forward
        return s
    return build_with

def _oom_above_8(model, inputs):
    # Like a GPU that fits the activations of 8 samples: training on the full batch
    # fails, accumulation's micro-batches fit, and so does scoring under no_grad.
    if torch.is_grad_enabled() and inputs[0].shape[0] > 8:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return model(*inputs)

def _oom_under_autocast(model, inputs):
    if torch.is_autocast_enabled("cpu"):
        raise torch.OutOfMemoryError("CPU out of memory under autocast")
    return model(*inputs)

def _slow_under_autocast(model, inputs):
    if torch.is_autocast_enabled("cpu"):
        time.sleep(0.3)  # like bf16 emulated on a CPU without it
    return model(*inputs)

build_oom_above_8 = _with_forward(_oom_above_8)
build_oom_under_autocast = _with_forward(_oom_under_autocast)
build_slow_amp = _with_forward(_slow_under_autocast)
'''

PLAN = Plan(warmup=1, steps=3)


@pytest.fixture
def faults(tmp_path: Path) -> Path:
    path = tmp_path / "faults.py"
    path.write_text(FAULTS)
    return path


# -- out of memory --------------------------------------------------------------------------


def test_oom_marks_the_row_with_batch_and_micro_batch_and_the_rest_finish(faults: Path) -> None:
    run = run_bench(load_source(f"{faults}:build_oom_above_8"), ["fp32", "accum-2", "accum-4", "amp"], plan=PLAN)
    fp32, amp = run.get("fp32"), run.get("amp")
    assert fp32.status == "failed" and fp32.extras["oom"] is True
    assert fp32.reason == ("out of memory at step 0 (warm-up), batch size 16: "
                           "CUDA out of memory. Tried to allocate 2.00 GiB")
    assert amp.status == "failed" and amp.reason.startswith("out of memory at step 0 (warm-up), batch size 16")
    # Accumulation over micro-batches of 8 and 4 fits: those rows finish.
    for name in ("accum-2", "accum-4"):
        row = run.get(name)
        assert row.ok, row.reason
        assert row.speedup is None and row.baseline_loss is None  # no fp32 row to compare with


def test_oom_only_under_autocast_fails_amp_alone(faults: Path) -> None:
    run = run_bench(load_source(f"{faults}:build_oom_under_autocast"), ["fp32", "amp", "accum-2"], plan=PLAN)
    assert [(r.name, r.status) for r in run.results] == [("fp32", "ok"), ("amp", "failed"), ("accum-2", "ok")]
    assert run.get("amp").reason == ("out of memory at step 0 (warm-up), batch size 16: "
                                     "CPU out of memory under autocast")
    assert run.get("accum-2").speedup is not None


@dataclasses.dataclass(frozen=True)
class _OOMInStep(Variant):
    """Raises OOM from inside a timed step, at step 2 of the plan."""

    name: str = "oom-step"

    def run(self, ctx: BenchContext) -> VariantResult:
        def step(i: int) -> None:
            if i == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

        measure(step, ctx.plan, torch.device("cpu"))  # CPU clocks: no GPU needed to raise
        raise AssertionError("unreachable")


def test_a_failing_timed_step_is_a_step_error_with_its_step_and_the_users_line() -> None:
    """measure() raises the engine's TrainingStepError (a StepError without a phase: the step runs
    as one piece): the step, warm-up or not, the user's frame; a row's reason, a DDP rank's line
    and the JSON traceback still word the user's own error."""
    from workbench.engine.errors import StepError, TrainingStepError

    def step(i: int) -> None:
        if i == 2:
            raise ValueError("bad batch\nsecond line")

    with pytest.raises(BenchStepError) as info:
        measure(step, PLAN, torch.device("cpu"))
    err = info.value
    assert isinstance(err, TrainingStepError) and not isinstance(err, StepError)
    assert isinstance(err.original, ValueError) and err.stage == "training step"
    assert (err.step, err.warmup, err.phase, err.oom) == (2, False, None, False)
    assert err.user_frame is not None and err.user_frame.startswith(f"{__file__}:")
    assert where_failed(err) == "at step 2" and where_failed(ValueError()) == ""
    assert describe_failure(err) == ("ValueError: bad batch\nsecond line (at step 2)", False)
    tb = format_traceback(err)
    assert "BenchStepError" not in tb and "direct cause" not in tb
    assert tb.index(", in measure") < tb.index(", in _run") < tb.index(", in step") and tb.count(", in _run") == 1
    assert tb.endswith("ValueError: bad batch\nsecond line")


def test_a_measure_inside_a_step_names_its_own_step() -> None:
    """The innermost measure() knows which step failed (a variant that times inside its step)."""

    def inner(i: int) -> None:
        if i == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(BenchStepError) as info:
        measure(lambda i: measure(inner, Plan(warmup=0, steps=2), torch.device("cpu")), PLAN, torch.device("cpu"))
    assert (info.value.step, info.value.warmup, info.value.oom) == (1, False, True)
    assert describe_failure(info.value) == ("torch.OutOfMemoryError: CUDA out of memory (at step 1)", True)


def test_oom_on_cuda_empties_the_cache_and_resets_the_peak(
    faults: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner's CUDA clean-up path, run without a GPU: the row is built on
    # CPU batches but the context says "cuda", and torch.cuda's calls are recorded.
    source = load_source(f"{faults}:build_oom_above_8")
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: calls.append(f"reset_peak_memory_stats({device})"))
    probe = source.build("cpu")
    ctx = BenchContext(source, torch.device("cuda"), PLAN, collect(probe, 1)[0], (), detect())
    row = run_one(_OOMInStep(), ctx, probe)
    assert row.status == "failed" and row.extras["oom"]
    assert row.reason == ("out of memory at step 2, batch size 16: "
                          "CUDA out of memory. Tried to allocate 1.00 GiB")
    assert calls == ["empty_cache", "reset_peak_memory_stats(cuda)"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a real out-of-memory error")
def test_real_cuda_oom_row_then_the_next_row_runs(tmp_path: Path) -> None:
    path = tmp_path / "cuda_oom.py"
    path.write_text(TINY + '''
def _huge(model, inputs):
    if inputs[0].shape[0] > 8:  # far more than any GPU holds
        torch.empty(1 << 50, dtype=torch.uint8, device=inputs[0].device)
    return model(*inputs)

def build_huge(device):
    s = build(device)
    s.forward = _huge
    return s
''')
    run = run_bench(load_source(f"{path}:build_huge"), ["fp32", "accum-2"], device="cuda", plan=PLAN)
    assert run.get("fp32").status == "failed" and run.get("fp32").extras["oom"]
    assert run.get("fp32").reason.startswith("out of memory at step 0 (warm-up), batch size 16")
    accum = run.get("accum-2")
    assert accum.ok, accum.reason
    assert accum.memory_method == "CUDA max allocated" and accum.peak_memory < 1 << 30


# -- the time budget ------------------------------------------------------------------------


def test_budget_cuts_a_slow_row_and_scores_it_against_fp32_at_the_same_steps(faults: Path) -> None:
    source = load_source(f"{faults}:build_slow_amp")
    plan = Plan(warmup=1, steps=20, budget_s=0.6, min_samples=3)
    # One thread: on a busy 2-core machine two OpenMP threads wait for each other
    # (measured: this 1 ms step took 75 ms at load 4), which would spend fp32's budget.
    run = run_bench(source, ["fp32", "amp", "accum-2"], plan=plan, threads=1)
    fp32, amp, accum = run.get("fp32"), run.get("amp"), run.get("accum-2")
    assert fp32.ok and amp.ok and accum.ok
    assert run.settings.budget_s == 0.6 and run.settings.min_samples == 3
    # amp sleeps 0.3 s a step: the budget stops it at the third sample; fp32 (~1 ms) runs all 20.
    assert amp.timing.cut_short and amp.timing.timed_steps == 3 == len(amp.timing.samples)
    assert amp.timing.planned_steps == 20 and amp.steps_trained == 4
    assert not fp32.timing.cut_short and fp32.steps_trained == 21
    # amp's loss is compared with fp32 after 4 steps, not after fp32's 21.
    # (fp32_loss_after itself is checked against a real fp32 row below.)
    probe = source.build("cpu")
    batches, evals = collect(probe, plan.total)
    ctx = BenchContext(source, torch.device("cpu"), plan, batches, evals, run.hardware)
    assert amp.baseline_loss == pytest.approx(fp32_loss_after(ctx, 4), rel=1e-6)
    assert amp.baseline_loss != pytest.approx(fp32.final_loss, rel=1e-3)
    assert accum.baseline_loss == fp32.final_loss  # same step count: fp32's own loss

    from rich.console import Console

    from workbench.report.bench import render_run

    for width in (80, 200):  # notes under the table, then in it
        console = Console(width=width, record=True)
        console.print(render_run(run))
        text = " ".join(console.export_text().split())
        assert "timed 3/20 steps (0.6 s budget)" in text
        assert "loss vs fp32 after 4 steps" in text
        assert "timing stops after 0.6 s once 3 are in" in text


def test_without_a_budget_every_planned_step_is_timed(faults: Path) -> None:
    run = run_bench(load_source(f"{faults}:build_slow_amp"), ["fp32", "amp"], plan=Plan(warmup=1, steps=4))
    amp = run.get("amp")
    assert amp.timing.timed_steps == 4 and not amp.timing.cut_short
    assert amp.baseline_loss == run.get("fp32").final_loss


def test_fp32_loss_after_matches_an_fp32_row(faults: Path) -> None:
    source = load_source(str(faults))
    run = run_bench(source, ["fp32"], plan=PLAN)
    probe = source.build("cpu")
    batches, evals = collect(probe, PLAN.total)
    ctx = BenchContext(source, torch.device("cpu"), PLAN, batches, evals, run.hardware)
    assert fp32_loss_after(ctx, PLAN.total) == pytest.approx(run.get("fp32").final_loss, rel=1e-6)


def test_load_average_is_recorded_and_a_busy_machine_is_flagged(faults: Path) -> None:
    from rich.console import Console

    from workbench.bench.results import from_dict, to_dict
    from workbench.report.bench import render_run

    run = run_bench(load_source(str(faults)), ["fp32"], plan=PLAN)
    assert run.load is not None and all(x >= 0 for x in run.load)
    cores = run.hardware.cores
    busy = dataclasses.replace(run, load=(cores + 1.5, cores + 2.25))
    assert from_dict(json.loads(json.dumps(to_dict(busy)))) == busy
    console = Console(width=200, record=True)
    console.print(render_run(busy))
    text = console.export_text()
    assert f"load average {cores + 1.5:.2f} → {cores + 2.25:.2f}" in text
    assert f"load average up to {cores + 2.25:.1f} on {cores} cores" in text


# -- CLI ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_steps_overrides_the_budget_and_oom_exits_1(
    faults: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.json"
    assert main(["bench", str(faults), "--variants", "fp32", "--warmup", "1", "--budget", "0.05",
                 "--json", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert settings["budget_s"] == 0.05 and settings["steps"] == 15
    assert main(["bench", str(faults), "--variants", "fp32", "--warmup", "1", "--steps", "2",
                 "--json", str(out)]) == 0
    run = load_run(out)
    assert run.settings.budget_s is None and run.get("fp32").timing.timed_steps == 2
    capsys.readouterr()

    assert main(["bench", str(faults), "--steps", "2", "--budget", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["bench", str(faults), "--budget", "0"]) == 2
    assert "--budget 0" in capsys.readouterr().err

    code = main(["bench", f"{faults}:build_oom_above_8", "--variants", "fp32,accum-2", "--steps", "2",
                 "--warmup", "1"])
    assert code == 1
    assert "out of memory at step 0 (warm-up), batch size 16" in capsys.readouterr().out


# -- interrupts -----------------------------------------------------------------------------

SLOW_DATA = TINY.replace("from workbench import Scenario", '''from workbench import Scenario
import time


class SlowData(TensorDataset):
    def __getitem__(self, i):
        time.sleep(0.005)  # an input pipeline that needs its workers
        return super().__getitem__(i)
''').replace("data=DataLoader(TensorDataset(x, y)", "data=DataLoader(SlowData(x, y)")


@pytest.mark.slow  # a real CLI process, signalled while its DataLoader workers run
def test_sigterm_during_a_loader_row_stops_its_workers_and_keeps_fp32(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    scenario, report = tmp_path / "slow_data.py", tmp_path / "bench.json"
    scenario.write_text(SLOW_DATA)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "bench", str(scenario), "--variants", "loader-w2", "--steps", "400",
         "--warmup", "1", "--json", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, COLUMNS="120"),
    )
    workers: list[psutil.Process] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "resource_tracker" not in " ".join(c.cmdline())]
    assert len(workers) >= 2, "the loader-w2 row never started its workers"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in out
    data = json.loads(report.read_text())
    assert data["interrupted"] is True and [r["name"] for r in data["results"]] == ["fp32"]
    psutil.wait_procs(workers, timeout=10)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*bench.json*"))


LEAKS = '''
import torch
from torch import nn
from workbench import Scenario

class Leaky(nn.Module):
    """Its first forward turns the process's default dtype to float64, as a careless helper might."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0
    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            torch.set_default_dtype(torch.float64)
        return self.fc(x)

def build(device):
    torch.manual_seed(0)
    model = Leaky().to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(6)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
'''


def test_a_row_that_changes_the_default_dtype_does_not_break_the_rows_after_it(tmp_path: Path) -> None:
    path = tmp_path / "leaky.py"
    path.write_text(LEAKS)
    try:
        run = run_bench(load_source(str(path)), ["fp32", "accum-2"], plan=PLAN)
        after = torch.get_default_dtype()
    finally:
        torch.set_default_dtype(torch.float32)
    assert [r.name for r in run.results] == ["fp32", "accum-2"]
    assert all(r.ok for r in run.results), [r.reason for r in run.results]
    assert after == torch.float32  # and the process is left as the bench found it


def test_a_row_that_sets_the_thread_count_does_not_change_the_rows_after_it(tmp_path: Path) -> None:
    """A forward's set_num_threads(1) timed every later row on one thread while the header said two."""
    log = tmp_path / "threads.log"
    path = tmp_path / "threads.py"
    path.write_text(LEAKS.replace("torch.set_default_dtype(torch.float64)", "torch.set_num_threads(1)").replace(
        "        self.calls += 1\n",
        f"        self.calls += 1\n        open({str(log)!r}, 'a').write(f'{{self.calls}} {{torch.get_num_threads()}}\\n')\n"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = run_bench(load_source(str(path)), ["fp32", "accum-2"], plan=PLAN)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert all(r.ok for r in run.results), [r.reason for r in run.results]
    assert run.settings.threads == 2 and after == 2
    # Each row builds its model anew: its first forward runs on the bench's 2 threads (the 1 its
    # first call set stays only for that row's later steps).
    first_calls = [line.split()[1] for line in log.read_text().splitlines() if line.split()[0] == "1"]
    assert len(first_calls) >= 2 and set(first_calls) == {"2"}, log.read_text()


def test_a_failed_row_names_the_users_line_also_for_system_exit(tmp_path: Path) -> None:
    from tests.conftest import SCENARIOS

    raising = SCENARIOS / "broken" / "raises_at_step3.py"
    run = run_bench(load_source(str(raising)), ["fp32"], plan=PLAN)
    assert f"(at step 3, {raising}:" in run.results[0].reason and "in forward)" in run.results[0].reason
    exits = tmp_path / "exits.py"
    exits.write_text(LEAKS.replace("torch.set_default_dtype(torch.float64)", "raise SystemExit(5)"))
    run = run_bench(load_source(str(exits)), ["fp32", "accum-2"], plan=PLAN)
    assert [r.status for r in run.results] == ["failed", "failed"]  # the bench itself went on
    assert run.results[0].reason.startswith("SystemExit: 5 (at step 0 (warm-up), ")
    assert f"{exits}:" in run.results[0].reason
