"""`workbench check`'s reports and PATHs: any message makes well-formed JUnit, a report that cannot
be written costs neither the other report nor the printed results, and a PATH that would check
something other than what was asked is refused before anything runs."""

from __future__ import annotations

import json
import os
import xml.dom.minidom
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.report.junit import junit_xml
from workbench.report.run import CheckResult

# A scenario whose model raises MESSAGE (Python source text, escapes and all) at step 0.
RAISES = (
    "import torch\nfrom torch import nn\nfrom workbench import Scenario\n\n"
    "class Net(nn.Linear):\n"
    "    def forward(self, x):\n        raise ValueError({message})\n\n"
    "def build(device):\n"
    "    m = Net(4, 1)\n"
    "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
    "                    loss_fn=nn.MSELoss(), data=[(torch.randn(8, 4), torch.randn(8, 1))])\n"
)

# A healthy scenario; ``before`` is source run first in build() (to leave a trace, or to break a path).
HEALTHY = (
    "import torch\nfrom torch import nn\nfrom workbench import Scenario\n\n"
    "def build(device):\n"
    "    {before}\n"
    "    m = nn.Linear(4, 1)\n"
    "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
    "                    loss_fn=nn.MSELoss(), data=[(torch.randn(8, 4), torch.randn(8, 1))])\n"
)


def flat(text: str) -> str:
    """Rich wraps at 80 columns under pytest: compare with whitespace collapsed."""
    return " ".join(text.split())


def _error_message(junit: Path) -> str:
    """The message of the one <error>, read by a strict parser (what a CI system uses)."""
    errors = xml.dom.minidom.parse(str(junit)).getElementsByTagName("error")
    assert len(errors) == 1
    return errors[0].getAttribute("message")


# -- JUnit: characters XML 1.0 forbids ------------------------------------------------------------


def test_control_characters_in_a_message_make_well_formed_junit(write_scenario, tmp_path: Path) -> None:
    path = write_scenario(RAISES.format(message=r'"bad \x01\x02\x1b[31m red ]]> <tag> & \ufffe"'), "ctrl.py")
    junit = tmp_path / "junit.xml"
    assert main(["check", str(path), "--steps", "2", "--junit", str(junit)]) == 2
    # Written out as escapes, so the reader still sees which characters were there.
    assert r"ValueError: bad \x01\x02\x1b[31m red ]]> <tag> & \ufffe" in _error_message(junit)


