"""`workbench profile`: real traces from real runs, read back by us and by torch-tb-profiler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, SCENARIOS
from workbench.cli import main
from workbench.profiling.analysis import CATEGORIES, PHASES, analyze_file
from workbench.profiling.capture import default_worker_name, profile_scenario, redirect_stderr_fd
from workbench.profiling.options import ProfileOptions
from workbench.profiling.runs import analyze_path
from workbench.profiling.sidecar import METADATA_FILE
from workbench.scenario import load_source

MLP = str(SCENARIOS / "mlp_digits.py")
SMALL = ["--wait", "0", "--warmup", "1", "--active", "2"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real profile of mlp_digits (memory + shapes), shared by the tests below."""
    logdir = tmp_path_factory.mktemp("logs")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["profile", MLP, "--logdir", str(logdir), "--run", "r1", *SMALL, "--memory", "--shapes"])
    assert rc == 0, out.getvalue()
    return logdir / "r1", out.getvalue()


def _trace(run_dir: Path) -> Path:
    (path,) = run_dir.glob("*.pt.trace.json")
    return path


def test_profile_writes_the_tensorboard_layout_and_says_how_to_view_it(profiled: tuple[Path, str]) -> None:
    run_dir, output = profiled
    path = _trace(run_dir)
    assert path.name.startswith(default_worker_name(0) + ".")
    assert f"tensorboard --logdir {run_dir.parent}" in output
    assert "trace size estimate" in output
    meta = json.loads((run_dir / METADATA_FILE).read_text())
    assert meta["scenario"] == MLP and meta["options"]["active"] == 2 and meta["files"] == [path.name]


def test_trace_is_chrome_format_with_our_phase_ranges(profiled: tuple[Path, str]) -> None:
    data = json.loads(_trace(profiled[0]).read_text())
    events = data["traceEvents"]
    names = {e.get("name") for e in events}
    assert set(PHASES) <= names
    steps = sorted(e["name"] for e in events if str(e.get("name", "")).startswith("ProfilerStep#"))
    assert steps == ["ProfilerStep#1", "ProfilerStep#2"]  # wait 0, warmup 1 (step 0), active 2
    assert any(e.get("name") == "[memory]" for e in events)
    assert any("Input Dims" in e.get("args", {}) for e in events if e.get("cat") == "cpu_op")


def test_breakdown_of_a_real_trace_sums_to_the_step_time(profiled: tuple[Path, str]) -> None:
    a = analyze_file(_trace(profiled[0]))
    assert len(a.steps) == 2
    for step in a.steps:
        assert [c for c, _ in step.categories] == list(CATEGORIES)
        assert all(t >= 0 for _, t in step.categories)
        assert sum(t for _, t in step.categories) == pytest.approx(step.duration_us, rel=1e-9)
        assert step.time("cpu_exec") > 0 and step.time("dataloader") > 0
        assert step.time("kernel") == 0  # CPU only
        assert {p for p, _ in step.phases} == set(PHASES)
    assert any(o.name == "aten::addmm" and o.input_shapes for o in a.operators)
    assert a.memory and a.memory[0].device == "cpu" and a.memory[0].peak_bytes > 0
    assert a.gpu_utilization is None


def test_output_shows_breakdown_operators_memory_and_rules(profiled: tuple[Path, str]) -> None:
    output = profiled[1]
    for text in ("step time breakdown", "CPU Exec", "top 15 operators", "aten::", "memory", "optimizer_step"):
        assert text in output
    assert "recommendations" in output or "No rule fired" in output


