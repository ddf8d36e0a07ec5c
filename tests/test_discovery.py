"""Discovery reads files without running them, and never drops one silently; list survives bad builds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.scenario import ScenarioError, discover_all, load, load_source

GOOD = '''
import torch
from torch import nn
from workbench import Scenario


def build(device):
    model = nn.Linear(4, 2).to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, description="tiny linear")
'''


def _labels(directory: Path) -> tuple[list[str], dict[str, str]]:
    found = discover_all(directory)
    return [s.label for s in found.sources], {Path(s.path).name: s.reason for s in found.skipped}


def test_every_way_of_binding_build_is_listed_and_loads(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text(GOOD.replace("def build(device)", "def make(device)"))
    (tmp_path / "spaced.py").write_text(GOOD.replace("def build(device)", "def build (device)"))
    (tmp_path / "noarg.py").write_text(GOOD.replace("def build(device):", "def build():\n    device = 'cpu'"))
    (tmp_path / "partial.py").write_text(
        GOOD.replace("def build(device)", "def _make(device, width)").replace("nn.Linear(4, 2)", "nn.Linear(4, width)")
        + "\nimport functools\nbuild = functools.partial(_make, width=2)\n")
    (tmp_path / "reexport.py").write_text("from helpers import make as build\n")
    latin = "# -*- coding: latin-1 -*-\n# Größe\n" + GOOD.replace('"tiny linear"', '"tiny, café"')
    (tmp_path / "latin.py").write_bytes(latin.encode("latin-1"))
    labels, skipped = _labels(tmp_path)
    assert labels == ["latin", "noarg", "partial", "reexport", "spaced"]
    assert "no top-level `build`" in skipped["helpers.py"]
    for label in labels:
        s = load(tmp_path / f"{label}.py")
        assert s.model.out_features == 2, label
    assert load(tmp_path / "latin.py").description == "tiny, café"


def test_undecodable_and_broken_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "binary.py").write_bytes(b"x = '\xff\xfe'\n")
    (tmp_path / "notes.py").write_text("these are notes: not code\n")
    (tmp_path / "typo.py").write_text("def build(device)\n    return 1\n")
    (tmp_path / "nul.py").write_bytes(b"x = 1\n\x00\x00")  # a ValueError from compile before Python 3.11.4
    labels, skipped = _labels(tmp_path)
    assert labels == ["typo"]  # it mentions build: listed, so loading it reports the line
    assert "cannot be decoded" in skipped["binary.py"] and "syntax error at line 1" in skipped["notes.py"]
    assert "null bytes" in skipped["nul.py"] and "None" not in skipped["nul.py"], skipped["nul.py"]
    with pytest.raises(ScenarioError, match="typo.py:1: syntax error"):
        load(tmp_path / "typo.py")


def test_a_file_without_build_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "train.py"
    script.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
                      "def train():\n    pass\n")
    with pytest.raises(ScenarioError) as info:
        load(script)
    message = str(info.value)
    assert "no function 'build'" in message and "Nothing in the file was run" in message
    assert "workbench init" in message and "attach" in message and "train" in message
    assert not marker.exists()


def test_the_scenario_folder_is_on_sys_path_while_it_loads(tmp_path: Path) -> None:
    (tmp_path / "netdef_for_test.py").write_text("from torch import nn\nclass Net(nn.Linear):\n"
                                                 "    def __init__(self):\n        super().__init__(4, 2)\n")
    (tmp_path / "uses_net.py").write_text(GOOD.replace("from workbench import Scenario",
                                                       "from workbench import Scenario\nfrom netdef_for_test import Net")
                                          .replace("nn.Linear(4, 2)", "Net()"))
    before = list(sys.path)
    assert type(load(tmp_path / "uses_net.py").model).__name__ == "Net"
    assert sys.path == before
    sys.modules.pop("netdef_for_test", None)


def test_system_exit_in_build_is_a_scenario_error(tmp_path: Path) -> None:
    path = tmp_path / "exits.py"
    path.write_text("import sys\ndef build(device):\n    sys.exit(3)\n")
    with pytest.raises(ScenarioError, match=r"exits.py \(line 3\).*SystemExit"):
        load(path)


def test_a_missing_package_is_unavailable_not_broken(tmp_path: Path) -> None:
    from workbench.scenario import ScenarioUnavailable

    path = tmp_path / "needs.py"
    path.write_text("def build(device):\n    import no_such_pkg_xyz\n")
    with pytest.raises(ScenarioUnavailable) as info:
        load(path)
    assert info.value.missing == "no_such_pkg_xyz" and "not installed" in str(info.value)
    (tmp_path / "declared.py").write_text("REQUIRES = ('no_such_pkg_xyz',)\n\ndef build(device):\n    pass\n")
    labels, skipped = _labels(tmp_path)
    assert "declared" not in labels and "needs 'no_such_pkg_xyz', not installed" in skipped["declared.py"]
    assert load_source(tmp_path / "declared.py").label == "declared"  # loading it by path still says why


@pytest.mark.slow  # waits out a 3 s build timeout
def test_list_survives_builds_that_hang_exit_and_print(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a_ok.py").write_text(GOOD)
    (tmp_path / "b_hangs.py").write_text("import time\ndef build(device):\n    time.sleep(60)\n")
    (tmp_path / "c_dies.py").write_text("import os\ndef build(device):\n    os._exit(7)\n")
    (tmp_path / "d_prints.py").write_text(GOOD.replace("def build(device):", "def build(device):\n    print('x' * 10**6)"))
    (tmp_path / "helper.py").write_text("X = 1\n")
    assert main(["list", str(tmp_path), "--timeout", "3"]) == 2
    out = capsys.readouterr().out
    assert "did not return within 3 s" in out and "exit code 7" in out
    assert out.count("Linear") == 2 and "xxxxxxxxxx" not in out
    assert "skipped" in out and "helper.py" in out


def test_list_static_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.py").write_text(GOOD.replace("def build(device):", "def build(device):\n    raise SystemExit(1)"))
    assert main(["list", str(tmp_path), "--static"]) == 0
    out = capsys.readouterr().out
    assert "not built" in out and "tiny linear" in out
