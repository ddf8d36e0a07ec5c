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


@pytest.mark.parametrize("spec, says", [
    ("wb_refuse_models:Nope", ["'Nope'", "its nn.Module classes: Net"]),
    ("wb_refuse_models:Nett", ["Did you mean wb_refuse_models:Net?"]),
    ("wb_refuse_models:helper", ["helper is a function", "nn.Module subclass"]),
    ("wb_no_such_module:X", ["no module named 'wb_no_such_module'", "pkg.module:Class", "pip install -e ."]),
])
def test_init_refuses_a_model_that_is_not_there(spec, says, tmp_path, capsys, monkeypatch) -> None:
    import sys

    (tmp_path / "wb_refuse_models.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n    pass\n\ndef helper():\n    pass\n")
    monkeypatch.delitem(sys.modules, "wb_refuse_models", raising=False)
    target = tmp_path / "scn.py"
    assert main(["init", "--model", spec, str(target)]) == 2
    err = capsys.readouterr().err
    assert not target.exists()
    assert f"--model {spec}" in err and "nothing was written" in err.lower() and "Traceback" not in err, err
    for text in says:
        assert text in err, err
    sys.modules.pop("wb_refuse_models", None)


@pytest.mark.parametrize("name, says", [
    ("NotAModel", ["no 'NotAModel'", "BertForSequenceClassification"]),
    ("BertForSequenceClasification", ["Did you mean BertForSequenceClassification"]),
    ("BertConfig", ["not a model class"]),
    ("ViTForImageClassification", ["pixel_values"]),
])
def test_init_hf_refuses_a_class_transformers_does_not_have(name, says, tmp_path, capsys) -> None:
    pytest.importorskip("transformers")
    target = tmp_path / "hf.py"
    assert main(["init", "--hf", "--model", name, str(target)]) == 2
    err = capsys.readouterr().err
    assert not target.exists()
    assert f"--hf --model {name}" in err and "nothing was written" in err and "Traceback" not in err, err
    for text in says:
        assert text in err, err