@pytest.mark.slow
def test_torch_tb_profiler_loads_our_run(profiled: tuple[Path, str], tmp_path: Path) -> None:
    pytest.importorskip("torch_tb_profiler")
    run_dir = profiled[0]
    script = textwrap.dedent(
        """
        import json, sys
        from torch_tb_profiler import io
        from torch_tb_profiler.profiler.loader import RunLoader

        if __name__ == "__main__":
            run = RunLoader("r1", sys.argv[1], io.Cache(sys.argv[2])).load()
            (profile,) = run.get_profiles()
            print(json.dumps({
                "name": run.name,
                "workers": list(run.workers),
                "spans": list(run.get_spans() or []),
                "steps": len(profile.overview["steps"]["rows"]),
                # each row: step label, then (value, tooltip) per category; values sum to the step
                "step_us": [sum(v for v in row[1:] if isinstance(v, (int, float)))
                            for row in profile.overview["steps"]["rows"]],
                "op_rows": len(profile.operation_table_by_name["data"]),
            }))
        """
    )
    cache = tmp_path / "cache"
    cache.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", script, str(run_dir.resolve()), str(cache)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["name"] == "r1"
    assert loaded["workers"] == [default_worker_name(0)]
    assert loaded["spans"] == ["1"]  # the plugin numbers spans from 1
    assert loaded["steps"] == 2
    assert loaded["op_rows"] > 5
    ours = [s.duration_us for s in analyze_file(_trace(run_dir)).steps]
    assert loaded["step_us"] == pytest.approx(ours, rel=1e-6)  # same steps, same lengths as the plugin


