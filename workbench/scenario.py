"""The Scenario contract and the loader of user scenario files.

A scenario is a Python file with a top-level ``build(device)`` returning a
:class:`Scenario`. The loader accepts ``path/to/file.py``,
``path/to/file.py:function`` or a dotted module name (``pkg.module`` or
``pkg.module:function``); a directory lists every scenario file in it.

Every failure raises :class:`ScenarioError`, whose message says which file,
which line (for syntax errors and exceptions raised inside ``build``), what
was expected and what to do next.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "Scenario",
    "ScenarioError",
    "ScenarioSource",
    "Batch",
    "load",
    "load_source",
    "discover",
    "split_batch",
    "resolve_device",
    "default_scenario_dir",
]

_module_counter = itertools.count()


class ScenarioError(Exception):
    """A scenario could not be loaded, built or run as the contract requires.

    ``path`` and ``line`` locate the problem when known; ``str(error)`` is a
    complete message for the user.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


@dataclass
class Scenario:
    """Everything one training setup needs: model, optimizer, loss and data.

    ``data`` must be re-iterable (a DataLoader, a list of batches ...) and
    yield ``(inputs, targets)``: ``inputs`` a Tensor or a tuple of Tensors
    (the model is called as ``model(*inputs)``), ``targets`` a Tensor. The
    engine moves every batch to the scenario's device.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., torch.Tensor]
    data: Iterable[Any]
    name: str = ""
    description: str = ""
    scheduler: Any | None = None
    seed: int = 0
    forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], Any] | None = None
    eval_data: Iterable[Any] | None = None
    tags: tuple[str, ...] = ()
    # Set by the loader: where this scenario came from.
    source: ScenarioSource | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = _contract_problems(self)
        if problems:
            raise ScenarioError("Scenario(...) " + "; ".join(problems))

    # -- conveniences used by every layer -------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter or buffer (cpu if none)."""
        for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
            return tensor.device
        return torch.device("cpu")

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(
            p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only
        )

    def call_model(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        """Run the model the way the scenario says: custom forward or model(*inputs)."""
        if self.forward is not None:
            return self.forward(self.model, inputs)
        return self.model(*inputs)


def _contract_problems(s: Scenario) -> list[str]:
    problems: list[str] = []
    if not isinstance(s.model, nn.Module):
        problems.append(f"model must be a torch.nn.Module, got {type(s.model).__name__}")
    if not isinstance(s.optimizer, torch.optim.Optimizer):
        problems.append(
            f"optimizer must be a torch.optim.Optimizer, got {type(s.optimizer).__name__}"
        )
    if not callable(s.loss_fn):
        problems.append(f"loss_fn must be callable (outputs, targets) -> Tensor, got {type(s.loss_fn).__name__}")
    if s.data is None or not hasattr(s.data, "__iter__"):
        problems.append(
            f"data must be re-iterable (a DataLoader or a list of (inputs, targets)), got {type(s.data).__name__}"
        )
    elif iter(s.data) is s.data:
        problems.append(
            "data is a one-shot iterator (a generator?); pass something re-iterable "
            "such as a DataLoader or a list of batches"
        )
    if s.eval_data is not None and not hasattr(s.eval_data, "__iter__"):
        problems.append(f"eval_data must be re-iterable, got {type(s.eval_data).__name__}")
    if not isinstance(s.name, str):
        problems.append(f"name must be a str, got {type(s.name).__name__}")
    if not isinstance(s.description, str):
        problems.append(f"description must be a str, got {type(s.description).__name__}")
    if not isinstance(s.seed, int) or isinstance(s.seed, bool):
        problems.append(f"seed must be an int, got {type(s.seed).__name__}")
    if s.forward is not None and not callable(s.forward):
        problems.append("forward must be a callable forward(model, inputs) -> outputs")
    if s.scheduler is not None and not hasattr(s.scheduler, "step"):
        problems.append(f"scheduler must have a step() method, got {type(s.scheduler).__name__}")
    return problems


# -- batches ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One validated batch: inputs always a tuple of Tensors."""

    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.targets.shape[0]) if self.targets.dim() > 0 else 1

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            tuple(t.to(device, non_blocking=non_blocking) for t in self.inputs),
            self.targets.to(device, non_blocking=non_blocking),
        )


