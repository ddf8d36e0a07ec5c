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


WRITES_ITS_OWN = """
import torch
from torch import nn
from workbench import Scenario

def build(device):
    with open({target!r}, "w") as f:
        f.write("the scenario's own metrics\\n")
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
"""


@pytest.mark.parametrize("argv", [
    ["run", "{scenario}", "--steps", "1", "--json"],
    ["summary", "{scenario}", "--json"],
], ids=["run", "summary"])
def test_a_file_that_appears_while_the_command_runs_is_not_written_over(argv, tmp_path: Path, capsys) -> None:
    """The path was free when it was checked; the scenario wrote its own file there meanwhile. The
    report is kept beside it, under a free name, and the command says so (exit 2)."""
    target = tmp_path / "metrics.json"
    scenario = tmp_path / "writes_its_own.py"
    scenario.write_text(WRITES_ITS_OWN.format(target=str(target)))
    assert main([a.format(scenario=scenario) for a in argv] + [str(target)]) == 2
    err = capsys.readouterr().err
    kept = tmp_path / "metrics.workbench-1.json"
    assert f"{target} appeared while the command ran" in err and str(kept) in err
    assert target.read_text() == "the scenario's own metrics\n"
    assert workbench_output(kept) and json.loads(kept.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "metrics.workbench-1.json",
                                                          "writes_its_own.py"]  # no temp file left


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


@pytest.mark.parametrize("argv", [
    ["run", MLP, "--steps", "1", "--json", ""],
    ["check", MLP, "--steps", "1", "--junit", ""],
    ["summary", MLP, "--json", ""],
    ["run", MLP, "--steps", "1", "--tensorboard", ""],
], ids=["run-json", "check-junit", "summary-json", "run-tensorboard"])
def test_an_empty_output_path_is_refused_not_silently_ignored(argv, capsys) -> None:
    assert main(argv) == 2
    flag = argv[-2]
    assert f'{flag} is empty ("")' in capsys.readouterr().err
