"""The one protocol between something that trains (a host) and something that shows it (a client).

Every message is one line of strict JSON (non-finite floats as the strings "NaN",
"Infinity", "-Infinity", as in the run report)::

    {"v": 1, "type": "step", "seq": 12, "record": {...}}

``v`` is the protocol version, ``type`` the message kind, ``seq`` its number in the
session (0, 1, 2, ... for host messages, chosen by the sender for commands). The other
keys are the fields of the frozen dataclass below, named as in the dataclass; records
travel as the engine's own types (``StepRecord``, ``Finding``, ``ModuleStats``,
``ParamStats``, ``MemorySample``, ``BreakHit``, ``ModuleNode``) in the shapes of
``report/json_report.py`` (a step is ``step_json`` with its findings listed in full), and
are rebuilt as those same types on the client side, so a client renders what the engine
made.

Host -> client: ``Hello``, ``Step``, ``Findings``, ``Progress``, ``BreakHit`` (the engine's
record itself), ``Sample``, ``Error``, ``Log``, ``Ended``, ``Refused``.
Client -> host: ``Attach`` (the first line: the session token), ``Pause``, ``Continue``,
``SkipStep``, ``StepPhase``, ``Rewind``, ``SetBreakpoints``, ``RequestSample``, ``Stop``.

``encode(msg, seq)`` gives the line, ``decode(line)`` the message (``decode_line`` also the
``seq``); ``ProtocolError`` says what was wrong with a line, shows an excerpt of it and
what to do. A reader ignores keys it does not know (a newer writer of the same version
may add optional fields) and fills fields missing from an older writer with their
defaults; a line of a newer version is refused with "upgrade".

No torch and no UI here: a client that only shows a session imports neither.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
import typing
from typing import Any, Literal, Union

from workbench.engine.records import (
    BreakHit,
    Finding,
    MemorySample,
    ModuleNode,
    ModuleStats,
    ParamStats,
    Phase,
    StepProgress,
    StepRecord,
)
from workbench.files import jsonable

PROTOCOL_VERSION = 1

HostKind = Literal["watch", "engine"]
SampleKind = Literal["activation", "gradient"]

__all__ = [
    "PROTOCOL_VERSION", "ProtocolError",
    "Hello", "Step", "Findings", "Progress", "BreakHit", "ScenarioSummary", "RunSummary", "Histogram", "Sample", "Error", "Log", "Ended", "Refused",
    "Attach", "Pause", "Continue", "SkipStep", "StepPhase", "Rewind", "SetBreakpoints", "RequestSample",
    "Stop",
    "Message", "Command", "MESSAGE_TYPES", "COMMAND_TYPES",
    "encode", "decode", "decode_line", "type_name", "is_command", "is_message",
    "to_json", "from_json",
    # the engine's records, re-exported: they travel inside the messages
    "StepRecord", "StepProgress", "Finding", "ModuleStats", "ParamStats", "MemorySample", "ModuleNode", "Phase",
]


class ProtocolError(ValueError):
    """A line that is not a message of this protocol: what was wrong, where, an excerpt, what to do."""


# -- host -> client ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScenarioSummary:
    """What is training, in one line's worth of facts (a scenario, or a user's model in ``watch``)."""

    label: str  # how the host names it ("scenarios/mlp_digits.py:build", "train.py")
    name: str
    description: str
    model_class: str
    parameters: int
    device: str
    threads: int
    optimizer: str


@dataclasses.dataclass(frozen=True)
class Hello:
    """The first message of a session (and of every replay): who trains what, and the model tree.

    ``modules`` is the engine's module tree in its order (``Engine.module_tree.values()``);
    ``breakpoints`` the conditions in force as ``run --break-on`` writes them;
    ``commands`` the commands this host honours, by type name ("pause", "step_phase") or
    class name ("StepPhase"): a user's own loop cannot step one phase or rewind, and a
    client greys those out (``accepts``). Empty: the host did not say, assume all.
    """

    host: HostKind
    pid: int
    title: str  # the script or scenario path
    device: str
    every: int  # module/parameter stats every N steps
    modules: tuple[ModuleNode, ...]
    breakpoints: tuple[str, ...]
    started_at: float  # time.time() when the session started
    version: int = PROTOCOL_VERSION
    commands: tuple[str, ...] = ()
    workbench: str = ""  # the host's workbench version
    summary: ScenarioSummary | None = None

    def accepts(self, command: Any) -> bool:
        """Whether this host honours ``command`` (an instance or a class)."""
        if not self.commands:
            return True
        cls = command if isinstance(command, type) else type(command)
        return cls.__name__ in self.commands or _TYPE_OF.get(cls, "") in self.commands


@dataclasses.dataclass(frozen=True)
class Step:
    """One completed training step, as the engine recorded it."""

    record: StepRecord


@dataclasses.dataclass(frozen=True)
class Findings:
    """Findings made since the last ``Findings`` message, in order.

    ``replace``: these are all the session's findings now (a rewind dropped some), not an addition.
    """

    findings: tuple[Finding, ...]
    replace: bool = False


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """How a run of steps ended: the engine's RunOutcome in words."""

    steps_done: int
    stopped_by: str  # "steps", "breakpoint", "stopped", "error"
    reason: str


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where the host is: the step in progress, the phase it runs next, paused or working.

    The optional fields are for a host that steps phase by phase (the engine host):
    ``current`` the step in progress as far as it got, ``pending_break`` the breakpoint
    it is paused at, ``breakpoints`` the conditions now in force (when they changed),
    ``reply_to`` the ``id`` of the command this state answers, ``history_from``: the
    records of this step and later were dropped (a rewind).
    """

    step: int
    next_phase: Phase
    paused: bool
    busy: bool
    note: str = ""  # a short line for a status bar ("waiting for a client to continue")
    activity: str | None = None  # what it is busy with ("running 100 steps")
    warning: bool = False  # the note says why a command changed nothing
    current: StepProgress | None = None
    pending_break: BreakHit | None = None
    breakpoints: tuple[str, ...] | None = None
    reply_to: int | None = None
    summary: RunSummary | None = None
    history_from: int | None = None


@dataclasses.dataclass(frozen=True)
class Histogram:
    """Counts of the finite values between ``lo`` and ``hi`` in equal bins."""

    label: str
    lo: float
    hi: float
    counts: tuple[int, ...]
    numel: int  # values looked at
    nan: int
    inf: int
    sampled: bool  # a strided sample of the tensor, not all of it


@dataclasses.dataclass(frozen=True)
class Sample:
    """The answer to ``RequestSample``: one module's activation or output gradient, summarised.

    ``counts``/``edges`` are a histogram of the finite values (``len(edges) == len(counts) + 1``);
    ``nan_positions`` lists the first few indices of non-finite values. A host may send
    several labelled ``histograms`` instead (output, weight, gradient), with a
    ``description`` and ``notes`` for the inspector. ``error`` is set (and the numbers
    empty) when the sample could not be taken: say why there.
    """

    id: int | str  # the request's
    module: str
    kind: SampleKind
    step: int
    shape: tuple[int, ...] = ()
    dtype: str = ""
    counts: tuple[int, ...] = ()
    edges: tuple[float, ...] = ()
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    nan_count: int = 0
    inf_count: int = 0
    nan_positions: tuple[tuple[int, ...], ...] = ()
    error: str | None = None
    histograms: tuple[Histogram, ...] = ()
    description: str = ""
    notes: tuple[str, ...] = ()
    numel: int = 0  # values looked at
    output_numel: int | None = None  # the whole tensor's size when only a sample was looked at


@dataclasses.dataclass(frozen=True)
class Error:
    """The user's code raised (a step's phase; building the scenario when ``fatal``): what, where, the traceback."""

    kind: str  # the exception's type name (or the engine's StepError kind, e.g. "oom")
    message: str  # one line: the error panel's title
    file: str | None
    line: int | None
    traceback: str  # the details
    step: int | None = None
    phase: Phase | None = None
    hint: str | None = None  # what to try
    reply_to: int | None = None  # the id of the command that raised it
    fatal: bool = False  # the host cannot go on (the scenario did not build)


@dataclasses.dataclass(frozen=True)
class Log:
    """Named scalars the user logged (``wb.log(loss=..., lr=...)``) at a step."""

    step: int
    values: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Ended:
    """The session is over: why, and how the process ended when it did."""

    reason: str  # "finished", "stopped", "error", "interrupted", "crashed", ...
    exit_code: int | None = None
    signal: int | None = None
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Refused:
    """Sent once to a client that did not present the session's token, before it is closed."""

    reason: str


