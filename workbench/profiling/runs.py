"""Analysing a whole run directory: every worker's trace plus the recommendations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.profiling.advice import Recommendation, from_findings, recommend
from workbench.profiling.analysis import TraceAnalysis, analyze_file, loss_inside_model
from workbench.profiling.sidecar import read_metadata
from workbench.profiling.trace import DEFAULT_MAX_READ_MB, TraceFile, find_runs, trace_files_in


@dataclass(frozen=True)
class RunAnalysis:
    run: str
    run_dir: Path
    scenario: str | None  # the scenario spec, from the sidecar `workbench profile` writes
    device: str | None
    workers: tuple[TraceAnalysis, ...]  # one per trace file (worker x span)
    recommendations: tuple[Recommendation, ...]
    other_runs: tuple[str, ...]  # further runs in the same logdir, not analysed
    earlier_traces: tuple[str, ...] = ()  # traces of earlier profiles in this run (--append), not analysed
    # Where the loss came from (LossValue.source), from the sidecar or else the traces; None: not said.
    loss_source: str | None = None
    loss_inside_model: bool = False  # the model computed the loss: its time is in forward

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(w.path for w in self.workers)


def analyze_path(path: str | Path, findings: Sequence[Any] = (), max_mb: float = DEFAULT_MAX_READ_MB) -> RunAnalysis:
    """Analyse a run directory, a logdir (its newest run) or a single trace file.

    Recommendations are gathered over every worker, one per rule (the first
    worker that fires it, in worker order), then the engine findings.
    """
    runs = find_runs(path)
    name = list(runs)[-1]
    files = runs[name]
    run_dir = files[0].path.parent
    meta = read_metadata(run_dir)
    found = files
    files = _this_profile(files, meta, explicit=Path(path).is_file())
    workers = tuple(analyze_file(f, max_mb) for f in files)
    seen: dict[str, Recommendation] = {}
    for w in workers:
        for rec in recommend(w):
            seen.setdefault(rec.rule, rec)
    recs = tuple(seen.values()) + tuple(from_findings(findings))
    loss_source = meta.get("loss_source")
    if not isinstance(loss_source, str) or not loss_source:  # DDP ranks, older sidecars: the traces say
        loss_source = next((w.loss_source for w in workers if w.loss_source), None)
    return RunAnalysis(
        run=name,
        run_dir=run_dir,
        scenario=meta.get("scenario") if isinstance(meta.get("scenario"), str) else None,
        device=meta.get("device") if isinstance(meta.get("device"), str) else None,
        workers=workers,
        recommendations=recs,
        other_runs=tuple(list(runs)[:-1]),
        earlier_traces=tuple(f.path.name for f in found if f not in files),
        loss_source=loss_source,
        loss_inside_model=loss_inside_model(loss_source),
    )


def _this_profile(files: list[TraceFile], meta: dict[str, Any], explicit: bool) -> list[TraceFile]:
    """The traces the run's sidecar names (its latest profile), when they are all there.

    A run profiled again with ``--append`` holds earlier traces too; they are
    the earlier profile's, and mixing them into this analysis would average
    two different runs under one name. A single file asked for is kept as is.
    """
    listed = meta.get("files")
    if explicit or not isinstance(listed, list) or not listed:
        return files
    names = {str(n) for n in listed}
    mine = [f for f in files if f.path.name in names]
    return mine if len(mine) == len(names) else files


def check_run_reuse(run_dir: Path, append: bool) -> None:
    """Refuse a run name that already holds traces, unless the user asked to ``append``.

    Without this, a second ``profile --run NAME`` (even of another scenario) left
    both profiles' traces in one directory, each labelled by worker only: the
    analysis, ``--analyze`` and TensorBoard then read a mix with no warning.
    """
    if not run_dir.is_dir():
        return
    from workbench.files import workbench_output
    from workbench.profiling.sidecar import METADATA_FILE

    sidecar = run_dir / METADATA_FILE
    if sidecar.is_file() and not workbench_output(sidecar):
        from workbench.errors import OutputPathError

        raise OutputPathError(f"{sidecar} exists and is not the workbench's (the sidecar a profile writes "
                              "there), so it is not written over. Choose another --run name, or move that "
                              "file away first.")
    if append:
        return
    old = trace_files_in(run_dir)
    if not old:
        return
    from workbench.errors import UsageError

    label = read_metadata(run_dir).get("label")
    what = f" of {label}" if isinstance(label, str) else ""
    raise UsageError(
        f"{run_dir} already holds {len(old)} trace file(s) of an earlier profile{what}; a second profile "
        "there would be analysed (and shown in TensorBoard) mixed with it. Leave --run out for a new "
        "timestamped run, choose another --run name, or pass --append to add this profile to that run "
        "(the analysis then reads this profile's traces only)."
    )


def profiled_scenario(path: str | Path) -> tuple[str | None, str | None]:
    """(label, spec) of the scenario whose profile ``analyze_path(path)`` would analyse, from
    its sidecar; (None, None) when that is not known (no sidecar, or no traces there)."""
    from workbench.profiling.trace import TraceError

    try:
        runs = find_runs(path)
    except TraceError:
        return None, None  # analyze_path says what is wrong with it
    meta = read_metadata(runs[list(runs)[-1]][0].path.parent)
    label, spec = meta.get("label"), meta.get("scenario")
    return (label if isinstance(label, str) else None), (spec if isinstance(spec, str) else None)


def check_findings_scenario(report: str, label: str | None, profile: str, spec: str | None = None) -> None:
    """Refuse (UsageError) a `workbench run --json` ``report`` of another scenario than the
    profile's (``label``, as ``ScenarioSource.label`` spells it; None: not known, not checked;
    ``profile`` says what was profiled, a clause with ``{label}`` in it, ``spec`` how to name it
    to `workbench run`):
    its findings name modules and parameters this model may not have."""
    from workbench.errors import UsageError
    from workbench.inputs import InputFileError, read_json

    if label is None:
        return
    try:
        data = read_json(report, "`workbench run --json` report")
    except InputFileError:
        return  # read_findings has said what is wrong with it
    scenario = data.get("scenario") if isinstance(data, dict) else None
    if not isinstance(scenario, str) or scenario == label:
        return
    what = profile.replace("{label}", repr(label))  # not str.format: a path may hold braces
    raise UsageError(
        f"--findings {report}: a report of scenario {scenario!r}, but {what}; "
        "its findings would name modules and parameters this model may not have. Pass the report of "
        f"`workbench run {spec or label} --json FILE` instead, or leave --findings out."
    )
