"""Analysing a whole run directory: every worker's trace plus the recommendations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.profiling.advice import Recommendation, from_findings, recommend
from workbench.profiling.analysis import TraceAnalysis, analyze_file
from workbench.profiling.export import read_metadata
from workbench.profiling.trace import find_runs


@dataclass(frozen=True)
class RunAnalysis:
    run: str
    run_dir: Path
    scenario: str | None  # the scenario spec, from the sidecar `workbench profile` writes
    device: str | None
    workers: tuple[TraceAnalysis, ...]  # one per trace file (worker x span)
    recommendations: tuple[Recommendation, ...]
    other_runs: tuple[str, ...]  # further runs in the same logdir, not analysed

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(w.path for w in self.workers)


def analyze_path(path: str | Path, findings: Sequence[Any] = ()) -> RunAnalysis:
    """Analyse a run directory, a logdir (its newest run) or a single trace file.

    Recommendations are gathered over every worker, one per rule (the first
    worker that fires it, in worker order), then the engine findings.
    """
    runs = find_runs(path)
    name = list(runs)[-1]
    files = runs[name]
    run_dir = files[0].path.parent
    workers = tuple(analyze_file(f) for f in files)
    seen: dict[str, Recommendation] = {}
    for w in workers:
        for rec in recommend(w):
            seen.setdefault(rec.rule, rec)
    recs = tuple(seen.values()) + tuple(from_findings(findings))
    meta = read_metadata(run_dir)
    return RunAnalysis(
        run=name,
        run_dir=run_dir,
        scenario=meta.get("scenario") if isinstance(meta.get("scenario"), str) else None,
        device=meta.get("device") if isinstance(meta.get("device"), str) else None,
        workers=workers,
        recommendations=recs,
        other_runs=tuple(list(runs)[:-1]),
    )

