"""The loader: every way in, and every error message it can give."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from workbench import Scenario
from workbench.scenario import (
    ScenarioError, discover, load, load_source, resolve_device, split_batch,
)

GOOD = '''
import torch
from torch import nn
from workbench import Scenario

COUNTER = [0]

def build(device):
    model = nn.Linear(4, 2).to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, description="tiny")

def build_other(device):
    s = build(device)
    s.name = "other"
    return s

not_a_function = 3
'''


def test_load_file_path(write_scenario) -> None:
    path = write_scenario(GOOD)
    s = load(path)
    assert isinstance(s, Scenario)
    assert s.name == "scn"  # defaults to the file name
    assert s.source is not None and s.source.path == str(path.resolve())
    assert s.device == torch.device("cpu")


def test_load_path_with_function(write_scenario) -> None:
    path = write_scenario(GOOD)
    s = load(f"{path}:build_other")
    assert s.name == "other"
    assert s.source.label == "scn:build_other"


def test_load_dotted_module(write_scenario, monkeypatch) -> None:
    path = write_scenario(GOOD, name="dotted_scn_mod.py")
    monkeypatch.syspath_prepend(str(path.parent))
    assert load("dotted_scn_mod").model.out_features == 2
    assert load("dotted_scn_mod:build_other").name == "other"


def test_loading_twice_gives_a_fresh_module(write_scenario) -> None:
    path = write_scenario(GOOD)
    a = load(path)
    path.write_text(GOOD.replace("nn.Linear(4, 2)", "nn.Linear(4, 3)"))
    b = load(path)
    assert a.model.out_features == 2 and b.model.out_features == 3
    assert type(a.model) is type(b.model)  # both nn.Linear; modules differ
    names = [k for k in sys.modules if k.startswith("workbench_scenario_scn_")]
    assert len(names) >= 2


def test_source_is_picklable(write_scenario) -> None:
    import pickle

    src = load_source(write_scenario(GOOD))
    assert pickle.loads(pickle.dumps(src)) == src


def test_discover_lists_build_variants(write_scenario, tmp_path) -> None:
    write_scenario(GOOD, name="a.py")
    write_scenario("x = 1\n", name="not_a_scenario.py")
    write_scenario(GOOD, name="_private.py")
    labels = [s.label for s in discover(tmp_path)]
    assert labels == ["a", "a:build_other"]



def test_discover_accepts_any_name_for_builds_parameter(write_scenario, tmp_path) -> None:
    # `def build(dev)` loads from its path, so it is listed too; a helper such as
    # `def build_layers(sizes)` is not a variant.
    write_scenario(GOOD.replace("def build(device", "def build(dev").replace("(device)", "(dev)")
                   + "\n\ndef build_layers(sizes):\n    return sizes\n", name="b.py")
    assert [s.label for s in discover(tmp_path)] == ["b"]


# -- errors -------------------------------------------------------------------------

def _err(spec, device="cpu") -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load(spec, device)
    return info.value


def test_missing_file(tmp_path) -> None:
    e = _err(tmp_path / "nope.py")
    assert "no such file" in str(e) and "nope.py" in str(e)


def test_directory_is_not_a_scenario(tmp_path) -> None:
    e = _err(tmp_path)
    assert "is a directory" in str(e) and "workbench list" in str(e)


def test_not_python(write_scenario) -> None:
    e = _err(write_scenario("x", name="scn.txt"))
    assert "expected a Python file" in str(e)


def test_bad_spec() -> None:
    e = _err("not a module!")
    assert "not a file, a directory or a dotted module name" in str(e)


def test_unknown_module() -> None:
    e = _err("no_such_module_xyz")
    assert "no importable module" in str(e)


def test_syntax_error_names_file_and_line(write_scenario) -> None:
    path = write_scenario("import torch\n\ndef build(device)\n    return 1\n")
    e = _err(path)
    assert f"{path}:3: syntax error" in str(e)
    assert e.line == 3 and e.path == str(path)


def test_import_error_at_module_level(write_scenario) -> None:
    # A file with a build (one without is refused before it runs: see test_no_build_refused_unrun).
    path = write_scenario("import torch\nraise RuntimeError('boom at import')\n\ndef build(device):\n    pass\n")
    e = _err(path)
    assert f"{path}:2" in str(e) and "boom at import" in str(e)


def test_no_build_function(write_scenario) -> None:
    path = write_scenario("def make(device):\n    pass\n")
    e = _err(path)
    assert "no function 'build'" in str(e) and "def build(device)" in str(e)
    assert "make" in str(e)  # lists what is there


def test_named_function_missing(write_scenario) -> None:
    e = _err(f"{write_scenario(GOOD)}:build_missing")
    assert "no function 'build_missing'" in str(e)


def test_build_not_callable(write_scenario) -> None:
    e = _err(f"{write_scenario(GOOD)}:not_a_function")
    assert "is a int, not a function" in str(e)


def test_build_raises_names_the_line(write_scenario) -> None:
    path = write_scenario("def build(device):\n    x = 1\n    raise ValueError('bad shape')\n")
    e = _err(path)
    assert "raised ValueError: bad shape" in str(e)
    assert e.line == 3 and "(line 3)" in str(e)


def test_build_returns_wrong_type(write_scenario) -> None:
    e = _err(write_scenario("def build(device):\n    return {'model': 1}\n"))
    assert "returned dict; expected a workbench.Scenario" in str(e)


FIELD_CASES = [
    ("model=model,", "model='m',", "model must be a torch.nn.Module, got str"),
    ("optimizer=torch.optim.SGD(model.parameters(), lr=0.1),", "optimizer=0.1,",
     "optimizer must be a torch.optim.Optimizer, got float"),
    ("loss_fn=nn.CrossEntropyLoss(),", "loss_fn=5,", "loss_fn must be callable"),
    ("data=data,", "data=3,", "data must be re-iterable"),
    ("data=data,", "data=iter(data),", "one-shot iterator"),
    ('description="tiny"', 'description=1', "description must be a str, got int"),
    ('description="tiny"', 'description="tiny", seed="0"', "seed must be an int, got str"),
    ('description="tiny"', 'description="tiny", scheduler=1', "scheduler must have a step() method"),
    ('description="tiny"', 'description="tiny", forward=1', "forward must be a callable"),
]


@pytest.mark.parametrize("old, new, message", FIELD_CASES, ids=[c[2][:30] for c in FIELD_CASES])
def test_scenario_field_checked(write_scenario, old, new, message) -> None:
    src = GOOD.replace(old, new, 1)
    assert src != GOOD
    path = write_scenario(src)
    e = _err(path)
    assert message in str(e)
    assert str(path) in str(e)
    # The line of build() that made the Scenario (a multi-line call: one of its lines).
    lines = src.splitlines()
    start = next(i for i, text in enumerate(lines, 1) if "Scenario(" in text and "import" not in text)
    assert e.line is not None and start <= e.line <= start + 8 and f"(line {e.line})" in str(e)


def test_a_file_with_nul_bytes_is_refused_without_a_none_line(tmp_path) -> None:
    path = tmp_path / "binary.py"
    path.write_bytes(b"def build(device):\n    return 1\n\x00\x00")
    e = _err(path)
    assert "None" not in str(e) and "null bytes" in str(e) and "Is it a text file?" in str(e)


def test_a_complex_loss_is_refused_with_what_to_do(write_scenario) -> None:
    from workbench.engine import Engine, StepError

    path = write_scenario(GOOD.replace("loss_fn=nn.CrossEntropyLoss(),",
                                       "loss_fn=lambda o, y: nn.functional.cross_entropy(o, y) * (1 + 1j),", 1))
    with Engine(load(path)) as eng, pytest.raises(StepError) as info:
        eng.step_once()
    assert "returned a complex tensor" in str(info.value) and "must be real" in str(info.value)


def test_missing_required_field(write_scenario) -> None:
    path = write_scenario(GOOD.replace("loss_fn=nn.CrossEntropyLoss(), ", ""))
    e = _err(path)
    assert "missing 1 required" in str(e) and "loss_fn" in str(e)


def test_discover_errors(tmp_path, write_scenario) -> None:
    with pytest.raises(ScenarioError, match="no such directory"):
        discover(tmp_path / "missing")
    with pytest.raises(ScenarioError, match="no scenario files found"):
        discover(tmp_path)
    with pytest.raises(ScenarioError, match="is a file"):
        discover(write_scenario(GOOD))


@pytest.mark.parametrize(
    "item, message",
    [
        (torch.zeros(3), "yielded a Tensor; expected (inputs, targets)"),
        ((torch.zeros(3),), "yielded a tuple of length 1"),
        (("x", torch.zeros(3)), "inputs of type str"),
        ((torch.zeros(3), [1, 2]), "targets of type list"),
        (((), torch.zeros(3)), "inputs of type tuple"),
    ],
)
def test_split_batch_errors(item, message) -> None:
    with pytest.raises(ScenarioError) as info:
        split_batch(item)
    assert message in str(info.value)


def test_split_batch_normalises_inputs() -> None:
    b = split_batch([(torch.zeros(2, 3), torch.ones(2, 1)), torch.zeros(2)])
    assert len(b.inputs) == 2 and b.size == 2


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ScenarioError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ScenarioError, match="torch.cuda.is_available"):
            resolve_device("cuda")


def test_model_on_the_wrong_device(write_scenario) -> None:
    path = write_scenario(GOOD.replace("nn.Linear(4, 2).to(device)", "nn.Linear(4, 2, device='meta')"))
    e = _err(path)
    assert "is on meta but build() was asked for cpu" in str(e) and "model.to(device)" in str(e)
