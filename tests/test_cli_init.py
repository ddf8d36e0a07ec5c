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


@pytest.mark.parametrize("body, says", [
    ("import sys\nsys.exit(3)\n", ["called sys.exit(3)", "wb_hostile_{n}.py:2"]),
    ("import os\nos._exit(5)\n", ["called os._exit(5)", "wb_hostile_{n}.py:2"]),
    ("import time\nwhile True:\n    time.sleep(0.05)\n", ["timed out after 8 s", "wb_hostile_{n}.py:3", "--timeout"]),
    ("import torch\nfrom torch import nn\ntorch.set_default_dtype(torch.float64)\n\nclass Net(nn.Module):\n"
     "    def __init__(self):\n        super().__init__()\n        raise SystemExit('no')\n", ["called sys.exit('no')",
                                                                                  "wb_hostile_{n}.py:8"]),
], ids=["exits-on-import", "os-exit", "hangs", "constructor-exits"])
def test_init_survives_a_model_module_that_exits_or_hangs(body, says, tmp_path, capsys) -> None:
    """The user's module runs in a child: its exit, os._exit or endless loop is reported with its
    line, nothing is written, and this process is untouched (no module, no default dtype)."""
    import sys

    import torch

    n = len(body)
    name = f"wb_hostile_{n}"
    (tmp_path / f"{name}.py").write_text(body)
    target = tmp_path / "scn.py"
    # A short timeout only where the module hangs: the others must get to report their exit
    # even when the child's start (the fork server importing torch) is slow on a loaded machine.
    timeout = "8" if "while True" in body else "120"
    assert main(["init", "--model", f"{name}:Net", "--timeout", timeout, str(target)]) == 2
    err = capsys.readouterr().err
    assert not target.exists()
    assert f"--model {name}:Net" in err and "nothing was written" in err and "Traceback" not in err, err
    for text in says:
        assert text.format(n=n) in err, err
    assert name not in sys.modules and torch.get_default_dtype() is torch.float32


def test_init_timeout_must_be_positive(tmp_path, capsys) -> None:
    assert main(["init", "--model", "m:Net", "--timeout", "0", str(tmp_path / "s.py")]) == 2
    assert "--timeout must be > 0" in capsys.readouterr().err