def split_batch(item: Any, where: str = "scenario data") -> Batch:
    """Check one item yielded by ``Scenario.data`` and normalise it.

    Raises ScenarioError that says what was yielded and what was expected.
    """
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        got = type(item).__name__
        if isinstance(item, (tuple, list)):
            got += f" of length {len(item)}"
        raise ScenarioError(
            f"{where} yielded a {got}; expected (inputs, targets) where inputs is a Tensor "
            "or a tuple of Tensors and targets a Tensor. Make the data yield 2-tuples."
        )
    inputs, targets = item
    if isinstance(inputs, torch.Tensor):
        inputs_t: tuple[torch.Tensor, ...] = (inputs,)
    elif isinstance(inputs, (tuple, list)) and inputs and all(
        isinstance(t, torch.Tensor) for t in inputs
    ):
        inputs_t = tuple(inputs)
    else:
        raise ScenarioError(
            f"{where} yielded inputs of type {type(inputs).__name__}; expected a Tensor or a "
            "non-empty tuple of Tensors."
        )
    if not isinstance(targets, torch.Tensor):
        raise ScenarioError(
            f"{where} yielded targets of type {type(targets).__name__}; expected a Tensor."
        )
    return Batch(inputs_t, targets)


# -- devices ---------------------------------------------------------------------------


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' picks cuda when available; 'cuda' without CUDA is a clear error."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ScenarioError(
                f"--device {name} was requested but torch.cuda.is_available() is False on this "
                f"machine (torch {torch.__version__}). Use --device cpu or --device auto."
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ScenarioError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto.")


# -- the loader ------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioSource:
    """Where a scenario comes from; ``build`` makes a fresh Scenario each call.

    Picklable (plain strings), so worker processes (DDP ranks, isolated
    benchmark runs) can rebuild the same scenario.
    """

    spec: str  # what the user typed, or the path found in a directory
    path: str | None  # the .py file, when the spec names one
    module: str | None  # the dotted module, when the spec names one
    function: str = "build"

    @property
    def label(self) -> str:
        base = Path(self.path).stem if self.path else (self.module or self.spec)
        return base if self.function == "build" else f"{base}:{self.function}"

    @property
    def where(self) -> str:
        return self.path or self.module or self.spec

    def build(self, device: str | torch.device = "cpu") -> Scenario:
        device = resolve_device(device)
        module = _import_fresh(self)
        func = getattr(module, self.function, None)
        if func is None:
            available = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                and getattr(v, "__module__", None) == module.__name__
            )
            hint = f" Functions defined there: {', '.join(available)}." if available else ""
            raise ScenarioError(
                f"{self.where}: no function {self.function!r} found; expected a top-level "
                f"`def {self.function}(device)` that returns workbench.Scenario.{hint}",
                path=self.path,
            )
        if not callable(func):
            raise ScenarioError(
                f"{self.where}: {self.function!r} is a {type(func).__name__}, not a function; "
                f"expected `def {self.function}(device)` returning workbench.Scenario.",
                path=self.path,
            )
        try:
            result = func(device)
        except ScenarioError as exc:
            raise ScenarioError(f"{self.where}: {exc}", path=self.path, line=exc.line) from exc
        except Exception as exc:
            line = _user_line(exc, self.path)
            at = f" (line {line})" if line else ""
            raise ScenarioError(
                f"{self.where}{at}: {self.function}(device) raised "
                f"{type(exc).__name__}: {exc}\n{_short_traceback(exc, self.path)}"
                "Fix the scenario's build function; run with --verbose for the full traceback.",
                path=self.path,
                line=line,
            ) from exc
        if not isinstance(result, Scenario):
            raise ScenarioError(
                f"{self.where}: {self.function}(device) returned "
                f"{type(result).__name__}; expected a workbench.Scenario "
                "(`return Scenario(model=..., optimizer=..., loss_fn=..., data=...)`).",
                path=self.path,
            )
        _check_model_device(result, device, self.where, self.path)
        if not result.name:
            result.name = self.label
        result.source = self
        return result


