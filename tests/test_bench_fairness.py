"""Every bench row trains on the same batches, with the same scheduler, as the fp32 row.

The scenarios here shuffle with torch's global RNG (a DataLoader with shuffle=True and no
generator, the `workbench init` template's default): a row that draws its batches again,
after another reseed, sees another order and its quality delta is noise, not the variant.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.bench import Plan, run_bench
from workbench.bench.context import collect
from workbench.bench.ddp import DDPJob, run_rank
from workbench.bench.results import BenchRun
from workbench.bench.steps import train_step_fn
from workbench.bench.variants.training import lstm_without_kernel
from workbench.cli import main
from workbench.distributed import LOOPBACK_INIT, free_port
from workbench.scenario import load_source

SHUFFLED = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from workbench import Scenario

def _scenario(device, scheduler=None, interval="step", dropout=0.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2)).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    # shuffle=True without a generator: the order comes from torch's global RNG.
    data = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)  # 2 batches an epoch
    return Scenario(model=model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), data=data, name="shuffled",
                    scheduler=scheduler(opt) if scheduler else None, scheduler_interval=interval)

def build(device):
    return _scenario(device)

def build_dropout(device):
    return _scenario(device, dropout=0.3)

def build_epoch_steplr(device):
    return _scenario(device, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.1), "epoch")

def build_epoch_plateau(device):
    # mode="max" on a falling loss: every epoch after the first is "bad", so the LR drops.
    return _scenario(device, lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
        o, mode="max", factor=0.1, patience=0), "epoch")

def build_step_plateau(device):
    return _scenario(device, lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
        o, mode="max", factor=0.5, patience=0), "step")
'''

# 6 steps on the 2 fixed batches: the batches start over (an epoch tick) at steps 2 and 4.
PLAN = Plan(warmup=1, steps=5)


@pytest.fixture
def shuffled(tmp_path: Path) -> Path:
    path = tmp_path / "shuffled.py"
    path.write_text(SHUFFLED)
    return path


@pytest.fixture
def threads() -> Iterator[None]:
    """run_rank sets one thread per rank (as a spawned rank would): give the test process its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _bench(path: Path, build: str, names: list[str]) -> BenchRun:
    run = run_bench(load_source(f"{path}:{build}"), names, plan=PLAN)
    for r in run.results:
        assert r.ok, (r.name, r.reason)
    return run


def _rank_alone(path: Path, build: str, *, ship: bool) -> float:
    """ddp-1 in this process: run_rank as a launched rank runs it, with the bench's batches
    shipped (ship) or drawn by the rank itself (what a torchrun rank does)."""
    source = load_source(f"{path}:{build}")
    batches = collect(source.build(torch.device("cpu")), PLAN.total)[0] if ship else None
    result = run_rank(0, 1, DDPJob(source, "cpu", PLAN, batches), LOOPBACK_INIT + str(free_port()))
    assert result.final_loss is not None
    return result.final_loss


# -- the same batches --------------------------------------------------------------------


def test_loader_rows_train_on_the_fixed_batches_of_a_shuffled_loader(shuffled: Path) -> None:
    run = _bench(shuffled, "build", ["fp32", "accum-2", "loader-w0"])
    base = run.get("fp32").final_loss
    assert run.get("accum-2").final_loss == pytest.approx(base, rel=1e-5)
    # The loader row draws from a rebuilt loader: its shuffle replays the fixed batches'.
    assert run.get("loader-w0").final_loss == pytest.approx(base, rel=1e-6)


def test_a_loader_row_leaves_the_training_rng_to_the_training(shuffled: Path) -> None:
    # With dropout, the loader's draws (its base seed, the shuffle) must not move the masks.
    run = _bench(shuffled, "build_dropout", ["fp32", "loader-w0"])
    assert run.get("loader-w0").final_loss == pytest.approx(run.get("fp32").final_loss, rel=1e-6)


@pytest.mark.parametrize("ship", [True, False], ids=["shipped batches", "torchrun: drawn in the rank"])
def test_a_ddp_rank_trains_and_scores_on_the_fixed_batches(shuffled: Path, threads: None, ship: bool) -> None:
    base = _bench(shuffled, "build", ["fp32"]).get("fp32").final_loss
    assert _rank_alone(shuffled, "build", ship=ship) == pytest.approx(base, rel=1e-5)


@pytest.mark.slow  # spawns 2 gloo ranks that each import torch: 10-20 s on 2 shared cores
def test_ddp_two_ranks_match_fp32_on_a_shuffled_loader_with_an_epoch_scheduler(shuffled: Path) -> None:
    run = _bench(shuffled, "build_epoch_steplr", ["fp32", "ddp-2"])
    ddp = run.get("ddp-2")
    assert ddp.extras["params_identical"] is True
    assert ddp.final_loss == pytest.approx(run.get("fp32").final_loss, rel=1e-4)


# -- per-epoch schedulers --------------------------------------------------------------


