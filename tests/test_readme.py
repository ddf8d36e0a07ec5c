"""The README's two commands are the ones CI runs."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, re.S)


def test_readme_opens_with_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    head = text.split("## ", 1)[0]
    assert len(re.findall(r"```bash", head)) == 2
    install_and_run, test_command = _commands()[:2]
    assert "workbench" in install_and_run and "pip install" in install_and_run
    assert "pytest" in test_command and "[test]" in test_command


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = _commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
