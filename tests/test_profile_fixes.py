"""`workbench profile` fixes: DDP slicing outside the dataloader range and advice that fits the
data, --findings of another scenario refused, sys.exit() in a step named like any failure,
control characters in --run/--logdir refused, a per-epoch ReduceLROnPlateau stepping."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.profiling.advice import Facts, rule_dataloader
from workbench.profiling.analysis import analyze_file, analyze_trace
from workbench.profiling.capture import profile_scenario
from workbench.profiling.ddp import RankShard, rank_data
from workbench.profiling.loop import train_steps
from workbench.profiling.native_logs import quiet_native_logs
from workbench.profiling.options import ProfileOptions
from workbench.profiling.sidecar import check_logdir, check_run_name
from workbench.profiling.trace import DATA_TYPE_KEY
from workbench.report.json_report import SCHEMA as RUN_SCHEMA
from workbench.scenario import load_source

# Kineto reads its log level when this process first profiles, which a test here may do directly
# (not through the command, which quiets it): its log lines would land in other tests' run dirs.
quiet_native_logs()

ONE_STEP = ["--wait", "0", "--warmup", "1", "--active", "1", "--device", "cpu"]

TINY = '''
import torch
from torch import nn
from workbench import Scenario

def build(device):
    torch.manual_seed(0)
    model = nn.Linear(4, 2).to(device)
    data = [(torch.randn(8, 4), torch.randn(8, 2)) for _ in range(2)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.MSELoss(), data=data)

def build_loader(device):
    s = build(device)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    s.data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    return s
'''


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


# -- 1. DDP: the workbench's slicing is not DataLoader time; the advice fits the data --------


def test_a_ranks_list_data_is_sliced_before_profiling_and_a_loader_between_fetch_and_copy(
        write_scenario) -> None:  # noqa: ANN001
    path = write_scenario(TINY, "tiny.py")
    listed = load_source(str(path)).build("cpu")
    data, shard = rank_data(listed, 1, 2)
    assert shard is None and isinstance(data, list) and len(data) == 2  # nothing left to do per step
    for mine, expected in zip(data, RankShard(listed.data, 1, 2, listed), strict=True):
        assert torch.equal(mine[1], expected[1]) and mine[1].shape[0] == 4  # (inputs, targets)

    loader = load_source(f"{path}:build_loader").build("cpu")
    data, shard = rank_data(loader, 0, 2)
    assert data is loader.data and shard is not None  # loading stays the DataLoader's, measured
    batch = loader.make_batch(next(iter(loader.data)))
    assert shard(batch).size == 4


def test_the_shard_runs_outside_the_dataloader_range(write_scenario, tmp_path: Path) -> None:  # noqa: ANN001
    """A slow shard (50 ms) must not show as DataLoader time; the trace says what the data is."""
    scenario = load_source(str(write_scenario(TINY, "tiny.py"))).build("cpu")

    def slow_shard(batch):  # noqa: ANN001, ANN202 - Batch
        time.sleep(0.05)
        return batch.split(2)[0]

    (trace,) = profile_scenario(scenario, tmp_path, ProfileOptions(wait=0, warmup=1, active=2),
                              shard=slow_shard)
    a = analyze_file(trace)
    assert a.data_type == "list"
    assert a.steps and all(s.duration_us > 50_000 for s in a.steps)
    assert all(s.time("dataloader") < 25_000 for s in a.steps), [s.time("dataloader") for s in a.steps]


def test_the_dataloader_rule_fits_the_data() -> None:
    loader = rule_dataloader(Facts(dataloader_share=0.2, data_type="DataLoader"))
    assert loader is not None and loader.variant == "dataloader" and "num_workers" in loader.message
    unknown = rule_dataloader(Facts(dataloader_share=0.2))  # an older trace: as before
    assert unknown is not None and unknown.variant == "dataloader"
    # A list: `bench --variants dataloader` skips it, and DataLoader settings cannot apply.
    listed = rule_dataloader(Facts(dataloader_share=0.2, data_type="list"))
    assert listed is not None and listed.variant is None and listed.command("s.py") is None
    assert "a list already in memory" in listed.message and "num_workers" not in listed.message
    assert "GPU" not in listed.message and "pin_memory" not in listed.message  # CPU only
    gpu = rule_dataloader(Facts(dataloader_share=0.2, data_type="list", gpu_utilization=0.9))
    assert gpu is not None and "pin_memory()" in gpu.message
    stream = rule_dataloader(Facts(dataloader_share=0.2, data_type="Stream"))
    assert stream is not None and stream.variant is None
    assert "wrap it in a torch.utils.data.DataLoader" in stream.message
    assert rule_dataloader(Facts(dataloader_share=0.05, data_type="list")) is None
    assert analyze_trace({"traceEvents": [], DATA_TYPE_KEY: "list"}).data_type == "list"
    assert analyze_trace({"traceEvents": []}).data_type is None


def test_the_dataloader_rule_knows_the_loader_already_has_workers(write_scenario, tmp_path: Path) -> None:  # noqa: ANN001
    """It advised DataLoader(num_workers=N) to a loader with num_workers=2."""
    from workbench.profiling.trace import LOADER_WORKERS_KEY

    busy = rule_dataloader(Facts(dataloader_share=0.2, data_type="DataLoader", loader_workers=2))
    assert busy is not None and "already has 2 workers" in busy.message and busy.variant == "dataloader"
    assert "DataLoader(num_workers=N)" not in busy.message
    assert analyze_trace({"traceEvents": [], DATA_TYPE_KEY: "DataLoader", LOADER_WORKERS_KEY: "2"}).loader_workers == 2
    assert analyze_trace({"traceEvents": [], DATA_TYPE_KEY: "DataLoader"}).loader_workers is None


# -- 2. --findings of another scenario ------------------------------------------------------


def _report(path: Path, scenario: str) -> Path:
    finding = {"kind": "dead_units", "severity": "warning", "module": "hidden.act",
               "message": "91% of the units of 'hidden.act' never fire"}
    path.write_text(json.dumps({"schema": RUN_SCHEMA, "scenario": scenario, "findings": [finding]}))
    return path


def test_findings_of_another_scenario_are_refused(write_scenario, tmp_path: Path,  # noqa: ANN001
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    scn = write_scenario(TINY, "tiny.py")
    other = _report(tmp_path / "other.json", "dead_relu")
    logdir = tmp_path / "logs"
    # Profiling: refused before any work.
    assert main(["profile", str(scn), "--logdir", str(logdir), "--findings", str(other), *ONE_STEP]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"--findings {other}: a report of scenario 'dead_relu', but {scn} is scenario 'tiny'" in err
            and f"`workbench run {scn} --json FILE`" in err)
    assert not logdir.exists()
    # Analysing: the run's sidecar names the scenario.
    rc, _ = _run(["profile", str(scn), "--logdir", str(logdir), "--run", "r", *ONE_STEP])
    assert rc == 0
    assert main(["profile", "--analyze", str(logdir), "--findings", str(other)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"but the run analysed ({logdir}) is a profile of 'tiny'" in err and "leave --findings out" in err
    # The same scenario's report joins.
    mine = _report(tmp_path / "me.json", "tiny")
    rc, out = _run(["profile", "--analyze", str(logdir / "r"), "--findings", str(mine)])
    assert rc == 0 and "engine:dead_units" in out


# -- 3. sys.exit() and other BaseExceptions in a step ---------------------------------------


HOSTILE = '''
import sys
import torch
from torch import nn
from workbench import Scenario

class Weird(BaseException):
    pass

class Net(nn.Linear):
    def __init__(self, how):
        super().__init__(4, 2)
        self.calls, self.how = 0, how
    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            if self.how == "exit":
                sys.exit(3)
            raise Weird("odd")
        return super().forward(x)

def build(device, how="exit"):
    m = Net(how)
    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                    loss_fn=nn.MSELoss(), data=[(torch.randn(3, 4), torch.randn(3, 2))])

def build_weird(device):
    return build(device, "weird")
'''


@pytest.mark.parametrize(("function", "said"), [("build", "called sys.exit(3)"), ("build_weird", "raised Weird: odd")])
def test_a_user_exit_in_a_step_names_the_step_and_the_kept_trace(
        function: str, said: str, write_scenario, tmp_path: Path,  # noqa: ANN001
        capsys: pytest.CaptureFixture[str]) -> None:
    scn = write_scenario(HOSTILE, "hostile.py")
    logdir = tmp_path / "logs"
    rc = main(["profile", f"{scn}:{function}", "--logdir", str(logdir), "--run", "x",
               "--wait", "0", "--warmup", "1", "--active", "3"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2, err
    assert f"the forward phase of step 2 {said}" in err  # the probe builds its own model: step 2 is call 3
    (trace,) = (logdir / "x").glob("*.pt.trace.json")
    assert "traced and kept" in err and str(trace) in err.replace(" ", "")
    assert not list((logdir / "x").glob("*.tmp"))


# -- 4. control characters in --run and --logdir ----------------------------------------------


@pytest.mark.parametrize("where", ["--run", "--logdir"])
def test_control_characters_in_the_run_name_or_logdir_are_refused_before_profiling(
        where: str, write_scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    scn = write_scenario(TINY, "tiny.py")
    logdir, run = tmp_path / "logs", "r"
    if where == "--run":
        run = "nl\nx"
    else:
        logdir = tmp_path / "lo\ngs"
    rc, out = _run(["profile", str(scn), "--logdir", str(logdir), "--run", run, *ONE_STEP])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{where} " in err and "control character '\\n' (U+000A)" in err
    assert "trace size estimate" not in out and list(tmp_path.iterdir()) == [scn]


def test_check_run_name_and_logdir() -> None:
    assert check_run_name("ddp-demo.2") == "ddp-demo.2"
    assert check_logdir("runs/ü profile") == Path("runs/ü profile")
    for bad in ("a\tb", "x\x1b[31m", "del\x7f"):
        with pytest.raises(Exception, match="control character"):
            check_run_name(bad)
        with pytest.raises(Exception, match="--logdir"):
            check_logdir(f"runs/{bad}")


# -- 5. a per-epoch ReduceLROnPlateau steps under profile -------------------------------------


PLATEAU = '''
import torch
from torch import nn
from workbench import Scenario

def build(device):
    torch.manual_seed(0)
    m = nn.Linear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    return Scenario(model=m, optimizer=opt, loss_fn=nn.MSELoss(), scheduler=sched, scheduler_interval="epoch",
                    data=[(torch.randn(3, 4), torch.randn(3, 2)) for _ in range(2)])
'''


def test_a_per_epoch_reduce_lr_on_plateau_steps_with_the_last_loss(write_scenario) -> None:  # noqa: ANN001
    scenario = load_source(str(write_scenario(PLATEAU, "plateau.py"))).build("cpu")
    sched = scenario.scheduler
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    train_steps(scenario, 5)  # 2 batches an epoch: epochs 1 and 2 end before steps 2 and 4
    assert sched.last_epoch == 2 and sched.best < float("inf")


def test_a_small_trace_over_a_small_limit_is_not_called_0_mb() -> None:
    from workbench.profiling.capture import SizeEstimate, too_large_message

    text = too_large_message(SizeEstimate(bytes_per_step=130 * 1024, events_per_step=1, active_steps=3,
                                          gzip=False), 0.01)
    assert "about 0.38 MB (0.13 MB per step x 3 active steps" in text and "0 MB" not in text.replace("0.", "")
    big = too_large_message(SizeEstimate(bytes_per_step=60 * 2**20, events_per_step=1, active_steps=5, gzip=False), 200)
    assert "about 300 MB (60 MB per step" in big
