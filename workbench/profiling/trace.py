"""Finding and reading Chrome trace files written by ``tensorboard_trace_handler``.

Layout (what TensorBoard's PyTorch Profiler plugin reads):
``LOGDIR/<run>/<worker>.<span>.pt.trace.json[.gz]``, where ``span`` is the
time the trace was written (ns) and ``worker`` names the process (we put the
rank in it). The same files open in Perfetto and chrome://tracing.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import UsageError

# The plugin's own pattern (torch_tb_profiler.consts.WORKER_PATTERN), so we
# find exactly the files it finds.
WORKER_PATTERN = re.compile(r"^(.*?)(\.\d+)?\.pt\.trace\.json(?:\.gz)?$")


class TraceError(UsageError):
    """A trace file or directory cannot be read as a PyTorch profiler trace (exit 2)."""


@dataclass(frozen=True)
class TraceFile:
    path: Path
    run: str
    worker: str
    span: str | None

    @property
    def label(self) -> str:
        return self.worker if self.span is None else f"{self.worker}.{self.span}"


def trace_files_in(run_dir: Path) -> list[TraceFile]:
    """Trace files directly inside ``run_dir``, sorted by worker then span."""
    found = []
    for path in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        match = WORKER_PATTERN.match(path.name)
        if match and path.is_file():
            span = match.group(2)[1:] if match.group(2) else None
            found.append(TraceFile(path, run_dir.name, match.group(1), span))
    return sorted(found, key=lambda t: (t.worker, int(t.span or 0)))


def find_runs(directory: str | Path) -> dict[str, list[TraceFile]]:
    """Runs under ``directory``: the directory itself when it holds trace files
    (a run dir), else each sub-directory that does (a logdir). A single trace
    file is accepted too. Newest run last. Raises TraceError when none."""
    root = Path(directory)
    if not root.exists():
        raise TraceError(
            f"{root}: no such file or directory; pass a run directory written by "
            "`workbench profile` (LOGDIR/<run>), its LOGDIR, or one .pt.trace.json file."
        )
    if root.is_file():
        match = WORKER_PATTERN.match(root.name)
        if not match:
            raise TraceError(
                f"{root}: not a profiler trace; expected a file named "
                "<worker>.<span>.pt.trace.json (or .json.gz) as tensorboard_trace_handler writes."
            )
        span = match.group(2)[1:] if match.group(2) else None
        return {root.parent.name: [TraceFile(root, root.parent.name, match.group(1), span)]}
    own = trace_files_in(root)
    if own:
        return {root.name: own}
    runs = {}
    subdirs = [d for d in root.iterdir() if d.is_dir()]
    for sub in sorted(subdirs, key=lambda d: (max((f.stat().st_mtime for f in d.iterdir()), default=0), d.name)):
        files = trace_files_in(sub)
        if files:
            runs[sub.name] = files
    if not runs:
        raise TraceError(
            f"{root}: no *.pt.trace.json[.gz] files in it or in its sub-directories; "
            "run `workbench profile SCENARIO --logdir DIR` first, then analyse DIR."
        )
    return runs


def load_trace(path: str | Path) -> dict[str, Any]:
    """The trace's JSON object; TraceError says which file and what is wrong."""
    p = Path(path)
    try:
        if p.name.endswith(".gz"):
            with gzip.open(p, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            with p.open(encoding="utf-8") as fh:
                data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise TraceError(
            f"{p}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); the trace may be "
            "truncated (was the profiled process killed while writing?). Profile again."
        ) from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TraceError(f"{p}: cannot read the trace: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise TraceError(
            f"{p}: JSON without a 'traceEvents' list; expected a Chrome trace written by "
            "torch.profiler (export_chrome_trace / tensorboard_trace_handler)."
        )
    return data
