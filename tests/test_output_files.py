"""Output paths: a command writes over its own earlier outputs only, and a report sent to
stdout comes alone there (the tables go to stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from workbench.cli import main
from workbench.files import workbench_output

MLP = str(ROOT / "scenarios" / "mlp_digits.py")


@pytest.mark.parametrize("argv", [
    ["run", MLP, "--steps", "1", "--json"],
    ["check", MLP, "--steps", "1", "--json"],
    ["check", MLP, "--steps", "1", "--junit"],
    ["summary", MLP, "--json"],
], ids=["run", "check-json", "check-junit", "summary"])
def test_a_file_the_workbench_did_not_write_is_never_written_over(argv, tmp_path: Path, capsys) -> None:
    data = tmp_path / "train.json"
    data.write_text('[{"x": 1, "y": 0}]\n')
    mode = 0o600
    os.chmod(data, mode)
    assert main([*argv, str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data} exists and is not an output of the workbench" in err and "move that file away" in err
    assert data.read_text() == '[{"x": 1, "y": 0}]\n' and (data.stat().st_mode & 0o777) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.json"]  # no temp file either


@pytest.mark.parametrize("argv", [
    ["run", MLP, "--steps", "1", "--json"],
    ["check", MLP, "--steps", "1", "--json"],
    ["check", MLP, "--steps", "1", "--junit"],
    ["summary", MLP, "--json"],
    ["diff", MLP, "--b", "amp", "--batches", "1", "--json"],
], ids=["run", "check-json", "check-junit", "summary", "diff"])
def test_an_earlier_output_or_an_empty_file_is_written_over(argv, tmp_path: Path) -> None:
    out = tmp_path / "out.file"
    out.touch()  # empty: someone made room for the report
    assert main([*argv, str(out)]) in (0, 1)  # diff exits 1 when the variants part
    first = out.read_text()
    assert first and workbench_output(out)
    assert main([*argv, str(out)]) in (0, 1)  # the second run replaces the first's output
    assert out.read_text()


@pytest.mark.parametrize("head", [
    # diff, summary and profile JSON before they said "schema" first
    '{\n  "scenario": "tm_lstm",\n  "device": "cpu",\n  "a": "fp32",\n  "b": "int8",\n',
    '{\n  "scenario": "mlp_digits",\n  "model_class": "MLP",\n  "device": "cpu",\n',
    '{\n  "run": "r",\n  "run_dir": "runs/profile/r",\n  "scenario": "x.py",\n',
    '{\n  "format": "torch-workbench-bench",\n  "version": 1,\n',
])
def test_earlier_outputs_are_recognised_by_their_heads(head: str, tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(head + "  \"more\": 1\n}\n")
    assert workbench_output(path)
    path.write_text('{\n  "scenario": "mine",\n  "rows": [1, 2]\n}\n')
    assert not workbench_output(path)


def test_a_report_on_stdout_comes_alone_and_the_table_goes_to_stderr(tmp_path: Path) -> None:
    env = dict(os.environ, COLUMNS="120")
    done = subprocess.run([sys.executable, "-m", "workbench", "run", MLP, "--steps", "2", "--json", "/dev/stdout"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # nothing but the report
    assert report["schema"] == "workbench.run/1" and len(report["steps"]) == 2
    assert "mlp_digits" in done.stderr and "loss" in done.stderr
