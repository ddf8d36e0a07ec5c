"""The loader of user scenario files.

A scenario is a Python file with a top-level ``build(device)`` returning a
:class:`~workbench.scenario.contract.Scenario`. The loader accepts
``path/to/file.py``, ``path/to/file.py:function`` or a dotted module name
(``pkg.module`` or ``pkg.module:function``); a directory lists every scenario
file in it.

Before any of a file runs, its source is parsed: a file that defines no
``build`` (a training script, a helper module) is refused without being
executed, so ``workbench run train.py`` never starts someone's training at
import. While a file loads, its own folder is first on ``sys.path`` (so
``from model import Net`` next to it works); ``sys.path`` is restored after.

Every failure raises :class:`ScenarioError`, whose message says which file,
which line (for syntax errors and exceptions raised inside ``build``), what
was expected and what to do next. A scenario that needs a package this
machine lacks raises :class:`ScenarioUnavailable` naming it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import itertools
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import exception_text
from workbench.scenario.errors import ScenarioError, ScenarioUnavailable

if TYPE_CHECKING:  # torch loads on first build: listing, picking and --help never wait for it
    import torch

    from workbench.scenario.contract import Scenario

_module_counter = itertools.count()

INIT_HINT = (
    "Write one with `workbench init` (a commented template), or, to debug an existing "
    "training script without rewriting it, attach the workbench to its own loop instead."
)


# -- devices ---------------------------------------------------------------------------


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' picks cuda when available; 'cuda' without CUDA is a clear error."""
    import torch

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


# -- reading a file without running it --------------------------------------------------


def read_source(path: Path) -> str:
    """The file's text, decoded as Python does (a ``# -*- coding: latin-1 -*-`` line, a BOM)."""
    return importlib.util.decode_source(path.read_bytes())


