"""ddp-N: 2 gloo ranks on CPU keep identical replicas; a failing rank fails the row, no hang."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_bench import TINY
from workbench.bench import Plan, run_bench
from workbench.bench.ddp_worker import main as worker_main
from workbench.scenario import load_source

FAULTY = TINY + '''
import os
import time

def build_rank1_raises(device):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("boom on rank 1")
    return build(device)

def _with_forward(forward, ranks=("0", "1")):
    def build_with(device):
        s = build(device)
        if os.environ.get("RANK") in ranks:
            s.forward = forward
        return s
    return build_with

def _die(model, inputs):
    os._exit(3)

def _hang(model, inputs):
    time.sleep(3600)

def _slow(model, inputs):
    time.sleep(0.05)
    return model(*inputs)

build_rank1_dies = _with_forward(_die, ranks=("1",))
build_rank1_hangs = _with_forward(_hang, ranks=("1",))
build_slow = _with_forward(_slow)
'''

PLAN = Plan(warmup=1, steps=3)

# These tests spawn real gloo ranks; they are marked slow (CI runs them) because each
# launch imports torch twice more, 10-20 s on a shared 2-core machine.


@pytest.fixture
def faulty(tmp_path: Path) -> Path:
    path = tmp_path / "faulty.py"
    path.write_text(FAULTY)
    return path


@pytest.mark.slow  # spawns 2 ranks that each import torch: 10-20 s on 2 shared cores
def test_ddp_two_gloo_ranks_keep_identical_parameters(faulty: Path) -> None:
    run = run_bench(load_source(str(faulty)), ["fp32", "ddp-2"], plan=PLAN)
    ddp, fp32 = run.get("ddp-2"), run.get("fp32")
    assert ddp.ok, ddp.reason
    e = ddp.extras
    assert e["backend"] == "gloo" and e["world_size"] == 2 and e["threads_per_rank"] == 1
    assert e["params_identical"] is True
    assert [r["rank"] for r in e["per_rank"]] == [0, 1]
    assert all(len(r["samples"]) == PLAN.steps and r["samples_per_s"] > 0 for r in e["per_rank"])
    assert 0.0 <= e["allreduce_share"] <= 1.0
    # Each rank trains on half of the same global batch: DDP's averaged gradient is
    # the full batch's, so the final loss matches fp32 up to float rounding.
    assert ddp.final_loss == pytest.approx(fp32.final_loss, rel=1e-4)
    assert ddp.timing.samples_per_step == 16
    assert e["timeout_s"] == 120.0  # the stall timeout, stated in the row
    assert not multiprocessing.active_children()


@pytest.mark.slow  # spawns 2 ranks that each import torch: 10-20 s on 2 shared cores
def test_a_rank_that_raises_fails_the_row_with_its_error(faulty: Path) -> None:
    t0 = time.perf_counter()
    run = run_bench(load_source(f"{faulty}:build_rank1_raises"), ["fp32", "ddp-2", "accum-2"], plan=PLAN)
    assert time.perf_counter() - t0 < 90
    row = run.get("ddp-2")
    assert row.status == "failed"
    assert row.reason.startswith("RankFailed: rank 1:") and "boom on rank 1" in row.reason
    assert "stall timeout 120 s" in row.reason
    assert run.get("accum-2").ok  # the rows after it still ran
    assert not multiprocessing.active_children()


@pytest.mark.slow  # spawns 2 ranks that each import torch: 10-20 s on 2 shared cores
def test_a_rank_that_dies_fails_the_row_and_the_others_are_stopped(faulty: Path) -> None:
    t0 = time.perf_counter()
    run = run_bench(load_source(f"{faulty}:build_rank1_dies"), ["ddp-2"], plan=PLAN)
    assert time.perf_counter() - t0 < 90
    row = run.get("ddp-2")
    assert row.status == "failed"
    assert "rank 1 died with exit code 3" in row.reason
    assert not multiprocessing.active_children()


@pytest.mark.slow  # waits out a 30 s stall timeout
def test_a_rank_that_hangs_fails_the_row_at_the_stall_timeout(faulty: Path) -> None:
    from workbench.bench.variants.distributed import DDPVariant

    t0 = time.perf_counter()
    variant = DDPVariant("ddp-2", world_size=2, timeout_s=30.0)
    run = run_bench(load_source(f"{faulty}:build_rank1_hangs"), [variant], plan=PLAN)
    elapsed = time.perf_counter() - t0
    row = run.get("ddp-2")
    assert row.status == "failed"
    assert "no word from the ranks for 30 s (the DDP stall timeout)" in row.reason
    assert "all ranks were stopped" in row.reason
    assert 30 <= elapsed < 90
    assert not multiprocessing.active_children()


@pytest.mark.slow  # spawns 2 ranks that each import torch: 10-20 s on 2 shared cores
def test_ddp_ranks_stop_together_at_the_time_budget(faulty: Path) -> None:
    # 50 ms a step, a 0.4 s budget: the ranks agree to stop after ~8 of 40 steps;
    # a rank that stopped alone would leave the other hanging in its all-reduce.
    plan = Plan(warmup=1, steps=40, budget_s=0.4, min_samples=3)
    run = run_bench(load_source(f"{faulty}:build_slow"), ["fp32", "ddp-2"], plan=plan, threads=1)
    ddp, fp32 = run.get("ddp-2"), run.get("fp32")
    assert ddp.ok, ddp.reason
    t = ddp.timing
    assert t.cut_short and 3 <= t.timed_steps < 40 and len(t.samples) == t.timed_steps
    assert all(len(r["samples"]) == t.timed_steps for r in ddp.extras["per_rank"])
    assert ddp.extras["params_identical"] is True
    assert ddp.steps_trained == 1 + t.timed_steps
    if ddp.steps_trained == fp32.steps_trained:
        assert ddp.baseline_loss == fp32.final_loss
    # Half the batch per rank, DDP averages: fp32 after the same steps gives the same loss.
    assert ddp.final_loss == pytest.approx(ddp.baseline_loss, rel=1e-4)
    assert not multiprocessing.active_children()


def test_worker_entry_without_torchrun_env_says_how_to_launch(
    faulty: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert worker_main([str(faulty)]) == 2
    err = capsys.readouterr().err
    assert "torchrun" in err and "RANK" in err


@pytest.mark.slow
def test_worker_runs_under_torchrun(faulty: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "workbench.bench.ddp_worker",
         str(faulty), "--steps", "2", "--warmup", "1"],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Each rank's result, found wherever it starts on a line (the ranks and torchrun share this
    # stdout); if one is missing, the message shows the output (it once was, under CI load).
    lines = ["RANK_RESULT " + part.splitlines()[0] for part in result.stdout.split("RANK_RESULT ")[1:]]
    assert len(lines) == 2, result.stdout[-3000:] + result.stderr[-2000:]
    import json

    digests = {json.loads(line.split(" ", 1)[1])["param_digest"] for line in lines}
    assert len(digests) == 1
    assert "ddp-2 (gloo)" in result.stdout
