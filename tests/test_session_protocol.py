"""The session protocol: every message survives encode/decode as the same frozen types, and a bad
line is refused with a message that says what was wrong and what to do."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from workbench.engine.records import BreakHit, Finding, MemorySample, ModuleNode, ModuleStats, ParamStats, Phase, StepRecord
from workbench.report.json_report import step_json
from workbench.session import protocol as P

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
_CURRENT: list[object] = []  # the nan_run fixture's Engine.current mid-step


def _same(a: object, b: object) -> bool:
    """Equality where NaN equals NaN (records of a NaN run hold NaN losses and stats)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            _same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return (isinstance(b, dict) and list(a) == list(b)
                and all(type(k) is type(j) for k, j in zip(a, b)) and all(_same(a[k], b[k]) for k in a))
    return type(a) is type(b) and a == b


def _round_trip(msg: object, seq: int = 3) -> object:
    line = P.encode(msg, seq)
    assert "\n" not in line
    json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in strict JSON"))
    got_seq, back = P.decode_line(line)
    assert got_seq == seq
    assert _same(back, msg), (msg, back)
    return back


@pytest.fixture(scope="module")
def nan_run() -> tuple[dict[str, ModuleNode], list[StepRecord], tuple[Finding, ...]]:
    """A real Engine run on a bundled scenario whose loss turns NaN at step 7."""
    from workbench.engine import Engine, EngineConfig
    from workbench.scenario import load

    with Engine(load(SCENARIOS / "broken" / "nan_at_step7.py"), EngineConfig(stats_every=1)) as eng:
        records = [eng.step_once() for _ in range(9)]
        eng.advance()
        eng.advance()  # forward and loss of step 9: the step in progress, as far as it got
        _CURRENT.append(eng.current)
        return eng.module_tree, records, eng.findings


def test_real_step_records_round_trip_with_nan_and_inf(nan_run) -> None:
    _, records, _ = nan_run
    for r in records:
        back = _round_trip(P.Step(r))
        assert isinstance(back.record, StepRecord)
        assert all(isinstance(k, Phase) for k in back.record.phase_seconds)
        assert all(isinstance(m, ModuleStats) and isinstance(m.shape, tuple) for m in back.record.modules)
        assert all(isinstance(p, ParamStats) for p in back.record.params)
        assert isinstance(back.record.memory, MemorySample)
    non_finite = [r for r in records if r.loss is not None and not math.isfinite(r.loss)]
    assert non_finite, "the scenario should produce a NaN loss by step 8"
    assert any(f.kind == "nan_inf" for r in non_finite for f in r.findings)


def test_module_tree_and_hello_round_trip(nan_run) -> None:
    tree, _, _ = nan_run
    hello = P.Hello(host="engine", pid=123, title="scenarios/broken/nan_at_step7.py", device="cpu", every=1,
                    modules=tuple(tree.values()), breakpoints=("nan_inf", "loss>5"), started_at=1.5e9,
                    commands=("pause", "continue"))
    back = _round_trip(hello, 0)
    assert all(isinstance(n, ModuleNode) and isinstance(n.children, tuple) for n in back.modules)


def test_findings_with_nested_consequences_and_break_hit(nan_run) -> None:
    from workbench.engine.records import collapse_findings

    _, _, findings = nan_run
    collapsed = collapse_findings(findings)
    assert findings
    _round_trip(P.Findings(findings))
    _round_trip(P.Findings(collapsed))
    root = Finding(step=7, phase=Phase.FORWARD, module="fc1", parameter=None, kind="nan_inf", severity="error",
                   value=math.inf, threshold=None, message="inf in fc1", count=3, last_step=9,
                   consequences=(Finding(step=7, phase=Phase.LOSS, module="", parameter=None,
                                         kind="loss_divergence", severity="error", value=-math.inf,
                                         threshold=1e3, message="loss", cause="nan_inf"),))
    back = _round_trip(P.Findings((root,)))
    assert back.findings[0].last_step == 9 and back.findings[0].consequences[0].cause == "nan_inf"
    hit = BreakHit(step=7, phase=Phase.OPTIMIZER_STEP, breakpoint="nan_inf", finding=root, reason="nan")
    assert _round_trip(hit).finding.phase is Phase.FORWARD
    _round_trip(BreakHit(step=1, phase=Phase.BACKWARD, breakpoint="loss>5", finding=None, reason="loss 6"))


