"""workbench init [PATH] [--model pkg.module:Class] [--hf]: write a commented scenario template."""

from __future__ import annotations

import argparse

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
    "marked ADJUST in the file. An existing file is never overwritten."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default="scenario.py", help="file to write (default: scenario.py)")
    p.add_argument("--model", metavar="pkg.module:Class",
                   help="your model class (with --hf: a transformers class such as BertForMaskedLM)")
    p.add_argument("--hf", action="store_true", help="Hugging Face style: config in code, dict batches, loss_fn=None")


def run(args: argparse.Namespace) -> int:
    import os
    import shlex
    from pathlib import Path

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
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory; create it first or pick another path.")
    if path.exists():
        raise _exists(path)
    # The class must be there before anything is written; a plain one is also looked at
    # (built without arguments where it allows, fed a trial batch) so the data fits it.
    fit = None
    try:
        if args.model and args.hf:
            templates.resolve_hf_model(args.model)
        elif args.model:
            fit = templates.fit_model(templates.resolve_model(args.model, path.parent), path.name)
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


def _exists(path: object) -> Exception:
    from workbench.errors import UsageError

    return UsageError(f"{path} already exists; nothing was written. Pick another path "
                      "(workbench init other.py) or remove the file first.")


def next_commands(path: str) -> tuple[list[str], list[str], list[str]]:
    """What the message after writing suggests: check, run and open in the TUI, as argv lists
    (quoted for a shell when printed; a test parses each with the CLI's own parser)."""
    return ["workbench", "check", path], ["workbench", "run", path], ["workbench", "tui", path]
