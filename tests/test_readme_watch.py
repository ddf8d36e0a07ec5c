"""The README's "Debug your own training script" snippets run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _section_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Debug your own training script", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.+?)\n```", section, re.S)


@pytest.mark.slow  # 40 steps and a report: a few seconds on these machines
def test_the_two_line_example_trains_and_writes_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = _section_blocks()[0]
    assert first.count("# 1") == 1 and first.count("# 2") == 1  # the two lines it names
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(first, "README.md", "exec"), namespace)
    wb = namespace["wb"]
    assert len(wb.history) == 40 and wb.closed
    data = json.loads((tmp_path / "runs" / "watch" / "exp1.json").read_text())
    assert data["summary"]["steps_done"] == 40 and data["steps"][0]["logged"]["loss"] > 0


@pytest.mark.slow  # importing lightning / transformers takes seconds
@pytest.mark.parametrize("index, package", [(1, "lightning"), (2, "transformers")])
def test_the_integration_examples_build_their_callbacks(index: int, package: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip(package)
    if package == "transformers":
        pytest.importorskip("accelerate")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(_section_blocks()[index], "README.md", "exec"), namespace)
    assert namespace["callback"].watch_kwargs["every"] == 16