def _check_model_device(s: Scenario, device: torch.device, where: str, path: str | None) -> None:
    """Every parameter and buffer must sit on the device build() was given."""
    for name, tensor in itertools.chain(s.model.named_parameters(), s.model.named_buffers()):
        if tensor.device.type != device.type or (
            device.index is not None and tensor.device.index not in (None, device.index)
        ):
            raise ScenarioError(
                f"{where}: model tensor {name!r} is on {tensor.device} but build() was asked for "
                f"{device}; move the model with `model.to(device)` inside build(device).",
                path=path,
            )


def _short_traceback(exc: BaseException, path: str | None) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if path:
        mine = [f for f in frames if Path(f.filename).resolve() == Path(path).resolve()]
        frames = mine or frames[-1:]
    else:
        frames = frames[-2:]
    return "".join(traceback.format_list(frames[-3:]))


def _user_line(exc: BaseException, path: str | None) -> int | None:
    if not path:
        return None
    target = Path(path).resolve()
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == target:
            line = frame.lineno
    return line


def _import_fresh(source: ScenarioSource) -> Any:
    """Import the scenario module anew each time (a reload sees the user's edits)."""
    if source.path is not None:
        path = Path(source.path)
        name = f"workbench_scenario_{path.stem}_{next(_module_counter)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ScenarioError(f"{path}: cannot be imported as a Python module.", path=str(path))
        module = importlib.util.module_from_spec(spec)
        # Registered before exec so dataclasses, pickling and typing can find it.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            sys.modules.pop(name, None)
            raise ScenarioError(
                f"{path}:{exc.lineno}: syntax error: {exc.msg}\n"
                f"    {(exc.text or '').rstrip()}\n"
                "Fix the line above and load the scenario again.",
                path=str(path),
                line=exc.lineno,
            ) from exc
        except Exception as exc:
            sys.modules.pop(name, None)
            line = _user_line(exc, str(path))
            at = f":{line}" if line else ""
            raise ScenarioError(
                f"{path}{at}: importing the scenario raised {type(exc).__name__}: {exc}\n"
                "Fix the module-level code of the scenario (imports, constants).",
                path=str(path),
                line=line,
            ) from exc
        return module
    assert source.module is not None
    for key in [k for k in sys.modules if k == source.module or k.startswith(source.module + ".")]:
        del sys.modules[key]
    try:
        return importlib.import_module(source.module)
    except ModuleNotFoundError as exc:
        raise ScenarioError(
            f"{source.spec}: no such file, and no importable module {source.module!r} "
            f"({exc}). Pass a path to a .py file, a directory of scenarios, or a dotted "
            "module name on sys.path.",
        ) from exc
    except SyntaxError as exc:
        raise ScenarioError(
            f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}\n    {(exc.text or '').rstrip()}",
            path=exc.filename,
            line=exc.lineno,
        ) from exc
    except Exception as exc:
        raise ScenarioError(
            f"{source.module}: importing the scenario raised {type(exc).__name__}: {exc}"
        ) from exc


