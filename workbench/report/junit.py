"""JUnit XML for `workbench check --junit FILE` (one testcase per scenario)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from workbench.report.run import CheckResult, group_findings


def junit_xml(results: Sequence[CheckResult], suite: str = "workbench check", strict: bool = False) -> str:
    """One testcase per scenario; with ``strict`` a scenario with warnings only is a failure too."""
    failing = ("findings", "warn") if strict else ("findings",)
    failures = sum(r.status in failing for r in results)
    errors = sum(r.status == "failed" for r in results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures),
                      errors=str(errors), time=f"{sum(r.seconds for r in results):.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                       errors=str(errors), skipped="0", time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        case = ET.SubElement(ts, "testcase", classname="workbench.check", name=r.label, file=r.path,
                             time=f"{r.seconds:.3f}")
        if r.status == "failed":
            message = (r.detail or r.first_problem).splitlines()[0] if (r.detail or r.first_problem) else ""
            el = ET.SubElement(case, "error", message=message, type="ScenarioFailed")
            el.text = r.failure or r.detail or r.first_problem
        elif r.status in failing:
            severity = "error" if r.status == "findings" else "warning"
            shown = [g for g in group_findings(r.findings) if g.severity == severity]
            el = ET.SubElement(case, "failure", message=r.first_problem, type="HealthFinding")
            el.text = "\n".join(
                f"[{g.kind}] {g.where} (steps {g.first_step}-{g.last_step}, {g.count}x): {g.message}"
                for g in shown
            )
        warnings = [g for g in group_findings(r.findings) if g.severity == "warning"]
        if warnings:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(f"warning [{g.kind}] {g.where}: {g.message}" for g in warnings)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
