"""The run directory's own files: its name, the sidecar ``--analyze`` reads, the native log."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import UsageError
from workbench.profiling.options import ProfileOptions

if TYPE_CHECKING:
    import torch

    from workbench.scenario import ScenarioSource

STDERR_LOG = "profiler-stderr.log"
METADATA_FILE = "workbench-profile.json"  # not matched by the plugin's file pattern


def safe_name(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, _ and - made one '-'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "run"


def default_run_name(label: str, now: datetime | None = None) -> str:
    """'<scenario label>-<YYYYmmdd-HHMMSS>', safe as a directory name."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{safe_name(label)}-{stamp}"


def check_run_name(name: str) -> str:
    """``name`` when it can name the run directory; UsageError (exit 2) otherwise."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UsageError(f"--run {name!r}: expected a plain directory name.")
    _refuse_control_characters("--run", name, "a name of letters, digits, '-', '_' and '.'")
    return name


def check_logdir(logdir: str | Path) -> Path:
    """``logdir`` as a Path when the profiler can write traces under it; UsageError otherwise."""
    _refuse_control_characters("--logdir", str(logdir), "a directory path without them")
    return Path(logdir)


def _refuse_control_characters(option: str, text: str, instead: str) -> None:
    """Kineto writes each trace to NAME.tmp, then renames it to NAME with a newline dropped: the
    rename misses, and the trace is lost in a stray .tmp. So control characters are refused
    before any profiling."""
    import unicodedata

    bad = [(i, ch) for i, ch in enumerate(text) if unicodedata.category(ch) == "Cc"]
    if not bad:
        return
    i, ch = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise UsageError(
        f"{option} {text!r}: contains the control character {ch!r} (U+{ord(ch):04X}) at position {i}{more}; "
        "the profiler's trace writer does not keep them in the file name (it drops a newline), and the "
        f"trace would be lost. Use {instead}."
    )


def write_metadata(run_dir: Path, source: ScenarioSource, dev: torch.device, options: ProfileOptions,
                   ranks: int, files: Sequence[Path], loss_source: str | None = None) -> None:
    """The sidecar `--analyze` reads back: what was profiled, where, how.

    ``loss_source`` is ``LossValue.source`` (``"loss_fn"``, ``"outputs.loss"`` ...);
    None (DDP ranks, where only the traces have it) writes ``null``."""
    import torch

    from workbench.files import atomic_write_json

    atomic_write_json(
        run_dir / METADATA_FILE,
        {
            "scenario": source.spec,
            "label": source.label,
            "device": str(dev),
            "options": asdict(options),
            "ranks": ranks,
            "torch": torch.__version__,
            "files": [f.name for f in files],
            "loss_source": loss_source,
            "loss_inside_model": None if loss_source is None else loss_source != "loss_fn",
        },
    )


def read_metadata(run_dir: str | Path) -> dict[str, Any]:
    """The sidecar written next to the traces ({} when absent or unreadable)."""
    import json

    try:
        data = json.loads((Path(run_dir) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def drop_if_empty(path: Path) -> bool:
    """Remove an empty log; True when it was empty (or absent)."""
    try:
        if path.stat().st_size == 0:
            path.unlink()
            return True
        return False
    except FileNotFoundError:
        return True