# -- client -> host ------------------------------------------------------------------------
# ``id`` (keyword-only) is chosen by the client (0: no reply wanted); a Progress or Error
# answering the command carries it as ``reply_to``, a Sample as its ``id``.


def _reply_id() -> Any:
    return dataclasses.field(default=0, kw_only=True)


@dataclasses.dataclass(frozen=True)
class Attach:
    """A client's first line: the session token (RUN_DIR/session.token) and who it is."""

    token: str
    client: str = ""


@dataclasses.dataclass(frozen=True)
class Pause:
    id: int = _reply_id()


@dataclasses.dataclass(frozen=True)
class Continue:
    """Go on: ``steps`` more steps, or (None) until a breakpoint fires or Pause comes."""

    id: int = _reply_id()
    steps: int | None = None


@dataclasses.dataclass(frozen=True)
class SkipStep:
    """Drop this step's optimizer step (the host is paused before it) and go on."""

    id: int = _reply_id()


@dataclasses.dataclass(frozen=True)
class StepPhase:
    """Run exactly one phase (``whole_step``: the rest of the step in progress), then pause again."""

    id: int = _reply_id()
    whole_step: bool = False


@dataclasses.dataclass(frozen=True)
class Rewind:
    steps: int = 1
    id: int = _reply_id()