def test_step_shape_is_the_run_reports(nan_run) -> None:
    """A step travels in step_json's shape, its findings listed in full rather than counted."""
    _, records, _ = nan_run
    r = records[-1]
    sent = json.loads(P.encode(P.Step(r)))["record"]
    report = json.loads(json.dumps(P.to_json(step_json(r))))
    assert set(sent) == set(report)
    for key in report:
        if key != "findings":
            assert sent[key] == report[key], key
    assert report["findings"] == len(r.findings) and len(sent["findings"]) == len(r.findings)


def test_every_other_message_and_command_round_trips() -> None:
    messages = [
        P.Progress(step=4, next_phase=Phase.BACKWARD, paused=True, busy=False, note="waiting"),
        P.Sample(id="s1", module="fc1", kind="gradient", step=4, shape=(2, 3), dtype="float32", counts=(1, 4),
                 edges=(-1.0, 0.0, math.inf), mean=math.nan, std=None, min=-1.0, max=2.0, nan_count=1,
                 nan_positions=((0, 1), (1, 2))),
        P.Sample(id="s2", module="nope", kind="activation", step=0, error="no module named 'nope'"),
        P.Error(kind="ZeroDivisionError", message="division by zero", file="train.py", line=12,
                traceback="Traceback ...\n", step=3, phase=Phase.FORWARD, hint="look at line 12"),
        P.Error(kind="RuntimeError", message="x", file=None, line=None, traceback=""),
        P.Log(step=2, values={"loss/ce": 0.5, "lr": 1e-3, "bad": math.nan}),
        P.Ended(reason="crashed", exit_code=None, signal=9, message="killed"),
        P.Refused(reason="wrong token"),
        P.Attach(token="abc", client="tui"), P.Pause(), P.Continue(), P.SkipStep(), P.StepPhase(),
        P.Rewind(steps=3), P.SetBreakpoints(conditions=("nan_inf", "step==4")),
        P.RequestSample(id="r1", module="fc1", kind="gradient"), P.Stop(),
    ]
    for msg in messages:
        _round_trip(msg)
    names = {P.type_name(m) for m in messages}
    assert {"progress", "sample", "error", "log", "ended", "refused", "attach", "pause", "continue",
            "skip_step", "step_phase", "rewind", "set_breakpoints", "request_sample", "stop"} <= names
    assert set(P.MESSAGE_TYPES) | set(P.COMMAND_TYPES) >= names | {"hello", "step", "findings", "break_hit"}
    assert P.is_command(P.Pause()) and not P.is_command(P.Refused("x")) and P.is_message(P.Refused("x"))


def test_reader_tolerates_added_keys_and_fills_defaults() -> None:
    line = '{"v":1,"type":"rewind","seq":5,"extra":"from a newer writer"}'
    assert P.decode(line) == P.Rewind(steps=1)
    assert P.decode('{"v":1,"type":"progress","step":2,"next_phase":"loss","paused":false,"busy":true}') == \
        P.Progress(step=2, next_phase=Phase.LOSS, paused=False, busy=True)


@pytest.mark.parametrize("line, expected", [
    ("not json at all", ["not JSON", "'not json at all'", "workbench session"]),
    ("[1, 2]", ["expected a JSON object", "list"]),
    ('{"type": "pause"}', ["no protocol version", '"v": 1']),
    ('{"v": 2, "type": "pause", "seq": 0}', ["newer workbench", "protocol v2", "reads v1", "Upgrade"]),
    ('{"v": 1, "type": "teleport", "seq": 0}', ["unknown message type 'teleport'", "upgrade"]),
    ('{"v": 1, "type": "rewind", "seq": 0, "steps": "three"}', ["bad 'rewind' message", "steps", "integer",
                                                               "'three'"]),
    ('{"v": 1, "type": "progress", "seq": 0, "step": 1, "next_phase": "sideways", "paused": false, "busy": false}',
     ["next_phase", "'forward'", "'sideways'"]),
    ('{"v": 1, "type": "request_sample", "seq": 0, "id": "a"}', ["module: missing"]),
    ('{"v": 1, "type": "step", "seq": 0, "record": {"step": 1}}', ["record.loss: missing"]),
    ('{"v": 1, "type": "pause", "seq": "x"}', ['"seq" must be an integer']),
    (b'\xff\xfe', ["not UTF-8"]),
])
def test_bad_lines_say_what_is_wrong(line: str | bytes, expected: list[str]) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.decode(line, where="session.jsonl line 4")
    text = str(info.value)
    assert text.startswith("session.jsonl line 4: ")
    for part in expected:
        assert part in text, (part, text)