def parse_source(text: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse``; a file holding NUL bytes raises SyntaxError (no line) on every Python:
    before 3.11.4 or so, compile raised ValueError for it, which nobody here expects."""
    try:
        return ast.parse(text, filename=filename)
    except ValueError as exc:  # "source code string cannot contain null bytes"
        raise SyntaxError(str(exc)) from None


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


@dataclass(frozen=True)
class TopLevel:
    """What a module binds at its top level, read from its syntax tree."""

    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef]
    bound: frozenset[str]  # every name a top-level statement binds (defs, assignments, imports)
    star_import: bool  # `from x import *`: any name may be bound
    docstring: str | None
    literals: dict[str, str]  # name= / description= string keywords of a Scenario(...) call
    requires: tuple[str, ...] = ()  # REQUIRES = ("transformers", ...): packages the file needs

    def missing(self) -> list[str]:
        """The packages in ``REQUIRES`` that this machine cannot import."""
        out = []
        for name in self.requires:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                out.append(name)
        return out


def top_level(tree: ast.Module) -> TopLevel:
    functions: dict[str, Any] = {}
    bound: set[str] = set()
    star = False

    def visit(body: list[ast.stmt]) -> None:
        nonlocal star
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
                if not isinstance(node, ast.ClassDef):
                    functions[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            bound.add(leaf.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name == "*":
                        star = True
                    else:
                        bound.add(alias.asname or alias.name.split(".")[0])
            elif _is_main_guard(node):
                continue  # runs only as a script, never on import
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for field_name in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field_name, []) or [])
                for handler in getattr(node, "handlers", []) or []:
                    visit(handler.body)

    visit(tree.body)
    requires: tuple[str, ...] = ()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REQUIRES" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, str):
                value = (value,)
            if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
                requires = tuple(value)
    literals: dict[str, str] = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", "")) == "Scenario":
            for kw in call.keywords:
                if kw.arg in ("name", "description") and isinstance(kw.value, ast.Constant) \
                        and isinstance(kw.value.value, str):
                    literals.setdefault(kw.arg, kw.value.value)
    return TopLevel(functions, frozenset(bound), star, ast.get_docstring(tree), literals, requires)


def _parse(path: Path) -> ast.Module:
    """The file's syntax tree; ScenarioError for unreadable files and syntax errors."""
    try:
        text = read_source(path)
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise ScenarioError(f"{path}: cannot be read as Python source ({exc}).", path=str(path)) from exc
    try:
        return parse_source(text, str(path))
    except SyntaxError as exc:
        if exc.lineno is None:  # no line to show (a file holding NUL bytes)
            raise ScenarioError(f"{path}: cannot be parsed as Python: {exc.msg}. Is it a text file?",
                                path=str(path)) from exc
        raise ScenarioError(
            f"{path}:{exc.lineno}: syntax error: {exc.msg}\n"
            f"    {(exc.text or '').rstrip()}\n"
            "Fix the line above and load the scenario again.",
            path=str(path),
            line=exc.lineno,
        ) from exc


def _function_names(top: TopLevel) -> list[str]:
    return sorted(n for n in top.functions if not n.startswith("_"))


INSTALL_HINTS = {"transformers": " (pip install 'torch-workbench[hf]')",
                 "lightning": " (pip install 'torch-workbench[lightning]')"}


def _missing_message(where: str, missing: list[str]) -> str:
    names = ", ".join(repr(m) for m in missing)
    hints = "".join(INSTALL_HINTS.get(m, "") for m in missing)
    return (f"{where}: needs {names}, not installed here{hints}. Install it to use this scenario; "
            "the others are unaffected.")


def _refuse_without(function: str, path: Path, where: str) -> None:
    """Refuse, before running any of it, a file whose top level does not bind ``function``
    or whose ``REQUIRES`` names a package this machine lacks."""
    top = top_level(_parse(path))
    missing = top.missing()
    if missing:
        raise ScenarioUnavailable(_missing_message(where, missing), missing=missing[0], path=str(path))
    if function in top.bound or top.star_import:
        return
    names = _function_names(top)
    hint = f" Functions defined there: {', '.join(names)}." if names else ""
    raise ScenarioError(
        f"{where}: no function {function!r} found; expected a top-level `def {function}(device)` "
        f"that returns workbench.Scenario.{hint} Nothing in the file was run. {INIT_HINT}",
        path=str(path),
    )


# -- the source -------------------------------------------------------------------------


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
        from workbench.scenario.contract import Scenario

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
            with _folder_on_path(self.path):
                result = func() if _takes_no_argument(func) else func(device)
        except ScenarioError as exc:
            # A Scenario(...) field refused in build(): the line of build() that made it.
            line = exc.line or _user_line(exc, self.path)
            at = f" (line {line})" if line and not exc.line else ""
            raise ScenarioError(f"{self.where}{at}: {exc}", path=self.path, line=line) from exc
        except ModuleNotFoundError as exc:
            raise _unavailable(exc, self.where, self.path) from exc
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: user code must not end the workbench
            line = _user_line(exc, self.path)
            at = f" (line {line})" if line else ""
            raise ScenarioError(
                f"{self.where}{at}: {self.function}(device) raised "
                f"{exception_text(exc)}\n{_short_traceback(exc, self.path)}"
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
        result.load_warnings = tuple(load_warnings(result))
        return result


def _takes_no_argument(func: Any) -> bool:
    """``def build():`` (or a partial with every argument bound) is called without a device."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    params = [p for p in sig.parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.default is p.empty]
    positional = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                     for p in sig.parameters.values())
    return not params and not positional


class _folder_on_path:
    """The scenario's folder first on ``sys.path`` for the block, ``sys.path`` restored after."""

    def __init__(self, path: str | None) -> None:
        self.folder = str(Path(path).resolve().parent) if path else None
        self.saved: list[str] | None = None

    def __enter__(self) -> None:
        if self.folder is not None:
            self.saved = list(sys.path)
            sys.path.insert(0, self.folder)

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            sys.path[:] = self.saved


def _unavailable(exc: ModuleNotFoundError, where: str, path: str | None) -> ScenarioError:
    """A missing third-party package is ScenarioUnavailable; a missing local module a plain error."""
    missing = (exc.name or "").split(".")[0]
    local = path is not None and bool(missing) and (
        (Path(path).parent / f"{missing}.py").exists() or (Path(path).parent / missing).is_dir())
    line = _user_line(exc, path)
    at = f":{line}" if line else ""
    if not missing or local:
        return ScenarioError(f"{where}{at}: {exc}. Fix the import.", path=path, line=line)
    return ScenarioUnavailable(_missing_message(f"{where}{at}", [missing]), missing=missing, path=path, line=line)


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


# -- what the loader notices at load ----------------------------------------------------


EPOCH_LIKE = 100  # up to this, a scheduler's step count that ends before an epoch does reads as epochs


def _batches_per_epoch(data: Any) -> int | None:
    """len(data) when it has one (a DataLoader over a sized dataset, a list), else None."""
    try:
        n = len(data)
    except Exception:  # an IterableDataset's DataLoader (TypeError), a user's __len__ that raises
        return None
    return n if isinstance(n, int) and n > 0 else None


def load_warnings(s: Scenario) -> list[str]:
    """Settings that are probably not what the user meant; the engine shows them as findings."""
    out: list[str] = []
    sched = s.scheduler
    if sched is not None and s.scheduler_interval is None and s.scheduler_step is None:
        import torch

        lrs = torch.optim.lr_scheduler
        epoch = _batches_per_epoch(s.data)

        def epochs_like(n: int) -> bool:
            # Small counts are epochs; so are the classic 30/60/90 when the first decay would come
            # before one pass over the data ends (a step count in iterations is usually larger).
            return n <= 10 or (n <= EPOCH_LIKE and epoch is not None and n < epoch)

        within = f", within the first of its {epoch}-batch epochs" if epoch is not None else ""
        per_epoch = None
        if isinstance(sched, lrs.ReduceLROnPlateau):
            per_epoch = f"ReduceLROnPlateau (patience {sched.patience}) counts epochs without improvement"
        elif isinstance(sched, lrs.StepLR) and epochs_like(sched.step_size):
            per_epoch = f"StepLR(step_size={sched.step_size}) decays every {sched.step_size} steps{within}"
        elif isinstance(sched, lrs.MultiStepLR) and sched.milestones and epochs_like(max(sched.milestones)):
            per_epoch = f"MultiStepLR(milestones={sorted(sched.milestones)}) looks like epoch numbers"
        elif isinstance(sched, lrs.ExponentialLR) and sched.gamma < 0.99:
            per_epoch = f"ExponentialLR(gamma={sched.gamma}) shrinks the lr {1 / sched.gamma:.2f}x per step"
        if per_epoch:
            out.append(
                f"{s.where}: the scheduler looks per-epoch but steps after every batch: {per_epoch}. "
                'Set scheduler_interval="epoch" to step it once per pass over data, or '
                'scheduler_interval="step" to keep the per-batch stepping and silence this.'
            )
    return out


# -- importing --------------------------------------------------------------------------


def _short_traceback(exc: BaseException, path: str | None) -> str:
    frames: list[traceback.FrameSummary] = list(traceback.extract_tb(exc.__traceback__))
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
        _refuse_without(source.function, path, str(path))
        name = f"workbench_scenario_{path.stem}_{next(_module_counter)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ScenarioError(f"{path}: cannot be imported as a Python module.", path=str(path))
        module = importlib.util.module_from_spec(spec)
        # Registered before exec so dataclasses, pickling and typing can find it.
        sys.modules[name] = module
        try:
            with _folder_on_path(str(path)):
                spec.loader.exec_module(module)
        except SyntaxError as exc:
            sys.modules.pop(name, None)
            raise ScenarioError(
                f"{exc.filename or path}:{exc.lineno}: syntax error: {exc.msg}\n"
                f"    {(exc.text or '').rstrip()}\n"
                "Fix the line above and load the scenario again.",
                path=str(path),
                line=exc.lineno,
            ) from exc
        except ModuleNotFoundError as exc:
            sys.modules.pop(name, None)
            raise _unavailable(exc, str(path), str(path)) from exc
        except KeyboardInterrupt:
            sys.modules.pop(name, None)
            raise
        except BaseException as exc:  # SystemExit at import must not end the workbench either
            sys.modules.pop(name, None)
            line = _user_line(exc, str(path))
            at = f":{line}" if line else ""
            raise ScenarioError(
                f"{path}{at}: importing the scenario raised {exception_text(exc)}\n"
                "Fix the module-level code of the scenario (imports, constants).",
                path=str(path),
                line=line,
            ) from exc
        return module
    assert source.module is not None
    origin = _module_origin(source.module)
    if origin is not None:
        _refuse_without(source.function, origin, source.module)
    for key in [k for k in sys.modules if k == source.module or k.startswith(source.module + ".")]:
        del sys.modules[key]
    try:
        return importlib.import_module(source.module)
    except ModuleNotFoundError as exc:
        if exc.name and source.module.startswith(exc.name):
            raise ScenarioError(
                f"{source.spec}: no such file, and no importable module {source.module!r} "
                f"({exc}). Pass a path to a .py file, a directory of scenarios, or a dotted "
                "module name on sys.path.",
            ) from exc
        raise _unavailable(exc, source.module, None) from exc
    except SyntaxError as exc:
        raise ScenarioError(
            f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}\n    {(exc.text or '').rstrip()}",
            path=exc.filename,
            line=exc.lineno,
        ) from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise ScenarioError(
            f"{source.module}: importing the scenario raised {exception_text(exc)}"
        ) from exc


def _module_origin(module: str) -> Path | None:
    """The .py file of a dotted module, found without importing it (its parents may be imported)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


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


# -- discovery --------------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    """A .py file in a scenario directory that is not listed, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Discovery:
    sources: tuple[ScenarioSource, ...]
    skipped: tuple[Skipped, ...]


def _variant_functions(top: TopLevel) -> list[str]:
    """``build_<variant>(device...)``: a variant's first parameter must be called ``device``,
    so helpers such as ``def build_layers(sizes)`` are not listed."""
    out = []
    for name, node in top.functions.items():
        if name.startswith("build_"):
            args = node.args.posonlyargs + node.args.args
            if args and args[0].arg == "device":
                out.append(name)
    return out


def _looks_like_scenario(text: str) -> bool:
    return "def build" in text or "build =" in text or "import build" in text


def discover_all(directory: str | Path) -> Discovery:
    """Every scenario in ``directory`` (not recursive; ``_*.py`` skipped), read without running them,
    and every other .py file with the reason it is not a scenario.

    A file counts when its top level binds ``build`` (a def with any parameter
    name or none, an assignment such as ``build = functools.partial(...)``, an
    import such as ``from helpers import build``); each further top-level
    ``def build_<variant>(device)`` is listed as ``file.py:build_<variant>``. A
    file with a syntax error that mentions ``build`` is listed, so loading it
    reports the line. Sorted by file name.
    """
    root = Path(directory)
    if not root.exists():
        raise ScenarioError(f"{directory}: no such directory.", path=str(directory))
    if not root.is_dir():
        raise ScenarioError(
            f"{directory} is a file, not a directory; pass a directory of scenarios.",
            path=str(directory),
        )
    found: list[ScenarioSource] = []
    skipped: list[Skipped] = []
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            text = read_source(path)
        except (OSError, UnicodeDecodeError, SyntaxError) as exc:
            skipped.append(Skipped(str(path), f"cannot be decoded as Python source ({exc})"))
            continue
        try:
            top = top_level(parse_source(text, str(path)))
        except SyntaxError as exc:
            if _looks_like_scenario(text):
                found.append(ScenarioSource(str(path), str(path.resolve()), None, "build"))
            elif exc.lineno is None:  # NUL bytes: no line to name
                skipped.append(Skipped(str(path), f"cannot be parsed as Python: {exc.msg}"))
            else:
                skipped.append(Skipped(str(path), f"syntax error at line {exc.lineno}: {exc.msg}"))
            continue
        missing = top.missing()
        if missing:
            skipped.append(Skipped(str(path), _missing_message("", missing).removeprefix(": ")))
            continue
        functions = (["build"] if "build" in top.bound else []) + sorted(_variant_functions(top))
        if not functions:
            why = ("`from ... import *` may bind build; load it by path to find out" if top.star_import
                   else "no top-level `build` (a helper module?)")
            skipped.append(Skipped(str(path), why))
            continue
        for func in functions:
            spec = str(path) if func == "build" else f"{path}:{func}"
            found.append(ScenarioSource(spec, str(path.resolve()), None, func))
    return Discovery(tuple(found), tuple(skipped))


def discover(directory: str | Path) -> list[ScenarioSource]:
    """The scenarios of :func:`discover_all`; ScenarioError when there are none."""
    found = discover_all(directory)
    if not found.sources:
        why = "".join(f"\n  skipped {Path(s.path).name}: {s.reason}" for s in found.skipped)
        raise ScenarioError(
            f"{directory}: no scenario files found (a scenario is a .py file with a top-level "
            f"`def build(device)`).{why}",
            path=str(directory),
        )
    return list(found.sources)


def default_scenario_dir() -> Path | None:
    """The bundled scenarios: ./scenarios, else the repository's scenarios/ folder."""
    here = Path.cwd() / "scenarios"
    if here.is_dir():
        return here
    repo = Path(__file__).resolve().parent.parent.parent / "scenarios"
    return repo if repo.is_dir() else None


def replace(scenario: Scenario, **changes: Any) -> Scenario:
    """dataclasses.replace that keeps the loader's source and load warnings."""
    new = dataclasses.replace(scenario, **changes)
    new.source = scenario.source
    new.load_warnings = scenario.load_warnings
    return new
