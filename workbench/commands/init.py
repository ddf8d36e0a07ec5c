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
    "in code, dict batches, the loss inside the model). An existing file is never overwritten."
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
    from workbench.scenario.templates import render

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
    text = render(path.name, model=args.model, hf=args.hf)
    try:
        # O_EXCL: never write over a file, even one created between a check and the write.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(f"{path} already exists; nothing was written. Pick another path "
                         "(workbench init other.py) or remove the file first.") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    style = "Hugging Face " if args.hf else ""
    check, run_it, tui = (shlex.join(argv) for argv in next_commands(str(path)))
    print(f"wrote {path}: a {style}scenario template. Next: `{check}`, then `{run_it}` (headless) "
          f"or `{tui}` (the interactive workbench).")
    return 0


def next_commands(path: str) -> tuple[list[str], list[str], list[str]]:
    """What the message after writing suggests: check, run and open in the TUI, as argv lists
    (quoted for a shell when printed; a test parses each with the CLI's own parser)."""
    return ["workbench", "check", path], ["workbench", "run", path], ["workbench", "tui", path]