@dataclasses.dataclass(frozen=True)
class SetBreakpoints:
    """Replace the host's breakpoints; each condition as ``run --break-on`` takes it."""

    conditions: tuple[str, ...]
    id: int = _reply_id()


@dataclasses.dataclass(frozen=True)
class RequestSample:
    id: int | str  # chosen by the client; the Sample answer carries it back
    module: str
    kind: SampleKind = "activation"


@dataclasses.dataclass(frozen=True)
class Stop:
    id: int = _reply_id()


Message = Union[Hello, Step, Findings, Progress, BreakHit, Sample, Error, Log, Ended, Refused]
Command = Union[Attach, Pause, Continue, SkipStep, StepPhase, Rewind, SetBreakpoints, RequestSample, Stop]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


MESSAGE_TYPES: dict[str, type] = {_snake(c.__name__): c for c in typing.get_args(Message)}
COMMAND_TYPES: dict[str, type] = {_snake(c.__name__): c for c in typing.get_args(Command)}
_ALL_TYPES: dict[str, type] = {**MESSAGE_TYPES, **COMMAND_TYPES}
_TYPE_OF: dict[type, str] = {c: name for name, c in _ALL_TYPES.items()}
_ENVELOPE = ("v", "type", "seq")


def type_name(msg: Any) -> str:
    """The ``type`` a message travels as ("step", "break_hit", "set_breakpoints", ...)."""
    try:
        return _TYPE_OF[type(msg)]
    except KeyError:
        raise TypeError(f"{type(msg).__name__} is not a session message or command; expected one of "
                        f"{', '.join(c.__name__ for c in _ALL_TYPES.values())}") from None


def is_command(obj: object) -> bool:
    return type(obj) in COMMAND_TYPES.values()


def is_message(obj: object) -> bool:
    return type(obj) in MESSAGE_TYPES.values()