def test_a_lone_surrogate_in_a_message_still_writes_both_reports(write_scenario, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    path = write_scenario(RAISES.format(message=r'"bad \x01 \udcff surrogate"'), "surrogate.py")
    junit, report = tmp_path / "junit.xml", tmp_path / "check.json"
    assert main(["check", str(path), "--steps", "2", "--junit", str(junit), "--json", str(report)]) == 2
    assert r"ValueError: bad \x01 \udcff surrogate" in _error_message(junit)
    (result,) = json.loads(report.read_text(encoding="utf-8"))["results"]
    assert "bad \x01 \udcff surrogate" in result["detail"]  # JSON keeps the characters themselves
    assert "surrogate" in flat(capsys.readouterr().out)  # and the table was printed


def test_every_attribute_and_text_is_made_safe() -> None:
    """Not only the messages: a label or path (a file name decoded with surrogateescape) too."""
    result = CheckResult("n\x00me", "/tmp/\udcff.py", "failed", 0, 0.1, None, 0, 0, "short \x07",
                         failure="trace \x1b[0m", detail="detail \x0b kept\nsecond line")
    doc = xml.dom.minidom.parseString(junit_xml([result]).encode("utf-8"))
    case = doc.getElementsByTagName("testcase")[0]
    assert case.getAttribute("name") == r"n\x00me" and case.getAttribute("file") == r"/tmp/\udcff.py"
    error = doc.getElementsByTagName("error")[0]
    assert error.getAttribute("message") == r"detail \x0b kept"  # the first line, not cut at \x0b
    assert error.firstChild.data == r"trace \x1b[0m"


# -- a report that cannot be written --------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
def test_a_full_json_path_keeps_the_table_and_the_junit(write_scenario, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    path = write_scenario(RAISES.format(message='"the scenario broke"'), "broken.py")
    junit = tmp_path / "junit.xml"
    assert main(["check", str(path), "--steps", "2", "--junit", str(junit), "--json", "/dev/full"]) == 2
    captured = capsys.readouterr()
    out, err = flat(captured.out), flat(captured.err)
    assert "FAILED" in out and "broken: step 0, forward phase: ValueError: the scenario broke" in out
    assert "JUnit XML written to" in out
    assert "the scenario broke" in _error_message(junit)
    assert "error: --json: no space left on device writing /dev/full" in err


@pytest.mark.parametrize("failing", ["--junit", "--json"])
def test_a_report_whose_directory_is_gone_costs_nothing_else(failing: str, write_scenario, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """The path is accepted before the run; the scenario then puts a regular file where its directory
    was, so the write fails at the end. The other report and the printed results are still there."""
    gone = tmp_path / "gone"
    target = gone / ("junit.xml" if failing == "--junit" else "check.json")
    other = tmp_path / ("check.json" if failing == "--junit" else "junit.xml")
    before = f"import shutil; shutil.rmtree({str(gone)!r}); open({str(gone)!r}, 'w').close()"
    path = write_scenario(HEALTHY.format(before=before), "breaks_the_path.py")
    other_flag = "--json" if failing == "--junit" else "--junit"
    assert main(["check", str(path), "--steps", "2", failing, str(target), other_flag, str(other)]) == 2
    captured = capsys.readouterr()
    out, err = flat(captured.out), flat(captured.err)
    assert "breaks_the_path" in out and "1 ok, 0 with error findings, 0 failed" in out
    assert f"written to {other}" in out and other.stat().st_size > 0
    if other.suffix == ".json":
        assert json.loads(other.read_text())["results"][0]["status"] == "ok"
    else:
        xml.dom.minidom.parse(str(other))
    assert f"error: {failing}:" in err and str(target) in err
    assert gone.is_file() and not list(tmp_path.glob("**/.*.tmp"))  # nothing half-written left behind


# -- PATHs that would check something else --------------------------------------------------------


@pytest.fixture
def marked_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The current directory, holding one scenario that leaves a marker file when it is built."""
    d = tmp_path / "here"
    d.mkdir()
    marker = tmp_path / "ran"
    (d / "leaves_a_mark.py").write_text(HEALTHY.format(before=f"open({str(marker)!r}, 'w').close()"),
                                        encoding="utf-8")
    monkeypatch.chdir(d)
    return d, marker


@pytest.mark.parametrize("spec, said", [
    pytest.param("", 'PATH is empty ("")', id="empty"),
    pytest.param(":build", ":build: no file or module before the colon", id="colon-only"),
    pytest.param("{dir}:build", "{dir}:build: {dir} is a directory, and a function can be named only in a "
                                "scenario file", id="directory-function"),
])
def test_a_path_that_would_check_something_else_is_refused(spec: str, said: str, marked_dir: tuple[Path, Path],
                                                           capsys: pytest.CaptureFixture) -> None:
    directory, marker = marked_dir
    spec, said = spec.format(dir=directory), said.format(dir=directory)
    assert main(["check", spec, "--steps", "2"]) == 2
    captured = capsys.readouterr()
    err = flat(captured.err)
    assert f"error: {said}" in err
    assert "expected a scenario file, FILE.py:function, a directory of scenarios or a dotted module name" in err
    assert "workbench check" not in captured.out and not marker.exists()  # nothing was run


def test_an_existing_name_with_a_colon_is_still_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Only a name that is not there is split at its colon: a directory called "a:b" is checked."""
    d = tmp_path / "run:2"
    d.mkdir()
    (d / "fine.py").write_text(HEALTHY.format(before="pass"), encoding="utf-8")
    assert main(["check", str(d), "--steps", "2"]) == 0
    assert "1 ok" in flat(capsys.readouterr().out)
