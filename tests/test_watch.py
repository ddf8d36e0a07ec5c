"""workbench.watch on loops the test owns: findings, reports, breakpoints, leaving no trace."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import workbench
from tests.watch_models import DetachedHead, DictLM, dict_batches, hook_count
from workbench.engine.records import NAN_INF, NO_GRADIENT, Phase
from workbench.errors import OutputPathError
from workbench.session.watch import breaks as watch_breaks


def _train_dict_lm(model: DictLM, wb_kwargs: dict, steps: int = 4) -> tuple[workbench.watch, torch.optim.Optimizer]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with workbench.watch(model, opt, **wb_kwargs) as wb:
        for batch in dict_batches(steps):
            loss = model(**batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad()
            wb.log(loss=loss, lr=opt.param_groups[0]["lr"])
    return wb, opt


def test_a_user_loop_with_dict_batches_names_the_nan_root_module_in_findings_and_report(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DictLM(poison=True)
    report = tmp_path / "exp1.json"
    wb, _ = _train_dict_lm(model, {"every": 1, "report": report})
    roots = [f for f in wb.findings if f.kind == NAN_INF and f.step == 0]
    assert roots and roots[0].module == "poison" and roots[0].phase is Phase.FORWARD
    assert "from finite inputs" in roots[0].message
    data = json.loads(report.read_text())
    assert data["schema"] == "workbench.run/1" and data["summary"]["stopped_by"] == "finished"
    assert data["summary"]["steps_done"] == 4 and len(data["steps"]) == 4
    assert data["findings"][0]["kind"] == NAN_INF and data["findings"][0]["module"] == "poison"
    assert data["steps"][0]["loss_source"] == 'outputs["loss"]'
    assert data["steps"][0]["logged"]["lr"] == pytest.approx(1e-3)
    assert {m["name"] for m in data["steps"][0]["modules"]} >= {"embed", "body.0", "poison", "head"}


def test_a_healthy_loop_records_every_step_with_stats_every_kth() -> None:
    torch.manual_seed(0)
    model = DictLM()
    wb, _ = _train_dict_lm(model, {"every": 2}, steps=5)
    assert [r.step for r in wb.history] == [0, 1, 2, 3, 4]
    assert [r.measured for r in wb.history] == [True, False, True, False, True]
    assert all(r.loss is not None and r.loss > 0 for r in wb.history)
    assert all(r.total_grad_norm is not None for r in wb.history)
    assert wb.history[0].modules and not wb.history[1].modules
    assert wb.history[0].param("head.weight").update_norm > 0
    assert not [f for f in wb.findings if f.severity == "error"]
    assert wb.logged[0]["loss"] == pytest.approx(wb.history[0].loss)


def test_no_module_hook_is_armed_on_a_step_that_takes_no_stats() -> None:
    model = DictLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = hook_count(model, opt)
    counts = []
    with workbench.watch(model, opt, every=2) as wb:
        for batch in dict_batches(4):
            counts.append(hook_count(model, opt) - before)
            model(**batch)["loss"].backward()
            opt.step()
            opt.zero_grad()
    # Steps 0 and 2 are measured: the probe's two hooks per module plus the watch's root hook; steps
    # 1 and 3 only have the watch's two root hooks (the loss the model returns) and the step hooks.
    unmeasured = 2 + 2
    modules = len(list(model.modules()))
    assert counts[1] == counts[3] == unmeasured
    assert counts[2] == unmeasured + 2 * modules + 1
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert counts[0] == counts[2] + linears  # the first measured step also checks the input scale
    assert hook_count(model, opt) == before
    assert wb.closed


def test_every_hook_is_removed_on_close_and_when_the_loop_raises() -> None:
    model = DictLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    flags = [m.training for m in model.modules()]
    before = hook_count(model, opt)
    with pytest.raises(RuntimeError, match="boom"):
        with workbench.watch(model, opt, every=1):
            batch = dict_batches(1)[0]
            model(**batch)["loss"].backward()
            assert hook_count(model, opt) > before
            raise RuntimeError("boom")
    assert hook_count(model, opt) == before
    model.eval()  # the user's own mode changes stay theirs
    wb = workbench.watch(model, opt, every=1)
    wb.close()
    assert hook_count(model, opt) == before
    assert [m.training for m in model.modules()] == [False] * len(flags)


def test_break_is_raised_before_the_optimizer_step_and_the_weights_are_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DictLM(poison=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = tmp_path / "r.json"
    with pytest.raises(workbench.Break) as caught:
        with workbench.watch(model, opt, every=1, break_on="nan_inf", report=report):
            batch = dict_batches(1)[0]
            model(**batch)["loss"].backward()
            opt.step()
    hit = caught.value.hit
    assert hit.step == 0 and hit.phase is Phase.BACKWARD and caught.value.finding.module == "poison"
    assert all(torch.equal(weights[n], p.detach()) for n, p in model.named_parameters())
    data = json.loads(report.read_text())
    assert data["summary"]["stopped_by"] == "breakpoint"
    assert data["summary"]["break_hit"]["finding"]["module"] == "poison"
    assert data["steps"][0]["skipped"] is True


def test_on_break_log_records_and_the_loop_goes_on() -> None:
    torch.manual_seed(0)
    seen = []
    wb, _ = _train_dict_lm(DictLM(poison=True), {"every": 1, "break_on": ["nan_inf"], "on_break": "log",
                                                 "on_finding": seen.append}, steps=3)
    assert len(wb.history) == 3 and wb.break_hit is not None and wb.break_hit.step == 0
    assert [h.step for h in wb.break_hits] == [0, 1, 2]  # logged each time, never stopped
    assert seen and seen == [f for f in wb.findings]


def test_on_break_pdb_stops_with_the_finding_and_its_module_at_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    import pdb

    out = io.StringIO()
    script = io.StringIO("p finding.kind, module_name, type(module).__name__\np sorted(params)\nc\n")
    monkeypatch.setattr(watch_breaks, "_make_pdb", lambda: pdb.Pdb(stdin=script, stdout=out))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")  # a poisoned weight: its module is the root
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with workbench.watch(model, opt, every=1, break_on="nan_inf", on_break="pdb") as wb:
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    text = out.getvalue()
    assert "('nan_inf', '1', 'Linear')" in text and "['bias', 'weight']" in text
    assert len(wb.history) == 1 and not wb.history[0].skipped  # "c" continued the step


def test_a_detached_head_gets_no_gradient_on_the_body() -> None:
    model = DetachedHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with workbench.watch(model, opt, every=1) as wb:
        for _ in range(2):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    missing = {f.parameter for f in wb.findings if f.kind == NO_GRADIENT}
    assert missing == {"body.weight", "body.bias"}


def test_wb_step_marks_steps_without_an_optimizer() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with workbench.watch(model, every=1) as wb:
        for _ in range(3):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            wb.log(loss=loss)
            wb.step()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
    assert [r.step for r in wb.history] == [0, 1, 2]
    assert all(r.loss is not None and r.modules and r.params for r in wb.history)
    assert wb.history[0].loss_source == "wb.log"
    assert not [f for f in wb.findings if f.severity == "error"]
    with pytest.raises(RuntimeError, match="closed"):
        wb.step()


def test_two_optimizers_make_one_step_per_round() -> None:
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
    disc = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    both = nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    with workbench.watch(both, [opt_g, opt_d], every=1) as wb:
        for _ in range(3):
            fake = gen(torch.randn(8, 2))
            d_loss = disc(fake.detach()).mean() - disc(torch.randn(8, 2)).mean()
            d_loss.backward()
            opt_d.step()
            opt_d.zero_grad()
            g_loss = -disc(fake).mean()
            g_loss.backward()
            opt_g.step()
            opt_g.zero_grad()
            opt_d.zero_grad()
    assert [r.step for r in wb.history] == [0, 1, 2]
    rec = wb.history[0]
    assert {p.name for p in rec.params} == {n for n, _ in both.named_parameters()}
    assert all(p.update_norm is not None for p in rec.params)
    assert {m.name for m in rec.modules} >= {"gen.0", "disc.2"}
    assert not [f for f in wb.findings if f.kind == NO_GRADIENT]


def test_the_report_never_replaces_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    theirs = tmp_path / "results.json"
    theirs.write_text('{"accuracy": 0.9}')
    with pytest.raises(OutputPathError, match="not a workbench report"):
        workbench.watch(model, report=theirs)
    assert theirs.read_text() == '{"accuracy": 0.9}'
    assert hook_count(model) == 0
    ours = tmp_path / "again.json"
    workbench.watch(model, report=ours).close()
    workbench.watch(model, report=ours).close()  # a previous report is replaced
    assert json.loads(ours.read_text())["summary"]["steps_done"] == 0


def test_a_keyboard_interrupt_leaves_a_partial_report(tmp_path: Path) -> None:
    model = DictLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    report = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        with workbench.watch(model, opt, every=1, report=report):
            for i, batch in enumerate(dict_batches(5)):
                if i == 3:
                    raise KeyboardInterrupt
                model(**batch)["loss"].backward()
                opt.step()
                opt.zero_grad()
    data = json.loads(report.read_text())
    assert data["summary"]["stopped_by"] == "interrupted" and data["summary"]["steps_done"] == 3


def test_bad_arguments_say_what_was_expected() -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="on_break must be one of"):
        workbench.watch(model, on_break="stop")
    with pytest.raises(ValueError, match="serve=True"):
        workbench.watch(model, on_break="wait")
    with pytest.raises(ValueError, match="unknown finding kind"):
        workbench.watch(model, break_on="nan_everywhere")
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        workbench.watch(model, "sgd")
    assert hook_count(model) == 0


def test_wrapped_models_are_hooked_underneath() -> None:
    inner = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    wrapped = nn.DataParallel(inner)  # on a CPU-only machine it runs the bare module
    opt = torch.optim.SGD(inner.parameters(), lr=0.1)
    with workbench.watch(wrapped, opt, every=1) as wb:
        wrapped(torch.randn(8, 4)).mean().backward()
        opt.step()
    assert wb.model is inner and {m.name for m in wb.history[0].modules} >= {"0", "1"}
    assert hook_count(inner, opt) == 0


def test_tensorboard_gets_the_run_scalars_and_the_logged_ones(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train_dict_lm(DictLM(), {"every": 1, "tensorboard": tmp_path / "tb"}, steps=2)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "grad_norm/total", "log/lr", "lr/group0"} <= tags
    assert any(t.startswith("weights/") for t in acc.Tags()["histograms"])


def _poll_until(conn, want, timeout: float = 20.0) -> list:
    import time

    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += conn.poll(0.1)
        if any(want(m) for m in seen):
            return seen
    raise AssertionError(f"not seen within {timeout} s; got {[type(m).__name__ for m in seen]}")


def test_a_live_client_sees_the_steps_and_a_wait_breakpoint_holds_the_script_until_continue(tmp_path: Path) -> None:
    import threading

    from workbench.engine.records import BreakHit
    from workbench.session import protocol as P
    from workbench.session.transport import connect

    torch.manual_seed(0)
    model = DictLM(poison=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = model.head.weight.detach().clone()
    run_dir = tmp_path / "run"
    wb = workbench.watch(model, opt, every=1, break_on="nan_inf", on_break="wait",
                         serve=f"unix:{tmp_path / 's.sock'}", run_dir=run_dir)
    progress: list[int] = []

    def train() -> None:
        with wb:
            for batch in dict_batches(2):
                model(**batch)["loss"].backward()
                opt.step()
                opt.zero_grad()
                progress.append(wb.step_index)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    with connect(run_dir) as conn:
        seen = _poll_until(conn, lambda m: isinstance(m, BreakHit))
        hello = next(m for m in seen if isinstance(m, P.Hello))
        assert hello.host == "watch" and "poison" in {n.name for n in hello.modules}
        assert "skip_step" in hello.commands and "rewind" not in hello.commands
        hit = next(m for m in seen if isinstance(m, BreakHit))
        assert hit.step == 0 and hit.finding is not None and hit.finding.module == "poison"
        assert any(isinstance(m, P.Findings) for m in seen)
        thread.join(0.5)
        assert thread.is_alive() and progress == []  # held before its optimizer step
        assert torch.equal(model.head.weight.detach(), weights)
        conn.send(P.SkipStep())
        seen = _poll_until(conn, lambda m: isinstance(m, P.Step) and m.record.step == 0)
        # Step 1 is now held at the same breakpoint (its record only comes when it ends).
        assert torch.equal(model.head.weight.detach(), weights)  # the skipped update changed nothing
        conn.send(P.SetBreakpoints(()))  # no more stops: the script runs to its end
        conn.send(P.Continue())
        thread.join(20)
        assert not thread.is_alive()
    assert [r.skipped for r in wb.history] == [True, False] and progress == [1, 2]
    assert [h.step for h in wb.break_hits] == [0, 1]
    assert (run_dir / "session.jsonl").exists()
    # The loop went on past its wait breakpoints and ended by itself: the session says so.
    ended = [line for line in (run_dir / "session.jsonl").read_text().splitlines() if '"type": "ended"' in line
             or '"type":"ended"' in line]
    assert ended and '"finished"' in ended[-1]


def test_a_client_pauses_between_steps_asks_for_a_module_sample_and_continues_one_step(tmp_path: Path) -> None:
    import threading

    from workbench.session import protocol as P
    from workbench.session.transport import connect

    torch.manual_seed(0)
    model = DictLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run_dir = tmp_path / "run"
    wb = workbench.watch(model, opt, every=1, serve=f"unix:{tmp_path / 's.sock'}", run_dir=run_dir)
    done: list[int] = []

    def train() -> None:
        with wb:
            for i, batch in enumerate(dict_batches(4)):
                model(**batch)["loss"].backward()
                opt.step()  # a pause holds the loop in here, once the step's update is done
                opt.zero_grad()
                done.append(i)

    with connect(run_dir) as conn:
        conn.send(P.Pause())
        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        _poll_until(conn, lambda m: isinstance(m, P.Progress) and m.paused)
        assert done == [] and model.head.weight.grad is not None  # held at the end of step 0
        conn.send(P.RequestSample(id="s1", module="head", kind="activation"))
        seen = _poll_until(conn, lambda m: isinstance(m, P.Sample))
        sample = next(m for m in seen if isinstance(m, P.Sample))
        assert sample.id == "s1" and sample.error is None and sum(sample.counts) > 0
        conn.send(P.Continue(steps=1))
        _poll_until(conn, lambda m: isinstance(m, P.Progress) and m.paused and m.step == 2)
        assert done == [0]  # one more step ran, and it is held at the end of step 1
        conn.send(P.Continue())
        thread.join(20)
        assert not thread.is_alive() and done == [0, 1, 2, 3]


def test_a_loop_paused_by_a_client_that_leaves_goes_on_by_itself(tmp_path: Path) -> None:
    """Nobody is left to say continue: a client's pause must not hang the user's training."""
    import threading

    from workbench.session import protocol as P
    from workbench.session.transport import connect

    torch.manual_seed(0)
    model = DictLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run_dir = tmp_path / "run"
    wb = workbench.watch(model, opt, every=1, serve=f"unix:{tmp_path / 's.sock'}", run_dir=run_dir)
    done: list[int] = []

    def train() -> None:
        with wb:
            for i, batch in enumerate(dict_batches(3)):
                model(**batch)["loss"].backward()
                opt.step()
                opt.zero_grad()
                done.append(i)

    with connect(run_dir) as conn:
        conn.send(P.Pause())
        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        _poll_until(conn, lambda m: isinstance(m, P.Progress) and m.paused)
        assert done == []
    thread.join(20)  # the client closed while the loop was paused
    assert not thread.is_alive() and done == [0, 1, 2]


CRASHING_SCRIPT = """
import sys, torch
from torch import nn
import workbench
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
wb = workbench.watch(model, opt, every=1, report=sys.argv[1])  # no `with`, no close()
for i in range(5):
    model(torch.randn(8, 4)).mean().backward()
    opt.step(); opt.zero_grad()
    if i == 2:
        raise {exc}
