"""The engine's vocabularies as str-valued enums: the same words in the JSON, the protocol and breakpoints."""

from __future__ import annotations

import json
import typing

import pytest

from workbench.engine import records
from workbench.engine.breakpoints import Breakpoint, Condition
from workbench.engine.records import (
    FINDING_KINDS,
    NAN_INF,
    SETUP_KINDS,
    SEVERITY_RANK,
    SILENT_BUG_KINDS,
    Finding,
    FindingKind,
    Phase,
    SeverityLevel,
    StopReason,
)
from workbench.report.json_report import finding_json
from workbench.session import protocol as P


def test_the_kinds_are_one_enum_and_the_old_names_are_its_members() -> None:
    assert records.GRAD_CLIPPING is FindingKind.GRAD_CLIPPING and NAN_INF == "nan_inf"
    assert repr(NAN_INF) == "'nan_inf'" and f"{NAN_INF}" == str(NAN_INF) == "nan_inf"  # as the strings showed
    assert set(FINDING_KINDS) | set(SETUP_KINDS) == set(FindingKind)
    assert not set(FINDING_KINDS) & set(SETUP_KINDS)
    assert set(SILENT_BUG_KINDS) < set(FINDING_KINDS)
    # Health rules first, then the silent bugs: the order breakpoint help lists them in.
    assert FINDING_KINDS[0] is FindingKind.NAN_INF and FINDING_KINDS[-len(SILENT_BUG_KINDS):] == SILENT_BUG_KINDS


def test_the_field_types_are_the_enums() -> None:
    """Finding.severity and RunOutcome.stopped_by are typed with the enums (the engine writes members)."""
    assert records.Severity is SeverityLevel and records.StoppedBy is StopReason
    hints = typing.get_type_hints(records.Finding)
    assert hints["severity"] is SeverityLevel
    assert typing.get_type_hints(records.RunOutcome)["stopped_by"] is StopReason
    assert SEVERITY_RANK == {"info": 0, "warning": 1, "error": 2}
    assert SeverityLevel.ERROR.rank > SeverityLevel.WARNING.rank > SeverityLevel.INFO.rank


def test_a_finding_written_with_strings_carries_the_members_and_the_same_json() -> None:
    f = Finding(3, Phase.LOSS, "", None, "nan_inf", "error", None, None, "loss is NaN", cause="non_finite_data")
    assert f.kind is FindingKind.NAN_INF and f.severity is SeverityLevel.ERROR
    assert f.cause is FindingKind.NON_FINITE_DATA
    assert Finding(3, Phase.LOSS, "", None, NAN_INF, SeverityLevel.ERROR, None, None, "loss is NaN",
                   cause=FindingKind.NON_FINITE_DATA) == f
    text = json.dumps(finding_json(f))
    assert '"kind": "nan_inf"' in text and '"severity": "error"' in text and '"cause": "non_finite_data"' in text
    back = P.decode(P.encode(P.Findings((f,))))
    assert back.findings == (f,) and back.findings[0].kind is FindingKind.NAN_INF


def test_a_kind_this_version_does_not_know_stays_a_string() -> None:
    """A newer host's finding kind still travels: the client shows the word."""
    f = Finding(0, Phase.FORWARD, "fc1", None, "some_future_kind", "warning", None, None, "m")
    assert type(f.kind) is str and f.kind == "some_future_kind"
    assert P.decode(P.encode(P.Findings((f,)))).findings[0].kind == "some_future_kind"


@pytest.mark.parametrize(("text", "condition"), [
    ("nan_inf>=error@fc*", Condition.FINDING), ("loss>5", Condition.LOSS), ("grad_norm<1e-6", Condition.GRAD_NORM),
    ("step==3", Condition.STEP),
])
def test_breakpoint_conditions_are_an_enum_and_describe_as_before(text: str, condition: Condition) -> None:
    bp = Breakpoint.parse(text)
    assert bp.condition is condition
    assert bp.describe() == text.replace("1e-6", "1e-06")


def test_a_breakpoint_built_from_plain_words_compares_the_same() -> None:
    bp = Breakpoint("finding", kind="nan_inf", min_severity="warning")  # type: ignore[arg-type]
    assert bp.condition is Condition.FINDING and bp.min_severity is SeverityLevel.WARNING
    assert bp == Breakpoint.on_finding("nan_inf", min_severity="warning")
    warn = Finding(1, Phase.FORWARD, "fc1", None, "nan_inf", "warning", None, None, "m")
    info = Finding(1, Phase.FORWARD, "fc1", None, "nan_inf", "info", None, None, "m")
    assert bp.matches_finding(warn) and not bp.matches_finding(info)
