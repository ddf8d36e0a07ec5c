"""What ``workbench list`` shows for each scenario, without trusting any of them.

The static part (label, description from the ``Scenario(description=...)``
literal or the docstring) is read from the syntax tree. Model class and
parameter counts need ``build()``: :func:`describe_sources` runs the builds in
one child process, one after the other, with a time limit per build, so a
scenario that trains at import, hangs, prints megabytes or ends its process
costs its own row and nothing else.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import multiprocessing
import os
import sys
import time
from typing import Any
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from workbench.errors import exception_text, user_location
from workbench.scenario.errors import ScenarioError, ScenarioUnavailable
from workbench.scenario.loader import ScenarioSource, parse_source, read_source, top_level

DEFAULT_BUILD_TIMEOUT_S = 30.0
# How long a build child may take to start and import _CHILD_PRELOAD before its first build;
# not part of any build's time limit.
STARTUP_TIMEOUT_S = 120.0
_CHILD_PRELOAD = ("torch", "torch.utils.data", "torch._dynamo", "workbench.scenario.contract")


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
    unavailable: str | None = None  # the missing package, when that is why it did not build
    built: bool = False  # model_class and the counts come from a build


def static_info(source: ScenarioSource) -> ScenarioInfo:
    """Label and description read from the source text; nothing is run."""
    info = ScenarioInfo(source.label, source.where)
    if source.path is None:
        return info
    try:
        tree = parse_source(read_source(Path(source.path)))
    except (OSError, UnicodeDecodeError, SyntaxError):
        return info
    top = top_level(tree)
    func = top.functions.get(source.function)
    own = _keyword_literals(func) if func is not None else {}
    doc = ast.get_docstring(func) if func is not None else None
    # The entry point's own words first: a file with several builds (build, build_logits)
    # names each one in its own call, and the file's first Scenario(...) literal or its
    # module docstring would give every row the same text.
    description = own.get("description") or doc or top.literals.get("description") or top.docstring or ""
    return replace(info, name=own.get("name") or top.literals.get("name", ""),
                   description=description.strip().splitlines()[0] if description.strip() else "")


def _keyword_literals(func: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    """``name=`` / ``description=`` string keywords of the calls inside one function.

    ``Scenario(description="...")`` itself, or a helper the function hands them to
    (``return _scenario(device, description="...")``); the first of each wins.
    """
    found: dict[str, str] = {}
    for call in ast.walk(func):
        if isinstance(call, ast.Call):
            for kw in call.keywords:
                if kw.arg in ("name", "description") and isinstance(kw.value, ast.Constant) \
                        and isinstance(kw.value.value, str):
                    found.setdefault(kw.arg, kw.value.value)
    return found


def describe_source(source: ScenarioSource) -> ScenarioInfo:
    """Build the scenario on CPU in this process and summarise it; a failure is kept, not raised."""
    base = static_info(source)
    try:
        s = source.build("cpu")
    except ScenarioUnavailable as exc:
        return replace(base, error=str(exc), unavailable=exc.missing)
    except ScenarioError as exc:
        return replace(base, error=str(exc))
    return replace(
        base,
        name=s.name,
        model_class=type(s.model).__name__,
        parameters=s.num_parameters(),
        trainable=s.num_parameters(trainable_only=True),
        description=s.description or base.description,
        built=True,
    )


def _child(sources: Sequence[ScenarioSource], conn: multiprocessing.connection.Connection) -> None:
    # User code may print megabytes: nothing it writes reaches the listing.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the child
    # What every build needs, imported before the clock starts: torch takes seconds to import
    # (more on a busy machine), and again in every restarted child, and the first optimizer a
    # scenario makes imports torch._dynamo (torch.optim's _disable_dynamo). Counted against
    # the first build, they made `--timeout 4` fail scenarios that build in a second.
    for name in _CHILD_PRELOAD:
        with contextlib.suppress(Exception):  # a build that needs it reports its own error
            importlib.import_module(name)
    conn.send(("ready",))
    for i, source in enumerate(sources):
        conn.send(("start", i))
        try:
            info = describe_source(source)
        except BaseException as exc:  # noqa: BLE001 - reported as the row's error
            at = user_location(exc, source.path)
            info = replace(static_info(source), error=exception_text(exc) + (f" (at {at})" if at else ""))
        conn.send(("done", i, info))
    conn.close()
    os._exit(0)  # no interpreter teardown: a user's thread must not keep the child alive


def _start_method() -> str:
    """fork where it is safe: POSIX, no other thread in this process, and torch not imported yet
    (a fork after torch ran OpenMP-parallel ops can hang in the child); else spawn."""
    import threading

    if ("fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
            and "torch" not in sys.modules):
        return "fork"
    return "spawn"


def describe_sources(sources: Sequence[ScenarioSource], *, build: bool = True,
                     timeout_s: float = DEFAULT_BUILD_TIMEOUT_S) -> list[ScenarioInfo]:
    """One ScenarioInfo per source, in order. ``build=False``: the static part only.

    Builds run in a child process; one that takes longer than ``timeout_s`` or
    ends the child is marked failed and the child is restarted for the rest.
    """
    infos = [static_info(s) for s in sources]
    if not build or not sources:
        return infos
    method = _start_method()
    ctx: Any = multiprocessing.get_context(method)  # a SpawnContext/ForkContext: has Process
    todo = list(range(len(sources)))
    while todo:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=([sources[i] for i in todo], child), daemon=True)
        proc.start()
        child.close()
        current: int | None = None
        ready = False  # the child has imported torch: from here on the clock is the build's
        stuck = False
        started = time.monotonic()
        done: set[int] = set()
        try:
            while True:
                limit = timeout_s if ready else STARTUP_TIMEOUT_S
                if not parent.poll(max(limit - (time.monotonic() - started), 0.01)):
                    if time.monotonic() - started < limit:
                        continue
                    if not ready:
                        stuck = True  # reported below, as a child that could not start
                        break
                    index = todo[current or 0]
                    infos[index] = replace(infos[index], error=(
                        f"{sources[index].where}: build() did not return within {timeout_s:g} s "
                        "(does the file train, or wait for input, when it is imported?); not listed "
                        "further. Load it on its own to see what it does."))
                    done.add(current or 0)
                    break
                try:
                    message = parent.recv()
                except EOFError:
                    if current is not None and current not in done:
                        index = todo[current]
                        proc.join(1.0)
                        infos[index] = replace(infos[index], error=(
                            f"{sources[index].where}: building it ended the process (exit code "
                            f"{proc.exitcode}); nothing more is known about it."))
                        done.add(current)
                    break
                if message[0] == "ready":
                    ready, started = True, time.monotonic()
                elif message[0] == "start":
                    current, started = message[1], time.monotonic()
                else:
                    infos[todo[message[1]]] = message[2]
                    done.add(message[1])
        finally:
            with contextlib.suppress(Exception):
                parent.close()
            if proc.is_alive():
                proc.kill()
            proc.join(5.0)
        if not done:  # the child could not even start: do not retry forever
            why = (f"did not get ready within {STARTUP_TIMEOUT_S:g} s (importing torch)" if stuck
                   else f"failed to start (exit code {proc.exitcode})")
            for index in todo:
                infos[index] = replace(infos[index], error=f"{sources[index].where}: the build process {why}.")
            break
        todo = [index for j, index in enumerate(todo) if j not in done]
    return infos
