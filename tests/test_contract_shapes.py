"""Contract v2 on the shapes of real training code (tests/contract_models.py), through the commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests import contract_models as cm
from workbench.bench import Plan, run_bench
from workbench.cli import main
from workbench.engine import Engine, EngineConfig
from workbench.scenario import load, load_source

PLAN = Plan(warmup=1, steps=3)


# -- time-major LSTM LM -------------------------------------------------------------------


def test_time_major_lm_counts_batch_dim_1_in_the_engine(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.TIME_MAJOR_LM, "wlm.py")
    with Engine(load(path)) as eng:
        records = [eng.step_once() for _ in range(3)]
    assert [r.batch_size for r in records] == [10, 10, 10]  # batch along dim 1, not the 12 time steps
    assert all(r.grad_norm_before_clip is not None for r in records)
    assert all(r.grad_norm_after_clip <= 0.25 + 1e-4 for r in records)


@pytest.mark.slow
def test_time_major_lm_bench_accum_2_splits_the_batch_not_time(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.TIME_MAJOR_LM, "wlm.py")
    run = run_bench(load_source(str(path)), ["fp32", "accum-2"], plan=PLAN)
    for r in run.results:
        assert r.ok, r.reason
        assert r.timing.throughput == pytest.approx(10 / r.timing.median)
    assert run.get("accum-2").extras["micro_batch_size"] == 5


def test_carried_state_replay_warns_without_hooks_and_is_exact_with_them(tmp_path: Path) -> None:
    bare = cm.write(tmp_path, cm.TIME_MAJOR_LM, "bare.py")
    hooked = cm.write(tmp_path, cm.TIME_MAJOR_LM, "hooked.py", state_hooks=cm.STATE_HOOKS)
    with Engine(load(bare), EngineConfig(snapshots=4)) as eng:
        assert not eng.replay_exact
        [eng.step_once() for _ in range(3)]
        eng.rewind(2)
        assert any(f.kind == "scenario_config" and "not bit-identical" in f.message for f in eng.findings)
    with Engine(load(hooked), EngineConfig(snapshots=4)) as eng:
        assert eng.replay_exact
        first = [eng.step_once().loss for _ in range(3)]
        eng.rewind(2)
        again = [eng.step_once().loss for _ in range(2)]
        assert again == first[1:]  # the hidden state came back with the snapshot
        assert not any("not bit-identical" in f.message for f in eng.findings)


# -- TransformerEncoder with a padding mask ---------------------------------------------------


def test_padded_encoder_with_tree_batches_runs_and_learns(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.PADDED_ENCODER, "enc.py")
    with Engine(load(path)) as eng:
        records = [eng.step_once() for _ in range(12)]
    assert records[0].batch_size == 8 and all(math.isfinite(r.loss) for r in records)
    assert sum(r.loss for r in records[-3:]) < sum(r.loss for r in records[:3])
    assert not [f for f in eng.findings if f.severity == "error"]


@pytest.mark.slow
def test_padded_encoder_through_summary_bench_and_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(cm.write(tmp_path, cm.PADDED_ENCODER, "enc.py"))
    assert main(["summary", path]) == 0
    assert main(["bench", path, "--variants", "fp32,accum-2", "--steps", "2", "--warmup", "1"]) == 0
    assert main(["profile", path, "--device", "cpu", "--steps", "3", "--logdir", str(tmp_path / "prof")]) == 0
    out = capsys.readouterr().out
    assert "Classifier" in out and "accum-2" in out


# -- two named losses, clipping, before_step ------------------------------------------------


def test_two_losses_parts_clipping_and_before_step(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.TWO_LOSSES, "two.py")
    s = load(path)
    with Engine(s) as eng:
        records = [eng.step_once() for _ in range(12)]
        clipped, total = eng.clipping
    r = records[0]
    assert set(r.loss_parts) == {"ce", "recon"}
    assert r.loss == pytest.approx(r.loss_parts["ce"] + r.loss_parts["recon"], rel=1e-5)
    assert r.clipped and r.grad_norm_before_clip > 0.1 and r.grad_norm_after_clip == pytest.approx(0.1, rel=1e-3)
    assert "clip_grad" in r.sub_phase_seconds and "before_step" in r.sub_phase_seconds
    assert len(s.model.before_step_calls) == 12 and (clipped, total) == (12, 12)
    bites = [f for f in eng.findings if f.kind == "grad_clipping"]
    assert len(bites) == 1 and "clipped 10 of the last 10 steps" in bites[0].message


def test_two_losses_parts_in_the_json_report(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.TWO_LOSSES, "two.py")
    out = tmp_path / "run.json"
    assert main(["run", str(path), "--steps", "3", "--json", str(out)]) == 0
    steps = json.loads(out.read_text())["steps"]
    assert len(steps) == 3
    for step in steps:
        assert set(step["loss_parts"]) == {"ce", "recon"} and step["loss_source"] == "loss_fn"
        assert step["loss"] == pytest.approx(sum(step["loss_parts"].values()), rel=1e-5)
        assert step["clipped"] is True and step["grad_norm_after_clip"] == pytest.approx(0.1, rel=1e-3)


# -- schedulers -------------------------------------------------------------------------------


def test_timm_style_scheduler_step_update_every_step(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.TIMM_SCHEDULER, "timm.py")
    s = load(path)
    with Engine(s) as eng:
        records = [eng.step_once() for _ in range(4)]
    assert s.scheduler.calls == [("step_update", n) for n in (1, 2, 3, 4)]
    assert [r.lrs[0] for r in records] == pytest.approx([0.1, 0.1 / 2, 0.1 / 3, 0.1 / 4])


def test_per_epoch_scheduler_steps_once_per_pass(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.TIMM_SCHEDULER, "timm.py")
    s = load(f"{path}:build_epochs")
    with Engine(s) as eng:
        records = [eng.step_once() for _ in range(7)]
    assert s.scheduler.calls == [("step", 1), ("step", 2)]  # after the 3rd and the 6th step
    assert [r.lrs[0] for r in records] == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.1 / 3])
    torch_epochs = load(f"{path}:build_steplr_epochs")
    assert not torch_epochs.load_warnings
    with Engine(torch_epochs) as eng:
        lrs = [eng.step_once().lrs[0] for _ in range(4)]
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05])


def test_per_epoch_scheduler_without_an_interval_is_a_warning_at_load(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.TIMM_SCHEDULER, "timm.py")
    s = load(f"{path}:build_steplr")
    assert len(s.load_warnings) == 1 and 'scheduler_interval="epoch"' in s.load_warnings[0]
    with Engine(s) as eng:
        eng.step_once()
        found = [f for f in eng.findings if f.kind == "scenario_config"]
    assert found and found[0].severity == "warning" and "StepLR(step_size=1)" in found[0].message


def test_bench_steps_a_per_epoch_scheduler_when_its_batches_start_over(tmp_path: Path) -> None:
    from workbench.bench.steps import train_step_fn

    s = load(f"{cm.write(tmp_path, cm.TIMM_SCHEDULER, 'timm.py')}:build_epochs")
    batches = [s.make_batch(b) for b in s.data]
    step = train_step_fn(s, batches)
    for i in range(7):
        step(i)
    assert s.scheduler.calls == [("step", 1), ("step", 2)]


# -- mixed precision as the user trains -------------------------------------------------------


def test_bf16_autocast_in_the_engine(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.AMP, "amp.py")
    with Engine(load(path)) as eng:
        r = eng.step_once()
    linear = r.module("0")
    assert linear is not None and linear.dtype == "bfloat16"  # the forward ran under autocast
    assert r.grad_scale is None and math.isfinite(r.loss)


def test_fp16_grad_scaler_records_its_scale(tmp_path: Path) -> None:
    # torch 2.13 runs fp16 autocast and torch.amp.GradScaler("cpu") on CPU (slowly: for
    # reproducing an fp16 setup's numerics, not for speed).
    path = cm.write(tmp_path, cm.AMP, "amp.py")
    with Engine(load(f"{path}:build_fp16")) as eng:
        records = [eng.step_once() for _ in range(3)]
    assert records[0].module("0").dtype == "float16"
    assert all(r.grad_scale == 65536.0 and not r.amp_skipped for r in records)
    assert records[0].total_grad_norm is not None and records[0].total_grad_norm < 1e3  # unscaled


def test_fp16_steps_go_on_after_a_skip_a_failed_step_and_a_rewind_past_the_backward(tmp_path: Path) -> None:
    # The backward's unscale_ marks the optimizer until the scaler's update(); a step that never
    # reaches it (skipped at a breakpoint, failed, rewound) must not make the next unscale_ raise.
    from workbench.engine import StepError

    path = cm.write(tmp_path, cm.AMP, "amp.py")
    scenario = load(f"{path}:build_fp16")
    calls = [0]

    def fails_once(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        calls[0] += 1
        if calls[0] == 1:  # the first step that gets this far (step 0 is skipped before it)
            raise ValueError("before_step fails once")

    from workbench.scenario import replace

    with Engine(replace(scenario, before_step=fails_once), EngineConfig(snapshots=4)) as eng:
        for _ in range(3):
            eng.advance()  # forward, loss, backward (with its unscale_)
        eng.skip_step()
        with pytest.raises(StepError, match="before_step fails once"):
            eng.step_once()
        for _ in range(3):
            eng.advance()
        eng.rewind(1)  # back to the start of this step, after its backward
        records = [eng.step_once() for _ in range(2)]
    assert [r.skipped for r in records] == [False, False]
    assert all(r.grad_scale == 65536.0 and math.isfinite(r.loss) for r in records)


def test_fp16_overflow_is_a_skipped_step_not_a_nan_error(tmp_path: Path) -> None:
    path = cm.write(tmp_path, cm.AMP, "amp.py")
    with Engine(load(f"{path}:build_fp16_overflow")) as eng:
        records = [eng.step_once() for _ in range(4)]
    skipped = [r for r in records if r.amp_skipped]
    assert skipped, [(r.grad_scale, r.total_grad_norm) for r in records]
    scales = [r.grad_scale for r in records]
    assert scales[1] < scales[0]  # halved after the skipped step
    kinds = {f.kind for f in eng.findings}
    assert "amp_overflow" in kinds
    assert not [f for f in eng.findings if f.kind == "nan_inf" and f.phase.value == "backward"]


# -- the TUI ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_tui_charts_loss_parts_of_a_v2_scenario(tmp_path: Path) -> None:
    pytest.importorskip("textual")
    from tests.test_tui import plain, settle
    from workbench.tui.app import create_app
    from workbench.tui.widgets.panels import ChartsPanel

    path = cm.write(tmp_path, cm.TWO_LOSSES, "two.py")
    app = create_app([str(path)], device="cpu", show_volatile=False)
    async with app.run_test(size=(120, 40)) as pilot:
        main = await settle(pilot)
        for _ in range(2):
            await pilot.press("n")
            main = await settle(pilot)
        assert main.view is not None and len(main.view.history) == 2
        assert set(main.view.history[-1].loss_parts) == {"ce", "recon"}
        text = plain(main.query_one(ChartsPanel))
        assert "ce" in text and "recon" in text


@pytest.mark.parametrize(("step_size", "batches", "warned"), [
    (30, 64, True),     # the classic "every 30 epochs", stepped per batch: decays inside epoch 1
    (30, 16, False),    # the first decay comes after the epoch ends: could be meant in batches
    (1000, 2000, False),  # a step count in iterations
    (5, 2, True),       # small counts are epochs whatever the data
])
def test_a_steplr_whose_step_size_reads_as_epochs_is_warned_about(step_size: int, batches: int, warned: bool) -> None:
    from workbench.scenario import Scenario
    from workbench.scenario.loader import load_warnings

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = Scenario(model=model, optimizer=opt, loss_fn=torch.nn.MSELoss(),
                 data=[(torch.randn(4, 2), torch.randn(4, 1))] * batches,
                 scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=step_size))
    found = load_warnings(s)
    assert bool(found) is warned
    if warned:
        assert f"StepLR(step_size={step_size})" in found[0] and f"{batches}-batch epochs" in found[0]
