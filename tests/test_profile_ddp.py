"""`workbench profile --ddp N` and under torchrun: one worker file per rank, real gloo all-reduce."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from tests.conftest import ROOT, SCENARIOS
from workbench.cli import main
from workbench.distributed import free_port
from workbench.profiling.capture import default_worker_name
from workbench.profiling.ddp import RankShard
from workbench.profiling.runs import analyze_path
from workbench.profiling.sidecar import METADATA_FILE
from workbench.scenario import ScenarioError

MLP = str(SCENARIOS / "mlp_digits.py")
SMALL = ["--wait", "0", "--warmup", "1", "--active", "2", "--device", "cpu"]

FAULTY = '''
import os
import torch
from torch import nn
from workbench.scenario import Scenario

def build(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).to(device)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    return Scenario(model=model, data=data, loss_fn=nn.CrossEntropyLoss(),
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1))

def _boom(model, inputs):
    raise RuntimeError("boom in the forward of rank 1")

def build_rank1_raises(device):
    s = build(device)
    if os.environ.get("RANK") == "1":
        s.forward = _boom
    return s
'''


def _run(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(args)
    return rc, out.getvalue()


def test_rank_shard_gives_each_rank_its_slice_of_every_batch() -> None:
    x = torch.arange(10.0).reshape(5, 2)
    data = [((x, x * 2), torch.arange(5))]
    first = list(RankShard(data, 0, 2))
    second = list(RankShard(data, 1, 2))
    (inputs0, y0), (inputs1, y1) = first[0], second[0]
    assert y0.tolist() == [0, 1, 2] and y1.tolist() == [3, 4]  # tensor_split: sizes differ by at most one
    assert torch.equal(inputs1[0], x[3:]) and torch.equal(inputs1[1], x[3:] * 2)
    with pytest.raises(ScenarioError, match="a batch of 5 samples cannot be split over 8 ranks"):
        list(RankShard(data, 0, 8))


def test_ddp_flag_is_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", MLP, "--ddp", "1", "--logdir", str(tmp_path)]) == 2
    assert "--ddp N needs a SCENARIO and N >= 2, got --ddp 1" in capsys.readouterr().err
    assert main(["profile", "--analyze", str(tmp_path), "--ddp", "2"]) == 2
    assert "with --analyze" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.device_count() >= 4, reason="this machine has 4 GPUs")
def test_ddp_on_cuda_needs_a_gpu_per_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.profiling.ddp import check_ddp_ranks

    from workbench.errors import UsageError

    # Either reason is said before anything is spawned: no NCCL in this build (the CPU
    # wheel), or fewer GPUs than ranks.
    expected = r"\(one per rank\)" if torch.distributed.is_nccl_available() else "has no NCCL backend"
    with pytest.raises(UsageError, match=expected):
        check_ddp_ranks(torch.device("cuda"), 4)


@pytest.mark.slow  # spawns 2 ranks that each import torch
def test_profile_ddp_two_gloo_ranks_write_one_worker_file_each(tmp_path: Path) -> None:
    rc, out = _run(["profile", MLP, "--logdir", str(tmp_path), "--run", "d", "--ddp", "2", *SMALL])
    assert rc == 0, out
    run_dir = tmp_path / "d"
    names = sorted(p.name for p in run_dir.glob("*.pt.trace.json"))
    assert [n.split(".")[0] for n in names] == [default_worker_name(0), default_worker_name(1)]
    assert "x 2 DDP ranks" in out and "x 2 ranks)" in out  # the header and the size estimate
    assert json.loads((run_dir / METADATA_FILE).read_text())["ranks"] == 2
    result = analyze_path(run_dir)
    assert sorted(w.worker for w in result.workers) == [default_worker_name(0), default_worker_name(1)]
    for w in result.workers:
        assert w.uses_ddp and w.comm_libs == ("gloo",)
        assert len(w.steps) == 2 and all(s.time("communication") > 0 for s in w.steps)
    # gloo on CPU: no GPU, so the NCCL rule stays silent.
    assert "ddp_backend" not in {r.rule for r in result.recommendations}


@pytest.mark.slow
def test_a_failing_rank_is_named_and_nothing_is_left_running(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "faulty.py"
    path.write_text(FAULTY)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rc = main(["profile", f"{path}:build_rank1_raises", "--logdir", str(tmp_path / "logs"), "--run", "x",
               "--ddp", "2", *SMALL])
    err = capsys.readouterr().err
    assert rc == 2
    assert "rank 1:" in err and "boom in the forward of rank 1" in err
    assert "Traceback" not in err  # RankFailed is a complete message
    left = [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left
    assert not list((tmp_path / "logs").glob("x/*.pt.trace.json"))


@pytest.mark.slow
def test_under_torchrun_each_process_profiles_itself_as_a_rank(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "workbench", "profile", MLP, "--logdir", str(tmp_path),
           "--run-name", "tr", *SMALL]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "160", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = sorted(p.name.split(".")[0] for p in (tmp_path / "tr").glob("*.pt.trace.json"))
    assert names == [default_worker_name(0), default_worker_name(1)]
    meta = json.loads((tmp_path / "tr" / METADATA_FILE).read_text())
    assert meta["ranks"] == 2 and sorted(meta["files"]) == sorted(p.name for p in (tmp_path / "tr").glob("*.json")
                                                                  if p.name != METADATA_FILE)
    rank1_file = next((tmp_path / "tr").glob(f"{default_worker_name(1)}.*.pt.trace.json"))
    assert f"rank 1 wrote {rank1_file}" in proc.stdout
    assert "rank 1 wrote" not in proc.stdout.replace(f"rank 1 wrote {rank1_file}", "")  # its own file only
    # Rank 0 analyses the run once every rank has written: both workers, with the all-reduce.
    assert "x 2 DDP ranks" in proc.stdout
    assert proc.stdout.count("step time breakdown") == 2 and "Communication" in proc.stdout


def test_ddp_under_torchrun_is_refused_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert main(["profile", MLP, "--ddp", "2", "--logdir", str(tmp_path)]) == 2
    assert "under torchrun each process is already a rank" in capsys.readouterr().err
