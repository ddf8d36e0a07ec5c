"""`workbench init`: the file it writes, and the commands its message suggests all exist."""

from __future__ import annotations

import re
import shlex

import pytest

from workbench.cli import build_parser, main


@pytest.mark.parametrize("name, flags", [("my_scenario.py", []), ("with space.py", []), ("hf_one.py", ["--hf"])])
def test_the_suggested_commands_parse_and_name_the_file(name, flags, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", name, *flags]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / name).is_file()
    suggested = [shlex.split(c) for c in re.findall(r"`([^`]+)`", out)]
    assert [argv[1] for argv in suggested] == ["check", "run", "tui"], out
    parser, _ = build_parser()
    for argv in suggested:
        assert argv[0] == "workbench"
        args = parser.parse_args(argv[1:])  # exits (SystemExit 2, "invalid choice") for a command that is not one
        assert name in (getattr(args, "scenario", None), *getattr(args, "scenarios", ()), *getattr(args, "paths", ()))


def test_init_never_writes_over_a_file(tmp_path, capsys) -> None:
    target = tmp_path / "mine.py"
    target.write_text("x = 1\n")
    assert main(["init", str(target)]) == 2
    assert target.read_text() == "x = 1\n"
    assert "already exists" in capsys.readouterr().err