def test_nested_field_path_in_error(nan_run) -> None:
    _, records, _ = nan_run
    data = json.loads(P.encode(P.Step(records[0])))
    data["record"]["modules"][1]["mean"] = "lots"
    with pytest.raises(P.ProtocolError, match=r"record\.modules\[1\]\.mean: expected a number, got 'lots'"):
        P.decode(json.dumps(data))


def test_encode_refuses_what_is_not_a_message() -> None:
    with pytest.raises(TypeError, match="not a session message"):
        P.encode(object())


def test_engine_host_progress_sample_and_summary_round_trip(nan_run) -> None:
    """What a host that steps phase by phase sends: the step in progress, a paused break, a reply."""
    from workbench.engine.records import StepProgress

    _, records, findings = nan_run
    current = _CURRENT[0]
    assert isinstance(current, StepProgress) and current.phases_done == (Phase.FORWARD, Phase.LOSS)
    hit = BreakHit(step=9, phase=Phase.LOSS, breakpoint="nan_inf", finding=findings[0], reason="NaN")
    back = _round_trip(P.Progress(step=9, next_phase=Phase.BACKWARD, paused=True, busy=False, current=current,
                                  pending_break=hit, breakpoints=("nan_inf",), reply_to=7, activity=None,
                                  summary=P.RunSummary(steps_done=9, stopped_by="breakpoint", reason="nan_inf"),
                                  history_from=None, warning=True, note="rewound"))
    assert isinstance(back.current, StepProgress) and back.current.phases_done == (Phase.FORWARD, Phase.LOSS)
    assert all(isinstance(m, ModuleStats) for m in back.current.modules)
    _round_trip(P.Findings(findings, replace=True))
    _round_trip(P.Sample(id=4, module="fc1", kind="activation", step=9, description="Linear(784, 128)",
                         histograms=(P.Histogram("output", -1.0, math.inf, (3, 0, 1), 4, 1, 1, True),),
                         notes=("a strided sample",), numel=4, output_numel=100))
    _round_trip(P.Error(kind="ScenarioError", message="build failed", file="s.py", line=3, traceback="...",
                        fatal=True, reply_to=2))
    summary = P.ScenarioSummary(label="scenarios/mlp_digits.py", name="mlp_digits", description="an MLP",
                                model_class="MLP", parameters=101770, device="cpu", threads=2, optimizer="SGD")
    hello = P.Hello(host="engine", pid=1, title="x", device="cpu", every=1, modules=(), breakpoints=(),
                    started_at=0.0, summary=summary)
    assert _round_trip(hello).summary == summary
    for command in (P.Continue(id=3, steps=None), P.Continue(id=4, steps=10), P.StepPhase(id=5, whole_step=True),
                    P.Rewind(2, id=6), P.SetBreakpoints(("loss>5",), id=7), P.RequestSample(8, "fc1")):
        _round_trip(command)


def test_hello_says_which_commands_the_host_honours() -> None:
    base = dict(host="watch", pid=1, title="t.py", device="cpu", every=1, modules=(), breakpoints=(),
                started_at=0.0)
    assert P.Hello(**base).accepts(P.Rewind)  # the host did not say: assume it does
    by_type = P.Hello(**base, commands=("pause", "continue", "request_sample"))
    by_class = P.Hello(**base, commands=("Pause", "Continue", "RequestSample"))
    for hello in (by_type, by_class):
        assert hello.accepts(P.Pause()) and hello.accepts(P.RequestSample) and not hello.accepts(P.StepPhase)