@pytest.mark.parametrize("build", ["build_epoch_steplr", "build_epoch_plateau", "build_step_plateau"])
def test_every_row_steps_the_scheduler_as_fp32_does(shuffled: Path, threads: None, build: str) -> None:
    run = _bench(shuffled, build, ["fp32", "accum-2", "loader-w0"])
    base = run.get("fp32").final_loss
    assert run.get("accum-2").final_loss == pytest.approx(base, rel=1e-5)
    assert run.get("loader-w0").final_loss == pytest.approx(base, rel=1e-5)
    assert _rank_alone(shuffled, build, ship=True) == pytest.approx(base, rel=1e-5)


@pytest.mark.parametrize("build", ["build_epoch_steplr", "build_epoch_plateau"])
def test_a_per_epoch_scheduler_steps_when_the_batches_start_over(shuffled: Path, build: str) -> None:
    scenario = load_source(f"{shuffled}:{build}").build(torch.device("cpu"))
    batches = collect(scenario, PLAN.total)[0]
    assert len(batches) == 2
    step = train_step_fn(scenario, batches)
    lrs = []
    for i in range(PLAN.total):
        step(i)
        lrs.append(scenario.optimizer.param_groups[0]["lr"])
    # StepLR: down at each epoch tick (steps 2 and 4). ReduceLROnPlateau judges the loss of the
    # step before each tick: the first sets its best, the second (a lower loss, mode="max") cuts.
    expected = [0.5, 0.5, 0.05, 0.05, 0.005, 0.005] if build.endswith("steplr") else [0.5] * 4 + [0.05] * 2
    assert lrs == pytest.approx(expected)


# -- a kernel this CPU does not have -------------------------------------------------------

LSTM = '''
import torch
from torch import nn
import torch.nn.functional as F
from workbench import Scenario

class LM(nn.Module):
    def __init__(self, rnn=nn.LSTM):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lstm = rnn(8, 8)
        self.head = nn.Linear(8, 20)

    def forward(self, tokens):
        out, _ = self.lstm(self.emb(tokens))
        return self.head(out)

def build(device, rnn=nn.LSTM):
    torch.manual_seed(0)
    model = LM(rnn).to(device)
    g = torch.Generator().manual_seed(0)
    batches = [((t[:-1],), t[1:]) for t in (torch.randint(0, 20, (7, 4), generator=g) for _ in range(2))]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data=batches,
                    loss_fn=lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten()), batch_dim=1)

def _forward(model, inputs):
    if torch.is_autocast_enabled("cpu"):  # what oneDNN raises for a dtype it has no kernel for
        raise RuntimeError("could not create a primitive descriptor for the matmul primitive. Run workload "
                           "with environment variable ONEDNN_VERBOSE=all to get additional diagnostic information")
    return model(*inputs)

def build_no_kernel(device):
    s = build(device, nn.GRU)  # nothing the probe knows of: the row meets the error running
    s.forward = _forward
    return s
'''


def test_an_lstm_amp_row_says_why_it_cannot_run_here(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lstm.py"
    path.write_text(LSTM)
    code = main(["bench", str(path), "--variants", "fp32,amp", "--steps", "2", "--warmup", "1"])
    out = " ".join(capsys.readouterr().out.split())
    if lstm_without_kernel(nn.LSTM(8, 8), torch.bfloat16) is None:
        assert code == 0  # this CPU's oneDNN has a bf16 LSTM: the row runs
        return
    # Known before running, and a machine that lacks a kernel is a skip, as rows that need a GPU are.
    assert code == 0
    assert "skipped: `lstm` (nn.LSTM) cannot run under CPU bf16 autocast" in out
    assert "--device cuda" in out and "enabled=False" in out


def test_a_missing_onednn_kernel_met_while_running_fails_the_row_with_advice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lstm.py"
    path.write_text(LSTM)
    run = run_bench(load_source(f"{path}:build_no_kernel"), ["fp32", "amp"], plan=Plan(warmup=1, steps=1))
    amp = run.get("amp")
    assert run.get("fp32").ok and amp.status == "failed"
    assert amp.reason.startswith("RuntimeError: could not create a primitive descriptor for the matmul primitive")
    assert "no bf16 kernel in this CPU's oneDNN (an LSTM under CPU bf16 autocast is one)" in amp.reason
    assert "--device cuda" in amp.reason


def test_every_row_starts_from_the_same_weights_when_build_does_not_seed(tmp_path) -> None:
    """Each row's build drew its initial weights from the RNG the rows before it had moved: accum-2
    read 'loss +0.057' against fp32 from the initialisation alone."""
    from workbench.bench import Plan, run_bench
    from workbench.scenario import load_source

    path = tmp_path / "unseeded.py"
    path.write_text(UNSEEDED)
    run = run_bench(load_source(str(path)), ["fp32", "accum-2"], plan=Plan(warmup=1, steps=4))
    fp32, accum = (r.final_loss for r in run.results)
    assert fp32 is not None and accum == pytest.approx(fp32, rel=1e-5)


UNSEEDED = """
import torch
from torch import nn
from workbench import Scenario

def build(device):
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).to(device)  # no manual_seed
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(6)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
"""