"""


@pytest.mark.slow  # a child process importing torch
@pytest.mark.parametrize("exc, stopped_by", [("ValueError('the script crashed')", "error"),
                                             ("KeyboardInterrupt", "interrupted")])
def test_a_script_that_dies_without_closing_the_watch_still_leaves_its_report(
        tmp_path: Path, exc: str, stopped_by: str) -> None:
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(CRASHING_SCRIPT.format(exc=exc))
    report = tmp_path / "crash.json"
    proc = subprocess.run([sys.executable, str(script), str(report)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    data = json.loads(report.read_text())
    assert data["summary"]["stopped_by"] == stopped_by and data["summary"]["steps_done"] == 3
    assert data["scenario"] == str(script)


def test_a_layer_unfrozen_mid_run_is_measured_and_counted_from_then_on() -> None:
    """Progressive unfreezing: a frozen backbone made trainable and added with add_param_group was
    never measured, and the total gradient norm left its gradients out."""
    import workbench

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.Adam(model[2].parameters(), 1e-2)
    true_norms = []
    with workbench.watch(model, opt, every=2) as wb:
        for i in range(6):
            if i == 3:
                model[0].requires_grad_(True)
                opt.add_param_group({"params": list(model[0].parameters()), "lr": 1e-3})
            loss = nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.randint(0, 2, (4,)))
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            true_norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
            opt.step()
            opt.zero_grad()
    history = wb.history
    assert [r.total_grad_norm for r in history] == pytest.approx(true_norms, rel=1e-5)
    assert {p.name for p in history[2].params} == {"2.weight", "2.bias"}  # measured, still frozen
    assert {p.name for p in history[4].params} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(p.update_norm is not None and p.update_norm > 0 for p in history[4].params)


def test_an_error_left_from_before_the_watch_is_not_the_runs_at_exit(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -i` and notebooks keep the last uncaught error in sys.last_value: a typo before the
    watch began must not turn a healthy run that was never closed into one that 'ended in error'."""
    import sys

    import workbench

    monkeypatch.setattr(sys, "last_value", NameError("name 'undefined_typo' is not defined"), raising=False)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    report = tmp_path / "watch.json"
    wb = workbench.watch(model, opt, every=1, report=report)
    for _ in range(3):
        model(torch.randn(8, 4)).mean().backward()
        opt.step()
        opt.zero_grad()
    wb._at_exit()  # what the interpreter's exit runs for a watch never closed
    summary = json.loads(report.read_text())["summary"]
    assert summary["stopped_by"] == "finished" and summary["steps_done"] == 3
    later = ValueError("raised while the watch was open")
    monkeypatch.setattr(sys, "last_value", later)
    wb2 = workbench.watch(model, opt, every=1, report=tmp_path / "second.json")
    monkeypatch.setattr(sys, "last_value", RuntimeError("the script's own crash"))
    wb2._at_exit()
    assert json.loads((tmp_path / "second.json").read_text())["summary"]["stopped_by"] == "error"