# -- encoding --------------------------------------------------------------------------------


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _non_finite(x: float) -> str:
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def to_json(obj: Any) -> Any:
    """A message's or record's fields as strict-JSON values (the shapes of the run report).

    The same values as ``files.jsonable`` (non-finite floats as "NaN"/"Infinity"/"-Infinity",
    tuples as lists, enums as their values), walked directly: this runs on the training
    thread for every message, and ``dataclasses.asdict`` copies every record first (it
    was 4x slower on a measured cnn_image step).
    """
    t = type(obj)
    if t is float:
        return obj if math.isfinite(obj) else _non_finite(obj)
    if t is str or t is int or t is bool or obj is None:
        return obj
    if t is tuple or t is list:
        return [to_json(v) for v in obj]
    if t is dict:
        return {(k.value if isinstance(k, enum.Enum) else str(k)): to_json(v) for k, v in obj.items()}
    names = _FIELD_NAMES.get(t)
    if names is None:
        if isinstance(obj, enum.Enum):
            return obj.value
        if not dataclasses.is_dataclass(t):
            return jsonable(obj)  # a subclass of float/int/str, or something the report would print
        names = _FIELD_NAMES[t] = tuple(f.name for f in dataclasses.fields(t))
    return {n: to_json(getattr(obj, n)) for n in names}


def encode(msg: Any, seq: int = 0) -> str:
    """One line (no trailing newline) of strict JSON for a message or command."""
    kind = type_name(msg)
    payload = {"v": PROTOCOL_VERSION, "type": kind, "seq": int(seq)}
    payload.update(to_json(msg))
    return json.dumps(payload, allow_nan=False, separators=(",", ":"))


# -- decoding --------------------------------------------------------------------------------


def _excerpt(line: str, limit: int = 120) -> str:
    text = line.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def decode(line: str | bytes, *, where: str = "") -> Any:
    """The message or command on one line; ProtocolError says what was wrong with it."""
    return decode_line(line, where=where)[1]


def decode_line(line: str | bytes, *, where: str = "") -> tuple[int, Any]:
    """``(seq, message)`` for one line. ``where`` names the source in errors ("session.jsonl line 7")."""
    prefix = f"{where}: " if where else ""
    if isinstance(line, bytes):
        raw = line
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{prefix}not UTF-8 text ({exc.reason} at byte {exc.start}): "
                                f"{_excerpt(raw.decode('utf-8', 'replace'))}. Expected one JSON object per "
                                "line from a workbench session.") from None
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{prefix}not JSON ({exc.msg} at column {exc.colno}): {_excerpt(line)}. "
                            "Expected one JSON object per line from a workbench session; is the other "
                            "end a workbench session?") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{prefix}expected a JSON object with \"v\" and \"type\", got "
                            f"{type(data).__name__}: {_excerpt(line)}.")
    version = data.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProtocolError(f"{prefix}no protocol version (expected \"v\": {PROTOCOL_VERSION}, got "
                            f"{version!r}): {_excerpt(line)}. Is the other end a workbench session?")
    if version > PROTOCOL_VERSION:
        raise ProtocolError(f"{prefix}written by a newer workbench (protocol v{version}; this one reads "
                            f"v{PROTOCOL_VERSION}): {_excerpt(line)}. Upgrade workbench on this side "
                            "(pip install -U torch-workbench) to read it.")
    kind = data.get("type")
    cls = _ALL_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"{prefix}unknown message type {kind!r} (expected one of "
                            f"{', '.join(sorted(_ALL_TYPES))}): {_excerpt(line)}. A newer workbench may "
                            "send it: upgrade this side.")
    seq = data.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ProtocolError(f"{prefix}\"seq\" must be an integer, got {seq!r}: {_excerpt(line)}.")
    try:
        msg = _build(cls, {k: v for k, v in data.items() if k not in _ENVELOPE}, "")
    except _FieldError as exc:
        raise ProtocolError(f"{prefix}bad {kind!r} message: {exc}: {_excerpt(line)}. The writer does not "
                            "follow this protocol version; if it is a newer workbench, upgrade this side."
                            ) from None
    return seq, msg


def from_json(cls: type, value: Any, path: str = "") -> Any:
    """Rebuild ``cls`` (a record or message dataclass, or any supported type) from ``to_json``'s form."""
    try:
        return _build(cls, value, path or getattr(cls, "__name__", "value"))
    except _FieldError as exc:
        raise ProtocolError(f"bad {getattr(cls, '__name__', cls)}: {exc}.") from None


class _FieldError(Exception):
    pass


_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_NONE = type(None)
_PLANS: dict[Any, tuple[Any, ...]] = {}