def load_source(spec: str | Path) -> ScenarioSource:
    """Parse ``path.py``, ``path.py:function``, ``pkg.mod`` or ``pkg.mod:function``."""
    text = str(spec)
    function = "build"
    target = text
    # A colon after the last path separator names a function (Windows drive letters aside).
    head, sep, tail = text.rpartition(":")
    if sep and tail and "/" not in tail and "\\" not in tail and len(head) > 1:
        target, function = head, tail
        if not function.isidentifier():
            raise ScenarioError(
                f"{text}: {function!r} is not a valid function name; expected PATH.py:function."
            )
    path = Path(target)
    if path.is_dir():
        raise ScenarioError(
            f"{target} is a directory; pass one scenario file, or use `workbench list {target}` "
            "to see the scenarios in it."
        )
    if path.suffix == ".py" or "/" in target or "\\" in target:
        if not path.exists():
            raise ScenarioError(
                f"{target}: no such file. Pass an existing scenario .py file "
                "(see `workbench list` for the bundled ones).",
                path=target,
            )
        if path.suffix != ".py":
            raise ScenarioError(f"{target}: expected a Python file ending in .py.", path=target)
        return ScenarioSource(text, str(path.resolve()), None, function)
    if all(part.isidentifier() for part in target.split(".")):
        return ScenarioSource(text, None, target, function)
    raise ScenarioError(
        f"{text}: not a file, a directory or a dotted module name. Pass a scenario .py file, "
        "PATH.py:function, or pkg.module."
    )


def load(spec: str | Path, device: str | torch.device = "cpu") -> Scenario:
    """Load and build one scenario; the usual entry point."""
    return load_source(spec).build(device)


# `def build(<any name>)`, and `def build_<variant>(device...)`: a variant must call its
# parameter `device`, so helpers such as `def build_layers(sizes)` are not listed.
_BUILD_RE = re.compile(r"^def (build)\(\s*\w+|^def (build_\w+)\(\s*device\b", re.MULTILINE)


def discover(directory: str | Path) -> list[ScenarioSource]:
    """Every scenario file in ``directory`` (not recursive; ``_*.py`` skipped).

    A file counts as a scenario when its source defines a top-level
    ``build(device)`` (the parameter may have any name); each further top-level
    ``build_<variant>(device)`` is
    listed as ``file.py:build_<variant>``. Sorted by file name.
    """
    root = Path(directory)
    if not root.exists():
        raise ScenarioError(f"{directory}: no such directory.", path=str(directory))
    if not root.is_dir():
        raise ScenarioError(
            f"{directory} is a file, not a directory; pass a directory of scenarios.",
            path=str(directory),
        )
    found = []
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        functions = [plain or variant for plain, variant in _BUILD_RE.findall(text)]
        # build first, then the variants the file offers (build_batchnorm, ...).
        for func in sorted(set(functions), key=lambda f: (f != "build", f)):
            spec = str(path) if func == "build" else f"{path}:{func}"
            found.append(ScenarioSource(spec, str(path.resolve()), None, func))
    if not found:
        raise ScenarioError(
            f"{directory}: no scenario files found (a scenario is a .py file with a top-level "
            "`def build(device)`).",
            path=str(directory),
        )
    return found


def default_scenario_dir() -> Path | None:
    """The bundled scenarios: ./scenarios, else the repository's scenarios/ folder."""
    here = Path.cwd() / "scenarios"
    if here.is_dir():
        return here
    repo = Path(__file__).resolve().parent.parent / "scenarios"
    return repo if repo.is_dir() else None


def replace(scenario: Scenario, **changes: Any) -> Scenario:
    """dataclasses.replace that keeps the loader's source."""
    new = dataclasses.replace(scenario, **changes)
    new.source = scenario.source
    return new


@dataclass(frozen=True)
class ScenarioInfo:
    """What `workbench list` shows for one scenario file (error set if it failed)."""

    label: str
    path: str
    name: str = ""
    model_class: str = ""
    parameters: int = 0
    trainable: int = 0
    description: str = ""
    error: str | None = None


def describe_source(source: ScenarioSource) -> ScenarioInfo:
    """Build the scenario on CPU and summarise it; a failure is kept, not raised."""
    try:
        s = source.build("cpu")
    except ScenarioError as exc:
        return ScenarioInfo(source.label, source.where, error=str(exc))
    return ScenarioInfo(
        label=source.label,
        path=source.where,
        name=s.name,
        model_class=type(s.model).__name__,
        parameters=s.num_parameters(),
        trainable=s.num_parameters(trainable_only=True),
        description=s.description,
    )
