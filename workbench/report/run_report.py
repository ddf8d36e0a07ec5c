"""The run report as it grows: findings counted and listed, steps streamed, written however the run ends.

Shared by ``workbench run --json`` (the scenario engine) and ``workbench.watch(report=...)``
(a user's own loop): both write schema ``workbench.run/1`` (report/json_report.py).
"""

from __future__ import annotations

from typing import Any

MAX_FINDINGS = 10_000  # listed in the report; all are counted in its summary


class RunReport:
    """What the run has so far, written as JSON however it ends.

    Steps stream to the report's temp file as they happen and the summary is kept
    as running totals, so a 5,000-step run holds no list of records: only the
    findings (bounded by the engine) and the last measured step for the tables.
    """

    max_findings = MAX_FINDINGS

    def __init__(self, path: str | None, label: str, device: str, every: int = 1) -> None:
        from workbench.engine import Finding, StepRecord
        from workbench.files import JsonStream
        from workbench.report.json_report import RunTally, report_head

        self.label = label
        self.device = device
        self.every = every  # findings come from measured steps: repeats are this many steps apart
        self.stream = JsonStream(path, "steps", report_head()) if path else None
        self.tally = RunTally()
        self.findings: list[Finding] = []
        self._keys: dict[tuple[Any, ...], int] = {}  # finding -> its index in self.findings (-1: not listed)
        self._replayed: set[tuple[Any, ...]] = set()  # findings a replay made (or made again)
        self.last_measured: StepRecord | None = None
        self.step: int | None = None  # the engine's step in progress, once there is an engine
        self.summary: dict[str, Any] | None = None

    @property
    def steps_done(self) -> int:
        return self.tally.steps

    def add_findings(self, findings: Any, replayed: bool = False) -> None:  # Sequence[Finding]
        """Count every finding; list the first MAX_FINDINGS (a model gone NaN repeats
        its findings every step, and the first ones name the cause).

        A replay (full stats) sees more than the first pass: its finding replaces the
        first pass's one with the same step, phase, place and kind (the message may now
        name the cause), and is marked replayed; one the first pass did not have is
        added and counted."""
        from workbench.report.json_report import finding_key

        if replayed:
            fresh = []
            for f in findings:
                key = finding_key(f)
                self._replayed.add(key)
                index = self._keys.get(key)
                if index is None:
                    fresh.append(f)
                elif index >= 0:
                    self.findings[index] = f
            findings = fresh
        self.tally.count(findings)
        room = max(MAX_FINDINGS - len(self.findings), 0)
        for f in findings:  # index in the list, or -1: counted but not listed
            self._keys[finding_key(f)] = len(self.findings) if room > 0 else -1
            if room > 0:
                self.findings.append(f)
                room -= 1
            else:
                self.tally.findings_not_listed += 1

    def add(self, record: Any, replayed: bool = False, extra: dict[str, Any] | None = None) -> None:  # StepRecord
        """A finished step; a replayed one is listed (marked) but not counted again in the summary.

        ``extra``: more keys for the step's entry (watch adds the scalars of ``wb.log``)."""
        from workbench.report.json_report import step_json

        if replayed:
            self.tally.replayed += 1
        else:
            self.tally.add(record)
        if record.modules:
            self.last_measured = record
        if self.stream is not None:
            self.stream.add({**step_json(record), "replayed": replayed, **(extra or {})})

    def write(self, stopped_by: str, error: dict[str, Any] | None, break_hit: Any = None) -> dict[str, Any]:
        """Finish the report (once: a later call, e.g. Ctrl-C while printing, keeps the first)."""
        from workbench.engine.records import collapse_findings
        from workbench.report.json_report import finding_json, finding_key, report_rest

        if self.summary is not None:
            return self.summary
        self.summary = self.tally.summary(stopped_by=stopped_by, break_hit=break_hit)
        if self.stream is not None:
            # Consecutive repeats folded into one (step range, count), consequences under their root.
            listed = [{**finding_json(f), "replayed": finding_key(f) in self._replayed}
                      for f in collapse_findings(self.findings, gap=self.every)]
            self.stream.finish(report_rest(scenario=self.label, device=self.device, findings=listed,
                                           summary=self.summary, error=error))
        return self.summary