def test_a_nan_on_an_unmeasured_step_points_at_every_1_not_at_a_replay_the_loop_cannot_do() -> None:
    """A user loop has no replay: the finding says how this watch would see where it starts."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with workbench.watch(model, opt, every=4) as wb:
        for step in range(3):
            x = torch.randn(8, 4)
            if step == 1:  # an unmeasured step (every=4 measures steps 0, 4, ...)
                x[0, 0] = float("nan")
            loss = model(x).pow(2).mean()
            wb.set_loss(loss)  # as the Lightning callback does, before backward
            loss.backward()
            opt.step()
            opt.zero_grad()
    (nan,) = [f for f in wb.findings if f.kind == "nan_inf" and f.step == 1]
    assert "every=1" in nan.message and "one step in 4" in nan.message
    assert "workbench run" not in nan.message and "--replay" not in nan.message


def test_a_wait_breakpoint_on_a_rank_other_than_0_is_logged_and_the_loop_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rank 1 of 2: it serves no session (rank 0's), so nobody could tell it to go on.
    from workbench.session.watch import loop

    monkeypatch.setattr(loop, "current_rank", lambda: (1, 2))
    torch.manual_seed(0)
    wb, _ = _train_dict_lm(DictLM(poison=True), {
        "every": 1, "break_on": ["nan_inf"], "on_break": "wait", "serve": f"unix:{tmp_path / 's.sock'}",
        "run_dir": tmp_path / "run", "report": tmp_path / "r.json"}, steps=3)
    assert [h.step for h in wb.break_hits] == [0, 1, 2]  # every step hit, none held
    assert wb.step_index == 3 and not any(r.skipped for r in wb.history)
    assert not (tmp_path / "s.sock").exists() and wb.address is None
    report = json.loads((tmp_path / "r.rank1.json").read_text())
    assert len(report["steps"]) == 3


def test_with_the_loops_grad_scaler_the_output_gradient_norms_are_unscaled() -> None:
    # fp16 autocast and torch.amp.GradScaler("cpu") run on CPU in torch 2.13 (slowly).
    def run(pass_scaler: bool) -> list:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu")
        g = torch.Generator().manual_seed(1)
        with workbench.watch(model, opt, every=1, scaler=scaler if pass_scaler else None) as wb:
            for _ in range(2):
                x, y = torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = nn.functional.mse_loss(model(x).float(), y)
                scaler.scale(loss).backward()
                wb.log(loss=loss)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad()
        return list(wb.history)

    plain, unscaled = run(False), run(True)
    assert [r.grad_scale for r in unscaled] == [65536.0, 65536.0] and plain[0].grad_scale is None
    for a, b in zip(plain, unscaled):
        ga, gb = a.module("0").grad_norm, b.module("0").grad_norm
        assert ga is not None and gb is not None
        assert ga == pytest.approx(65536.0 * gb, rel=1e-5)  # without the scaler they carry the scale
        assert a.total_grad_norm == pytest.approx(b.total_grad_norm, rel=1e-6)  # parameters: unscaled either way


def test_steps_the_grad_scaler_skips_are_their_own_skipped_steps() -> None:
    """scaler.step() on inf gradients calls no optimizer.step(), so no step hook fires: those
    iterations merged into the next real step (one loss the mean of seven, the scale of the wrong
    backward) and the overflow read as a NaN in the model. Each is now its own skipped step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)  # overflows fp16 until it has halved enough
    g = torch.Generator().manual_seed(1)
    seen = []
    with workbench.watch(model, opt, every=2, scaler=scaler) as wb:
        for _ in range(20):
            x, y = torch.randn(16, 8, generator=g), 100 * torch.randn(16, 1, generator=g)
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            wb.log(loss=loss)
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            seen.append((loss.item(), scale, scaler.get_scale() < scale))
            opt.zero_grad()
    history = wb.history
    assert len(history) == 20 and any(skipped for *_, skipped in seen) and not all(s for *_, s in seen)
    assert [r.skipped for r in history] == [skipped for *_, skipped in seen]
    assert [r.amp_skipped for r in history] == [skipped for *_, skipped in seen]
    assert [r.loss for r in history] == pytest.approx([loss for loss, *_ in seen], rel=1e-6)
    assert [r.grad_scale for r in history] == [scale for _, scale, _ in seen]
    kinds = {f.kind for f in wb.findings}
    assert "amp_overflow" in kinds and "nan_inf" not in kinds