def _plan(tp: Any) -> tuple[Any, ...]:
    """How to rebuild ``tp``, worked out once per type (a client decodes every step's records)."""
    plan = _PLANS.get(tp)
    if plan is not None:
        return plan
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        plan = ("union", _NONE in args, tuple(a for a in args if a is not _NONE), tp)
    elif origin is Literal:
        plan = ("literal", typing.get_args(tp))
    elif origin is tuple:
        args = typing.get_args(tp)
        plan = ("tuple", args[0]) if len(args) == 2 and args[1] is Ellipsis else ("fixed", args)
    elif origin is dict:
        plan = ("dict", *typing.get_args(tp))
    elif tp is Any or tp is _NONE or tp in (float, bool, int, str):
        plan = (tp,)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        plan = ("enum", tp)
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        plan = ("dataclass", tp, tuple(
            (f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(tp)))
    else:
        raise TypeError(f"the protocol cannot rebuild type {tp!r}")  # a programming error, not bad input
    _PLANS[tp] = plan
    return plan


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _build(tp: Any, value: Any, path: str) -> Any:
    """``value`` (decoded JSON) as type ``tp``; _FieldError names the field path and what was expected."""
    plan = _plan(tp)
    kind = plan[0]
    if kind is float:
        if type(value) is float:
            return value
        if isinstance(value, str) and value in _NON_FINITE:
            return _NON_FINITE[value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _FieldError(f"{path}: expected a number, got {_short(value)}")
    if kind is int:
        if type(value) is not int:
            raise _FieldError(f"{path}: expected an integer, got {_short(value)}")
        return value
    if kind is str:
        if type(value) is not str:
            raise _FieldError(f"{path}: expected a string, got {_short(value)}")
        return value
    if kind is bool:
        if type(value) is not bool:
            raise _FieldError(f"{path}: expected true or false, got {_short(value)}")
        return value
    if kind == "union":
        _, nullable, options, whole = plan
        if value is None and nullable:
            return None
        if len(options) == 1:
            return _build(options[0], value, path)
        for option in options:
            try:
                return _build(option, value, path)
            except _FieldError:
                continue
        raise _FieldError(f"{path}: {_short(value)} matches none of {whole}")
    if kind == "dataclass":
        _, cls, fields = plan
        if type(value) is not dict:
            raise _FieldError(f"{path}: expected an object ({cls.__name__}), got {_short(value)}")
        kwargs = {}
        for name, hint, required in fields:
            if name in value:
                kwargs[name] = _build(hint, value[name], f"{path}.{name}" if path else name)
            elif required:
                raise _FieldError(f"{path + '.' if path else ''}{name}: missing (a required field of "
                                  f"{cls.__name__})")
        return cls(**kwargs)
    if kind == "tuple":
        if type(value) is not list:
            raise _FieldError(f"{path}: expected a list, got {_short(value)}")
        item = plan[1]
        return tuple([_build(item, v, f"{path}[{i}]") for i, v in enumerate(value)])
    if kind == "enum":
        try:
            return plan[1](value)
        except ValueError:
            raise _FieldError(f"{path}: expected one of {', '.join(repr(m.value) for m in plan[1])}, "
                              f"got {_short(value)}") from None
    if kind == "literal":
        if value not in plan[1]:
            raise _FieldError(f"{path}: expected one of {', '.join(map(repr, plan[1]))}, got {_short(value)}")
        return value
    if kind == "dict":
        _, key_tp, value_tp = plan
        if type(value) is not dict:
            raise _FieldError(f"{path}: expected an object, got {_short(value)}")
        return {_build(key_tp, k, f"{path} key"): _build(value_tp, v, f"{path}[{k!r}]") for k, v in value.items()}
    if kind == "fixed":
        args = plan[1]
        if type(value) is not list:
            raise _FieldError(f"{path}: expected a list, got {_short(value)}")
        if len(args) != len(value):
            raise _FieldError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(_build(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if kind is _NONE:
        if value is not None:
            raise _FieldError(f"{path}: expected null, got {_short(value)}")
        return None
    return value  # Any