def test_analyze_an_existing_directory(profiled: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = profiled[0]
    assert main(["profile", "--analyze", str(run_dir.parent)]) == 0  # a logdir: its newest run
    out = capsys.readouterr().out
    assert "run r1" in out and "step time breakdown" in out and "mlp_digits.py" in out


def test_analyze_writes_json_when_asked(profiled: tuple[Path, str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a.json"
    assert main(["profile", "--analyze", str(profiled[0]), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    (worker,) = data["workers"]
    assert len(worker["steps"]) == 2 and worker["operators"] and data["run"] == "r1"


def test_interrupt_keeps_the_partial_trace(tmp_path: Path) -> None:
    from workbench.profiling.export import ProfileInterrupted, run_profile

    def stop_at_step_3(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(ProfileInterrupted) as info:
        run_profile(load_source(MLP), "cpu", tmp_path, ProfileOptions(wait=0, warmup=1, active=5),
                    run="cut", estimate=False, on_progress=stop_at_step_3)
    (partial,) = info.value.files
    assert info.value.run_dir == tmp_path / "cut"
    assert len(analyze_file(partial).steps) >= 1
    log = tmp_path / "cut" / "profiler-stderr.log"
    assert not log.exists() or log.stat().st_size > 0  # an empty log is removed


def test_analyze_a_missing_directory_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--analyze", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope: no such file or directory" in err and "--verbose" not in err
    assert main(["profile", "--analyze", str(tmp_path)]) == 2
    assert "no *.pt.trace.json" in capsys.readouterr().err


def test_unwritable_logdir_fails_before_profiling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["profile", MLP, "--logdir", str(blocker), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "cannot create directory" in err and str(blocker) in err
    assert "trace size estimate" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "missing SCENARIO"),
        ([MLP, "--analyze", "x"], "not both"),
        ([MLP, "--steps", "2"], "--steps 2 leaves no active step"),
        ([MLP, "--active", "0"], "--active must be >= 1"),
        ([MLP, "--top", "0"], "--top must be >= 1"),
        ([str(ROOT / "nope.py")], "nope.py: no such file"),
    ],
)
def test_bad_arguments_are_exit_2_with_one_message(argv: list[str], message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", *argv]) == 2
    assert message in capsys.readouterr().err


def test_huge_trace_estimate_stops_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["profile", MLP, "--logdir", str(tmp_path), "--run", "big", *SMALL, "--max-trace-mb", "0.01"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "over the 0.01 MB limit" in err and "--force" in err
    assert not (tmp_path / "big").exists()  # nothing written, not even an empty run dir


def test_gzip_trace_with_stack_has_module_ranges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["profile", MLP, "--logdir", str(tmp_path), "--run", "gz", *SMALL, "--gzip", "--stack"])
    assert rc == 0, capsys.readouterr().err
    (path,) = (tmp_path / "gz").glob("*.pt.trace.json.gz")
    a = analyze_file(path)
    assert {m.name for m in a.modules if m.kind == "module"} >= {"MLP_0", "Linear_0"}
    assert a.with_stack


def test_a_scenario_that_fails_leaves_no_empty_run_dir(tmp_path: Path, write_scenario,  # noqa: ANN001
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    broken = write_scenario(
        "import torch\nfrom torch import nn\nfrom workbench import Scenario\n\n"
        "class Boom(nn.Linear):\n    def forward(self, x):\n        raise RuntimeError('boom in forward')\n\n"
        "def build(device):\n    m = Boom(4, 2)\n"
        "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
        "                    loss_fn=nn.MSELoss(), data=[(torch.randn(3, 4), torch.randn(3, 2))])\n",
        "boom.py",
    )
    logdir = tmp_path / "logs"
    assert main(["profile", str(broken), "--logdir", str(logdir), "--run", "x", *SMALL]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:7: the forward phase of step 0 raised RuntimeError: boom in forward" in err
    assert not (logdir / "x").exists()


def test_a_failure_at_step_k_keeps_the_steps_before_it(tmp_path: Path, write_scenario,  # noqa: ANN001
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Fails at step 3 of 5 (0 wait, 1 warm-up, 4 active): steps 1-2 are in the trace, and the
    error names the step, the file:line and where the partial trace is."""
    broken = write_scenario(
        "import torch\nfrom torch import nn\nfrom workbench import Scenario\n\n"
        "class Late(nn.Linear):\n    calls = 0\n    def forward(self, x):\n        Late.calls += 1\n"
        "        if Late.calls > 3:  # steps 0-2 run (the probe step has a fresh build); step 3 raises\n"
        "            raise RuntimeError('boom at step 3')\n        return super().forward(x)\n\n"
        "def build(device):\n    m = Late(4, 2)\n"
        "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
        "                    loss_fn=nn.MSELoss(), data=[(torch.randn(3, 4), torch.randn(3, 2))])\n",
        "late.py",
    )
    logdir = tmp_path / "logs"
    assert main(["profile", str(broken), "--logdir", str(logdir), "--run", "x", "--wait", "0", "--warmup", "1",
                 "--active", "4"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{broken}:10: the forward phase of step 3 raised RuntimeError: boom at step 3" in err
    (trace,) = (logdir / "x").glob("*.pt.trace.json")
    assert "traced and kept" in err and str(trace) in err.replace(" ", "")
    a = analyze_file(trace)
    # The warm-up step 0 is dropped; steps 1-2 are whole; step 3's range ends at the error.
    assert [s.name for s in a.steps] == ["ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#3"]
    assert json.loads(trace.read_text())["traceEvents"]


def test_a_failing_phase_is_the_engines_step_error_with_the_range_and_the_line(
        write_scenario) -> None:  # noqa: ANN001
    """The profiled loop's failure is the engine's StepError (phase, step, the user's frame) that
    names the profiler range; a failure fetching the batch is the dataloader range and data loading."""
    from workbench.engine import Phase, StepError
    from workbench.profiling.errors import ProfileStepError
    from workbench.profiling.loop import train_steps

    broken = write_scenario(
        "import torch\nfrom torch import nn\nfrom workbench import Scenario\n\n"
        "class Boom(nn.Linear):\n    def forward(self, x):\n        raise RuntimeError('boom in forward')\n\n"
        "class Data:\n    def __iter__(self):\n        yield torch.randn(3, 4), torch.randn(3, 2)\n"
        "        raise OSError('disk gone')\n\n"
        "def build(device, boom=True):\n    m = Boom(4, 2) if boom else nn.Linear(4, 2)\n"
        "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
        "                    loss_fn=nn.MSELoss(), data=Data())\n\n"
        "def build_ok(device):\n    return build(device, boom=False)\n",
        "boom.py",
    )
    with pytest.raises(ProfileStepError) as info:
        train_steps(load_source(str(broken)).build("cpu"), 3)
    err = info.value
    assert isinstance(err, StepError) and isinstance(err.original, RuntimeError)
    assert (err.phase, err.range_name, err.step, err.line) == (Phase.FORWARD, "forward", 0, 7)
    assert err.user_frame == f"{broken}:7 in forward" and not err.data_loading
    assert str(err) == (f"{broken}:7: the forward phase of step 0 raised RuntimeError: boom in forward. "
                        "Fix the scenario (run with --verbose for the full traceback).")

    with pytest.raises(ProfileStepError) as info:
        train_steps(load_source(f"{broken}:build_ok").build("cpu"), 3)
    err = info.value
    # The engine fetches a batch at the start of its forward phase: so does this error.
    assert (err.phase, err.range_name, err.step, err.line) == (Phase.FORWARD, "dataloader", 1, 12)
    assert err.data_loading and err.stage == "data loading" and isinstance(err.original, OSError)
    assert str(err).startswith(f"{broken}:12: the dataloader phase of step 1 raised OSError: disk gone.")


def test_one_worker_file_per_rank_in_the_same_run(tmp_path: Path) -> None:
    """What a DDP launcher does: each rank calls profile_scenario with its rank."""
    source = load_source(MLP)
    opts = ProfileOptions(wait=0, warmup=1, active=1)
    for rank in (0, 1):
        (written,) = profile_scenario(source.build("cpu"), tmp_path / "ddp", opts, rank=rank)
        assert f"_rank{rank}." in written.name
    result = analyze_path(tmp_path / "ddp")
    assert sorted(w.worker for w in result.workers) == [default_worker_name(0), default_worker_name(1)]


def test_stderr_redirect_captures_fd2_and_restores_it(tmp_path: Path) -> None:
    log = tmp_path / "err.log"
    before = os.fstat(2)
    with redirect_stderr_fd(log):
        os.write(2, b"[W profiler_start] native noise\n")
    assert log.read_text() == "[W profiler_start] native noise\n"
    after = os.fstat(2)
    assert (before.st_ino, before.st_dev) == (after.st_ino, after.st_dev)


@pytest.mark.slow
def test_tensorboard_serves_the_run_and_stops(profiled: tuple[Path, str]) -> None:
    pytest.importorskip("tensorboard")
    from workbench.profiling.tensorboard import start_tensorboard

    tb = start_tensorboard(profiled[0].parent)
    try:
        base = tb.url.split("/#")[0]
        # The plugin scans the logdir in a background thread and hands each loaded run
        # to a second thread through a queue. "loading" is false both before the first
        # scan and between a load finishing and the run being added, so poll for the
        # run itself, not for "loading" to drop.
        deadline = time.monotonic() + 120
        runs: dict = {"runs": []}
        while "r1" not in runs["runs"] and time.monotonic() < deadline:
            with urllib.request.urlopen(f"{base}/data/plugin/pytorch_profiler/runs", timeout=60) as resp:
                runs = json.loads(resp.read())
            time.sleep(0.5)
        assert "r1" in runs["runs"], runs
    finally:
        tb.stop()
    assert tb.process.poll() is not None


@pytest.mark.slow
def test_open_tensorboard_serves_until_stopped_and_leaves_nothing_running(profiled: tuple[Path, str]) -> None:
    """The CLI path: start, print the URL and pid, stop on SIGTERM (Ctrl-C's twin), exit 0."""
    import re
    import signal

    pytest.importorskip("tensorboard")
    cmd = [sys.executable, "-m", "workbench", "profile", "--analyze", str(profiled[0]), "--open-tensorboard"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(lines)
        match = re.search(r"at (http://127\.0\.0\.1:\d+)/#pytorch_profiler \(pid (\d+)", text)
        assert match, text[-2000:]
        with urllib.request.urlopen(f"{match.group(1)}/data/plugins_listing", timeout=30) as resp:
            assert b"pytorch_profiler" in resp.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    child = int(match.group(2))
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # reaped by the CLI's tb.stop(); allow the kernel a moment
            os.kill(child, 0)
            time.sleep(0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_profile_of_cnn_image_has_kernel_time(tmp_path: Path) -> None:
    from workbench.profiling.export import run_profile

    result = run_profile(load_source(str(SCENARIOS / "cnn_image.py")), "cuda", tmp_path,
                         ProfileOptions(wait=1, warmup=1, active=3, memory=True), run="gpu")
    (a,) = analyze_path(result.run_dir).workers
    assert a.has_device_events and a.devices
    for step in a.steps:
        assert step.time("kernel") > 0
        assert sum(t for _, t in step.categories) == pytest.approx(step.duration_us, rel=1e-9)
    assert any(o.self_device_us > 0 for o in a.operators)
    assert any(m.device.startswith("cuda") for m in a.memory)


def test_findings_of_a_run_report_join_the_recommendations(profiled: tuple[Path, str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    dead_relu = str(ROOT / "scenarios/broken/dead_relu.py")
    report = tmp_path / "dead.json"
    assert main(["run", dead_relu, "--steps", "3", "--json", str(report)]) == 0
    capsys.readouterr()
    # Another scenario's findings (modules mlp_digits does not have) are refused.
    assert main(["profile", "--analyze", str(profiled[0]), "--findings", str(report)]) == 2
    assert "a report of scenario 'dead_relu', but the run analysed" in capsys.readouterr().err
    out_json = tmp_path / "analysis.json"
    assert main(["profile", dead_relu, "--logdir", str(tmp_path / "logs"), "--run", "dead", *SMALL]) == 0
    capsys.readouterr()
    assert main(["profile", "--analyze", str(tmp_path / "logs" / "dead"), "--findings", str(report),
                 "--json", str(out_json)]) == 0
    assert "engine:dead_units" in capsys.readouterr().out
    recs = json.loads(out_json.read_text())["recommendations"]
    (dead,) = [r for r in recs if r["rule"] == "engine:dead_units"]
    assert "hidden.act" in dead["message"] and dead["source"] == "engine"
    # Not a run report, or not JSON: refused with the file named, before any work.
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "workbench.bench/1"}')
    assert main(["profile", "--analyze", str(profiled[0]), "--findings", str(bad)]) == 2
    assert f"{bad}: not a `workbench run --json` report" in " ".join(capsys.readouterr().err.split())
    bad.write_text("{")
    assert main(["profile", "--analyze", str(profiled[0]), "--findings", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_a_reused_run_name_is_refused_and_append_analyses_only_the_new_traces(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = str(SCENARIOS / "regression_mse.py")
    assert main(["profile", MLP, "--logdir", str(tmp_path), "--run", "same", *SMALL]) == 0
    first = sorted(p.name for p in (tmp_path / "same").glob("*.pt.trace.json"))
    capsys.readouterr()
    # Another scenario under the same name: refused before any work, nothing added.
    assert main(["profile", other, "--logdir", str(tmp_path), "--run", "same", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "already holds 1 trace file(s) of an earlier profile of mlp_digits" in err and "--append" in err
    assert sorted(p.name for p in (tmp_path / "same").glob("*.pt.trace.json")) == first
    # --append adds it; the analysis (now and with --analyze) reads the new traces only.
    assert main(["profile", other, "--logdir", str(tmp_path), "--run", "same", *SMALL, "--append"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "earlier profile in this run (added with --append) not analysed" in out
    analysis = analyze_path(tmp_path / "same")
    assert len(analysis.workers) == 1 and Path(analysis.workers[0].path).name not in first
    assert analysis.earlier_traces == tuple(first)
    assert analysis.scenario is not None and analysis.scenario.endswith("regression_mse.py")


def test_a_users_file_under_the_sidecars_name_is_not_written_over(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--run into a directory of the user's that holds a workbench-profile.json of their own: refused
    before any work (it was replaced by the run's sidecar)."""
    run = tmp_path / "mine"
    run.mkdir()
    theirs = run / "workbench-profile.json"
    theirs.write_text('{"mine": true}\n')
    assert main(["profile", MLP, "--logdir", str(tmp_path), "--run", "mine", *SMALL]) == 2
    err = capsys.readouterr().err
    assert f"{theirs} exists and is not the workbench's" in err
    assert theirs.read_text() == '{"mine": true}\n' and sorted(p.name for p in run.iterdir()) == [theirs.name]