def test_scaler_must_be_a_grad_scaler() -> None:
    with pytest.raises(TypeError, match="GradScaler"):
        workbench.watch(nn.Linear(2, 1), scaler=2.0)


@pytest.mark.parametrize("every", [1, 2])
def test_with_gradient_accumulation_the_steps_loss_is_the_mean_of_its_micro_batches(every: int) -> None:
    # The model returns its loss (outputs["loss"]); the loop scales it by 1/4 for the backward.
    torch.manual_seed(0)
    model = DictLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = dict_batches(12)
    expected = []
    with workbench.watch(model, opt, every=every) as wb:
        micro = []
        for i, batch in enumerate(batches):
            loss = model(**batch)["loss"]
            micro.append(loss.item())
            (loss / 4).backward()
            if (i + 1) % 4 == 0:
                opt.step()
                opt.zero_grad()
                expected.append(sum(micro) / 4)
                micro = []
    assert len(wb.history) == 3
    assert [r.loss for r in wb.history] == pytest.approx(expected, rel=1e-6)
    assert {r.loss_source for r in wb.history} == {'outputs["loss"]'}


def test_a_loss_logged_before_the_step_wins_over_the_models_and_is_averaged_too() -> None:
    torch.manual_seed(0)
    model = DictLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with workbench.watch(model, opt, every=2) as wb:
        micro = []
        for i, batch in enumerate(dict_batches(8)):
            loss = model(**batch)["loss"] + 1.0  # the loop's own loss: the model's plus a term
            micro.append(loss.item())
            (loss / 2).backward()
            wb.log(loss=loss)
            if i % 2 == 1:
                opt.step()
                opt.zero_grad()
                expected.append(sum(micro) / 2)
                micro = []
    assert [r.loss for r in wb.history] == pytest.approx(expected, rel=1e-6)
    assert {r.loss_source for r in wb.history} == {"wb.log"}
    assert [v["loss"] for v in wb.logged] == pytest.approx(expected, rel=1e-6)
