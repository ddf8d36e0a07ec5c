"""workbench init [PATH] [--model pkg.module:Class] [--hf]: write a commented scenario template."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NAME = "init"
ORDER = 5
HELP = "write a commented scenario template (never over an existing file)"
DESCRIPTION = (
    "Write a scenario file with every field of the contract explained, that `workbench check` "
    "passes as written: a plain PyTorch one (an MLP on synthetic data), one around your own model "
    "class (--model pkg.module:Class), or a Hugging Face one (--hf: a tiny model from a config built "
    "in code, dict batches, the loss inside the model; the labels are the ones its head takes). "
    "The --model class must exist (nothing is written otherwise); a plain one that builds without "
    "arguments gets data shaped for its first layer and output, and what init cannot tell is "
    "marked ADJUST in the file. Your module is imported and the class built in a child process of "
    "its own, so a module that exits, crashes or hangs (past --timeout) is reported, not fatal. "
    "An existing file is never overwritten."
)
DEFAULT_TIMEOUT_S = 120.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default="scenario.py", help="file to write (default: scenario.py)")
    p.add_argument("--model", metavar="pkg.module:Class",
                   help="your model class (with --hf: a transformers class such as BertForMaskedLM)")
    p.add_argument("--hf", action="store_true", help="Hugging Face style: config in code, dict batches, loss_fn=None")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"for importing and building --model's class (default {DEFAULT_TIMEOUT_S:g})")


def run(args: argparse.Namespace) -> int:
    import os
    import shlex

    from workbench.errors import UsageError
    from workbench.scenario import templates

    path = Path(args.path)
    if path.suffix != ".py":
        raise UsageError(f"{path}: a scenario file must end in .py; pass e.g. {path.with_suffix('.py')}.")
    if args.model and not args.hf:
        module, sep, cls = args.model.partition(":")
        if not sep or not cls.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
            raise UsageError(f"--model {args.model}: expected pkg.module:Class, e.g. mypkg.models:Net.")
    if args.model and args.hf and not (args.model.rpartition(":")[2] or args.model).isidentifier():
        raise UsageError(f"--model {args.model}: expected a transformers class name, e.g. BertForMaskedLM.")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}.")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory; create it first or pick another path.")
    if path.exists():
        raise _exists(path)
    # The class must be there before anything is written; a plain one is also looked at
    # (built without arguments where it allows, fed a trial batch) so the data fits it.
    fit = None
    try:
        if args.model and args.hf:
            templates.resolve_hf_model(args.model)  # a transformers class: the library's code, not the user's
        elif args.model:
            fit = _fit_isolated(args.model, path, args.timeout)
    except templates.ModelNotFound as exc:
        raise UsageError(str(exc)) from None
    head_known = not (args.hf and args.model) or templates.hf_head(args.model.rpartition(":")[2]).known
    text = templates.render(path.name, model=args.model, hf=args.hf, fit=fit)
    try:
        # O_EXCL: never write over a file, even one created between a check and the write.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise _exists(path) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    style = "Hugging Face " if args.hf else ""
    check, run_it, tui = (shlex.join(argv) for argv in next_commands(str(path)))
    if fit is not None and fit.note:
        print(f"wrote {path}: a scenario template that needs your hand before it runs: {fit.note} "
              f"(the lines marked ADJUST). Then: `{check}`, `{run_it}` (headless) or `{tui}` (the "
              "interactive workbench).")
        return 0
    if not head_known:
        print(f"wrote {path}: a {style}scenario template, with a language model's labels: workbench init "
              f"does not know {args.model}'s head (the lines marked ADJUST). Next: `{check}`, then "
              f"`{run_it}` (headless) or `{tui}` (the interactive workbench).")
        return 0
    print(f"wrote {path}: a {style}scenario template. Next: `{check}`, then `{run_it}` (headless) "
          f"or `{tui}` (the interactive workbench).")
    return 0


def fit_in_child(spec: str, folder: str, filename: str) -> Any:
    """In the child: the ModelFit for ``spec``, or ModelNotFound's message (a str) when it names
    nothing usable. Module level, so the child can be handed it."""
    from workbench.scenario import templates

    try:
        return templates.fit_model(templates.resolve_model(spec, Path(folder)), filename)
    except templates.ModelNotFound as exc:
        return str(exc)


def _fit_isolated(spec: str, path: Path, timeout_s: float) -> Any:
    """How the template fits ``spec``'s class, found in a child process: the user's module runs
    there (its import and the class's constructor and trial forward), so an exit, a crash or a
    hang in it cannot take this command with it. ModelNotFound says what went wrong."""
    from workbench.isolation import run_isolated
    from workbench.scenario import templates

    outcome = run_isolated(fit_in_child, spec, str(path.parent), path.name, timeout_s=timeout_s)
    if outcome.returned:
        if isinstance(outcome.value, str):
            raise templates.ModelNotFound(outcome.value)
        return outcome.value
    first = (outcome.failure or "gave no result").partition("\n")[0]
    where = f" at {outcome.stuck_at}" if outcome.stuck_at else ""
    if first.startswith("timed out"):
        hint = (f"Make the import and {spec.rpartition(':')[2]}() quick (no training or downloads at import), "
                "or raise --timeout.")
    else:
        hint = "Fix the module or the class, then run workbench init again."
    raise templates.ModelNotFound(
        f"--model {spec}: importing the module and building the class (in a child process) {first}{where}; "
        f"nothing was written. {hint}")


def _exists(path: object) -> Exception:
    from workbench.errors import UsageError

    return UsageError(f"{path} already exists; nothing was written. Pick another path "
                      "(workbench init other.py) or remove the file first.")


def next_commands(path: str) -> tuple[list[str], list[str], list[str]]:
    """What the message after writing suggests: check, run and open in the TUI, as argv lists
    (quoted for a shell when printed; a test parses each with the CLI's own parser)."""
    return ["workbench", "check", path], ["workbench", "run", path], ["workbench", "tui", path]
