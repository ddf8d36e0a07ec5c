"""Finding and reading Chrome trace files written by ``tensorboard_trace_handler``.

Layout (what TensorBoard's PyTorch Profiler plugin reads):
``LOGDIR/<run>/<worker>.<span>.pt.trace.json[.gz]``, where ``span`` is the
time the trace was written (ns) and ``worker`` names the process (we put the
rank in it). The same files open in Perfetto and chrome://tracing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import UsageError

# The plugin's own pattern (torch_tb_profiler.consts.WORKER_PATTERN), so we
# find exactly the files it finds.
WORKER_PATTERN = re.compile(r"^(.*?)(\.\d+)?\.pt\.trace\.json(?:\.gz)?$")
# A top-level key the profile loop adds to each trace (prof.add_metadata): where the loss came
# from, LossValue.source ("loss_fn", "outputs.loss", 'outputs["loss"]').
LOSS_SOURCE_KEY = "workbench_loss_source"
# Another: what Scenario.data is ("DataLoader", or its type's name: "list", "MyStream"), so the
# dataloader rule advises what fits it (a list has no loader workers to add).
DATA_TYPE_KEY = "workbench_data_type"
LOADER_WORKERS_KEY = "workbench_loader_workers"  # a DataLoader's num_workers (absent for other data)


def trace_loss_source(source: str) -> str:
    """``source`` as it can go into a trace: Kineto writes a metadata value without
    escaping it (``\\"`` comes out as ``/"``, breaking the JSON), so ``"`` travels as ``'``."""
    return source.replace("\\", "").replace('"', "'")


def read_loss_source(value: object) -> str | None:
    """The loss source a trace's metadata holds (None when absent): LossValue.source spelling."""
    return value.replace("'", '"') if isinstance(value, str) and value else None


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


# An inflated trace bigger than this is refused before parsing (JSON parsing holds the
# text and several times its size in objects): the traces `workbench profile` writes are
# capped at --max-trace-mb (200 MB by default) before profiling.
DEFAULT_MAX_READ_MB = 1024.0

# What only torch.profiler writes: its header keys, or its event categories.
_TORCH_KEYS = ("schemaVersion", "deviceProperties", "baseTimeNanoseconds", "distributedInfo", "traceName")
_TORCH_CATS = frozenset({"cpu_op", "user_annotation", "python_function", "kernel", "cuda_runtime", "cuda_driver",
                         "gpu_memcpy", "gpu_memset", "gpu_user_annotation", "cpu_instant_event", "ac2g",
                         "fwdbwd", "operator", "runtime", "memcpy", "memset"})


def load_trace(path: str | Path, max_mb: float = DEFAULT_MAX_READ_MB) -> dict[str, Any]:
    """The trace's JSON object, validated; TraceError says which file and what is wrong.

    A ``.gz`` trace is inflated as a stream and refused past ``max_mb`` (a gzip bomb
    stops there). Events the analysis reads must have numeric, finite timestamps
    (``ts``; ``dur`` >= 0 for complete events), and the trace must be torch.profiler's
    (a Chrome trace from another tool has none of its events or header keys).
    """
    from workbench.inputs import InputFileError, read_json

    p = Path(path)
    try:
        data = read_json(p, "PyTorch profiler trace", limit_bytes=int(max_mb * 2**20))
    except InputFileError as exc:
        raise TraceError(f"{exc} Profile again (`workbench profile SCENARIO`).") from exc
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise TraceError(
            f"{p}: JSON without a 'traceEvents' list; expected a Chrome trace written by "
            "torch.profiler (export_chrome_trace / tensorboard_trace_handler)."
        )
    events = data["traceEvents"]
    for i, e in enumerate(events):
        problem = _event_problem(e)
        if problem:
            name = e.get("name") if isinstance(e, dict) else None
            raise TraceError(f"{p}: traceEvents[{i}]{f' ({name!r})' if isinstance(name, str) else ''} {problem}; "
                             "expected events with numeric 'ts' and 'dur' (microseconds). The trace is "
                             "corrupt or was edited: profile again.")
    torch_made = any(k in data for k in _TORCH_KEYS) or any(
        isinstance(e, dict) and (e.get("cat") in _TORCH_CATS or str(e.get("name", "")).startswith("ProfilerStep#"))
        for e in events)
    if events and not torch_made:
        raise TraceError(f"{p}: not a PyTorch profiler trace: a Chrome trace without torch.profiler's header "
                         "or events (ProfilerStep#N, cpu_op, kernel ...), e.g. from another tool. Profile "
                         "the training with `workbench profile SCENARIO` and analyse that.")
    return data


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _event_problem(e: Any) -> str | None:
    """What is wrong with one trace event for the analysis, or None."""
    if not isinstance(e, dict):
        return f"is a {type(e).__name__}, not an event object"
    ph = e.get("ph")
    if ph == "M" or ph is None and "ts" not in e:
        return None  # metadata (process and thread names): no time
    if "ts" not in e:
        return "has no 'ts'"
    if not _finite(e["ts"]):
        return f"has 'ts' = {e['ts']!r}, not a finite number"
    if ph == "X":
        dur = e.get("dur")
        if dur is None or not _finite(dur) or dur < 0:
            return f"has 'dur' = {dur!r}, not a finite number >= 0"
    return None
