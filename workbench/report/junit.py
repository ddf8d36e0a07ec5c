"""JUnit XML for `workbench check --junit FILE` (one testcase per scenario)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from workbench.report.run import CheckResult, group_findings

# What XML 1.0 does not allow anywhere in a document: control characters other than tab, newline
# and carriage return, U+FFFE/U+FFFF and lone surrogates. A scenario's error message can hold any
# of them (ANSI colour codes, bytes decoded with surrogateescape); one makes a CI parser reject the
# whole file, and a surrogate cannot even be encoded as UTF-8.
_NOT_XML = re.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def junit_xml(results: Sequence[CheckResult], suite: str = "workbench check", strict: bool = False) -> str:
    """One testcase per scenario; with ``strict`` a scenario with warnings only is a failure too."""
    failing = ("findings", "warn") if strict else ("findings",)
    failures = sum(r.status in failing for r in results)
    errors = sum(r.status == "failed" for r in results)
    skipped = sum(r.status == "interrupted" for r in results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures),
                      errors=str(errors), skipped=str(skipped), time=f"{sum(r.seconds for r in results):.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                       errors=str(errors), skipped=str(skipped), time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        case = ET.SubElement(ts, "testcase", classname="workbench.check", name=r.label, file=r.path,
                             time=f"{r.seconds:.3f}")
        if r.status == "interrupted":  # Ctrl-C stopped it: neither passed nor failed
            ET.SubElement(case, "skipped", message=r.detail or r.first_problem)
        elif r.status == "failed":
            # The first line only: str.splitlines() would also cut at \x0b, \x0c or \x1c, which are kept.
            message = (r.detail or r.first_problem).split("\n", 1)[0].rstrip("\r")
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
    _make_safe(root)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def xml_safe(text: str) -> str:
    """``text`` with each character XML 1.0 forbids written out as a Python escape (``\\x1b``,
    ``\\udcff``): the file stays well-formed and the reader still sees what was there."""
    return _NOT_XML.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _make_safe(root: ET.Element) -> None:
    """Every attribute value and text in the tree made safe, so no field can be forgotten."""
    for el in root.iter():
        el.attrib = {key: xml_safe(value) for key, value in el.attrib.items()}
        if el.text:
            el.text = xml_safe(el.text)
