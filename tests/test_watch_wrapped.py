"""workbench.watch on wrapped models: DDP ranks (gloo, 2 processes on CPU) and torch.compile."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.watch_models import LogOfShifted, hook_count


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, report: str) -> None:
    import gc

    import torch.distributed as dist

    import workbench

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        # Rank 1's model makes a NaN in its own "poison" module; rank 0's stays finite.
        inner = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), LogOfShifted() if rank == 1 else nn.Identity(),
                              nn.Linear(8, 1))
        model = nn.parallel.DistributedDataParallel(inner)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with workbench.watch(model, opt, every=1, report=report) as wb:
            for _ in range(2):
                model(torch.randn(8, 4)).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
        assert wb.model is inner and hook_count(inner, opt) == 0
        del model
        gc.collect()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_each_ddp_rank_writes_its_own_rank_tagged_report(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    report = tmp_path / "ddp.json"
    mp.spawn(_rank_main, args=(2, _free_port(), str(report)), nprocs=2, join=True)
    assert not report.exists()
    r0 = json.loads((tmp_path / "ddp.rank0.json").read_text())
    r1 = json.loads((tmp_path / "ddp.rank1.json").read_text())
    assert r0["summary"]["steps_done"] == r1["summary"]["steps_done"] == 2
    assert {m["name"] for m in r0["steps"][0]["modules"]} >= {"0", "1", "3"}  # the inner module's names
    assert r1["findings"][0]["kind"] == "nan_inf" and r1["findings"][0]["module"] == "2"
    assert not [f for f in r0["findings"] if f["kind"] == "nan_inf" and f["step"] == 0 and f["phase"] == "forward"]


@pytest.mark.slow  # dynamo tracing takes seconds here
def test_a_compiled_model_is_hooked_underneath() -> None:
    import workbench

    inner = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), LogOfShifted(), nn.Linear(8, 1))
    compiled = torch.compile(inner, backend="eager")  # no C++ toolchain needed
    opt = torch.optim.SGD(inner.parameters(), lr=0.1)
    with workbench.watch(compiled, opt, every=1) as wb:
        for _ in range(2):
            compiled(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    assert wb.model is inner
    roots = [f for f in wb.findings if f.kind == "nan_inf" and f.step == 0]
    assert roots and roots[0].module == "2"
    assert hook_count(inner, opt) == 0
