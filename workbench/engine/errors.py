"""StepError: a user exception raised inside a training step, with advice.

Every command that runs the user's step says "the user's step raised" with one type,
TrainingStepError (step, phase or None, the original exception, the user's file:line):
StepError when the step runs phase by phase (the engine; the profiler's loop,
``profiling.errors.ProfileStepError``), ``bench.timing.BenchStepError`` for a bench's
timed step, which runs as one piece.

The common ways a training step fails (a loss that rejects the shapes, class
indices of the wrong dtype, tensors on two devices, BatchNorm at batch size 1,
out of memory, ...) are recognised in one table, ``KNOWN_ERRORS``, so every
front end (run, check, the TUI) gives the same one-line advice.
"""

from __future__ import annotations

import re
import time
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workbench.engine.records import Phase
from workbench.errors import exception_text, message_of, user_frames


@dataclass(frozen=True)
class ErrorContext:
    """What the engine knew when the phase failed (all optional: data may fail before a batch exists)."""

    batch_size: int | None = None
    call: str | None = None  # the call that raised, with shapes: "loss_fn(outputs (8, 3) float32, ...)"
    module: str | None = None  # the innermost model module on the stack: "'1' (BatchNorm1d)"


# (match, phase or None for a whole step, context) -> the advice.
Advice = Callable[[re.Match[str], Phase | None, ErrorContext], str]


@dataclass(frozen=True)
class KnownError:
    """One recognisable failure: an exception type and message pattern -> advice."""

    name: str
    pattern: re.Pattern[str]
    advice: str | Advice  # fixed text, or built from the match and the context
    types: tuple[type[BaseException], ...] = (Exception,)
    phases: tuple[Phase, ...] = ()  # empty: any phase

    def match(self, exc: BaseException, phase: Phase | None) -> re.Match[str] | None:
        if not isinstance(exc, self.types) or (self.phases and phase not in self.phases):
            return None
        return self.pattern.search(message_of(exc))


def _batch(ctx: ErrorContext) -> str:
    return f"batch size {ctx.batch_size}" if ctx.batch_size is not None else "this batch size"


def _oom(m: re.Match[str], phase: Phase | None, ctx: ErrorContext) -> str:
    where = f"the {phase.value} phase" if phase is not None else "the training step"
    return (f"out of memory in {where} at {_batch(ctx)}: use a smaller batch, mixed "
            "precision (AMP) or gradient accumulation over smaller micro-batches; compare them with "
            "`workbench bench SCENARIO --variants fp32,amp,accum-4`.")


def _batchnorm(m: re.Match[str], phase: Phase | None, ctx: ErrorContext) -> str:
    which = f"BatchNorm module {ctx.module}" if ctx.module else "BatchNorm"
    return (f"{_batch(ctx)}: {which} in training mode needs more than one value per channel: use a batch "
            "of 2 or more, or drop_last=True on the DataLoader (a last partial batch of one sample "
            "fails the same way).")


# Fixed advice (the ones below depend on the match or the context).
LOSS_SHAPES = (
    "the loss cannot pair these outputs with these targets: the model's last layer must give one output "
    "per class (or per regression target) and the targets must fit it; element-wise losses (MSE, BCE) "
    "need equal shapes (outputs.squeeze(-1) or targets.unsqueeze(-1) for an (N, 1) vs (N,) mismatch), "
    "CrossEntropyLoss wants (N,) class indices or (N, C) probabilities."
)
CLASS_TARGETS = (
    "CrossEntropyLoss/NLLLoss take targets as class indices, shape (N,) and dtype torch.long "
    "(targets.long()), or as class probabilities, floating point with the outputs' shape (N, C); "
    "one-hot integer targets: use targets.argmax(1)."
)
FLOAT_TARGETS = "this loss needs floating-point targets: convert them with targets.float() in the data."
CLASS_RANGE = (
    "a target class index is >= the number of model outputs (or negative): the last layer needs as many "
    "outputs as classes (max target + 1), and class indices start at 0."
)
DEVICES = (
    "tensors on two devices met: build the model with model.to(device), create tensors inside "
    "forward/loss on the input's device (torch.zeros(..., device=x.device)), and move loss weights too; "
    "the engine moves every batch to the scenario's device itself."
)
DTYPES = (
    "the data's dtype differs from the weights': numpy arrays become float64, so convert with "
    "torch.as_tensor(x, dtype=torch.float32) or .float() in the data (or use model.double())."
)

DATALOADER_WORKER = (
    "a DataLoader worker process failed: a data-loading error, not the model's, whatever phase was "
    "running when it was noticed. A worker killed by a signal is most often "
    "the out-of-memory killer (each worker holds a copy of the Dataset: lower num_workers or the Dataset's "
    "size in memory) or a crash in native code; run with num_workers=0 to see the dataset's own error."
)
# torch.utils.data's messages when a worker dies, is killed, or raises in the dataset.
_DATALOADER_RE = re.compile(
    r"DataLoader worker \(pids?(\(s\))? [\d, ]+\) (exited unexpectedly|is killed by signal)|"
    r"in DataLoader worker process \d+")


def is_data_loading_error(exc: BaseException) -> bool:
    """True when a DataLoader worker died or its dataset raised (whatever phase noticed it)."""
    return isinstance(exc, Exception) and bool(_DATALOADER_RE.search(message_of(exc)))


def worker_death(exc: BaseException) -> RuntimeError | None:
    """The DataLoader's own "worker ... is killed" error behind ``exc``, or None.

    A worker that dies while handing a batch over (its tensors travel as shared-memory file
    descriptors) leaves the reader with a ConnectionResetError or EOFError from inside the
    DataLoader's fetch, before its SIGCHLD handler says which worker died. Asking torch's
    worker check then gives the real error, with ``exc`` as its cause.
    """
    if not isinstance(exc, (ConnectionError, EOFError)) or not _raised_in_dataloader(exc):
        return None
    try:
        from torch.utils.data._utils.signal_handling import _error_if_any_worker_fails
    except ImportError:  # a torch without that private check: keep the error as it came
        return None
    # The reader's socket closes as the worker exits, a moment before the worker can be reaped:
    # look again for up to half a second (only on this already-failed path).
    for _ in range(50):
        try:
            _error_if_any_worker_fails()
        except RuntimeError as death:
            death.__cause__ = exc
            return death
        except Exception:
            return None
        time.sleep(0.01)
    return None


def _raised_in_dataloader(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.replace("\\", "/").endswith("torch/utils/data/dataloader.py"):
            return True
        tb = tb.tb_next
    return False


USER_EXIT = (
    "the scenario's code called sys.exit() (or exit(), or os._exit()) inside the training step: that would end the "
    "workbench, so it counts as this step failing. Raise an exception to signal an error instead."
)


def _linear(m: re.Match[str], phase: Phase | None, ctx: ErrorContext) -> str:
    who = f"Linear {ctx.module}" if ctx.module else "a Linear layer"
    return (f"{who} receives {m.group(2)} features per sample but was built for {m.group(3)}: set its "
            "in_features to what reaches it (check the flatten/reshape before it).")


def _conv(m: re.Match[str], phase: Phase | None, ctx: ErrorContext) -> str:
    who = ctx.module or "a convolution"
    return (f"{who} expects {m.group(1)} input channels but got {m.group(2)}: match in_channels to the "
            "data (grayscale 1, RGB 3) and keep images channels-first, (N, C, H, W).")


def _embedding(m: re.Match[str], phase: Phase | None, ctx: ErrorContext) -> str:
    who = f"Embedding {ctx.module}" if ctx.module else "an Embedding"
    return (f"{who} got an index outside [0, num_embeddings): size it to the largest id + 1 "
            "or remap the ids.")


def _keyword_batch(m: re.Match[str], phase: Phase | None, ctx: ErrorContext) -> str:
    return (f"the data yielded a dict (a Mapping), so the model is called as model(**batch), and its "
            f"forward() takes no argument {m.group(1)!r}: name the batch's keys after forward()'s "
            "parameters (input_ids=..., labels=...), or yield pairs instead, expected (inputs, targets) for "
            "model(*inputs), or give the scenario forward=lambda model, batch: model(batch['x']).")


def _no_graph(m: re.Match[str], phase: Phase | None, ctx: ErrorContext) -> str:
    if not torch.is_grad_enabled():
        return ("gradient recording is off in this process: build() or the model called "
                "torch.set_grad_enabled(False) (or entered torch.no_grad() and never left it), so the loss "
                "has no graph. Scope it instead: `with torch.no_grad():` around evaluation only.")
    return ("the loss has no graph back to any parameter: it was computed under torch.no_grad(), from "
            ".detach()ed or .item() values, or from integer tensors, or every parameter has "
            "requires_grad=False. Compute it from the model's outputs as they come.")


def _re(text: str) -> re.Pattern[str]:
    return re.compile(text, re.DOTALL)


# First match wins: specific patterns before general ones.
KNOWN_ERRORS: tuple[KnownError, ...] = (
    KnownError("out_of_memory", _re(r"."), _oom, types=(torch.OutOfMemoryError,)),
    KnownError("batchnorm_batch_1", _re(r"Expected more than 1 value per channel when training"), _batchnorm),
    KnownError("class_index_targets", _re(
        r"expected target dtype to be Long|expected scalar type Long|Expected floating point type for "
        r"target with class probabilities|0D or 1D target tensor expected|nll_loss.*not implemented for"),
        CLASS_TARGETS, phases=(Phase.LOSS,)),
    KnownError("class_out_of_range", _re(r"Target -?\d+ is out of bounds"), CLASS_RANGE, phases=(Phase.LOSS,)),
    KnownError("float_targets", _re(r"can't be cast to the desired output type (Long|Int|Bool)"),
               FLOAT_TARGETS, phases=(Phase.LOSS,)),
    KnownError("device_mismatch", _re(
        r"Expected all tensors to be on the same device|is not on the expected device|"
        r"Input type \(torch\.\w*FloatTensor\) and weight type \(torch\.\w*FloatTensor\)"), DEVICES),
    KnownError("dtype_mismatch", _re(
        r"must have the same dtype|expected scalar type (Float|Double|Half|BFloat16) but found|"
        r"Input type \(\w+\) and (bias|weight) type \(\w+\) should be the same"), DTYPES),
    KnownError("loss_shapes", _re(
        r"must match the size of tensor|Expected input batch_size|Target size .* must be the same as "
        r"input size|Using a target size .* different to the input size|shapes cannot be multiplied"),
        LOSS_SHAPES, phases=(Phase.LOSS,)),
    KnownError("linear_in_features", _re(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and "
                                         r"(\d+)x(\d+)\)"), _linear, phases=(Phase.FORWARD,)),
    KnownError("conv_channels", _re(r"expected input\[.*\] to have (\d+) channels, but got (\d+) channels"),
               _conv, phases=(Phase.FORWARD,)),
    KnownError("embedding_index", _re(r"index out of range in self"), _embedding, phases=(Phase.FORWARD,)),
    KnownError("keyword_batch", _re(r"forward\(\) got an unexpected keyword argument '(\w+)'"), _keyword_batch,
               types=(TypeError,), phases=(Phase.FORWARD,)),
    KnownError("loss_without_graph", _re(r"element 0 of tensors does not require grad and does not have a grad_fn"),
               _no_graph, types=(RuntimeError,)),
    KnownError("user_exit", _re(r""), USER_EXIT, types=(SystemExit, GeneratorExit)),
    KnownError("dataloader_worker", _DATALOADER_RE, DATALOADER_WORKER),
)


def known_error(exc: BaseException, phase: Phase | None) -> tuple[KnownError, re.Match[str]] | None:
    for known in KNOWN_ERRORS:
        m = known.match(exc, phase)
        if m is not None:
            return known, m
    return None


def describe_value(value: Any, device: torch.device | None = None) -> str:
    """'(8, 3) float32' for a tensor (plus 'on cuda:0' off ``device``), recursively for containers."""
    if isinstance(value, torch.Tensor):
        text = f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
        if device is not None and value.device != device:
            text += f" on {value.device}"
        return text
    if isinstance(value, (tuple, list)):
        inner = ", ".join(describe_value(v, device) for v in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"{type(value).__name__}[{inner}{more}]"
    if isinstance(value, dict):
        inner = ", ".join(f"{k!r}: {describe_value(v, device)}" for k, v in list(value.items())[:4])
        return f"dict{{{inner}{', ...' if len(value) > 4 else ''}}}"
    return type(value).__name__


def innermost_module(exc: BaseException, model: torch.nn.Module) -> str | None:
    """"'name' (Type)" of the deepest module of ``model`` whose code is on the exception's stack."""
    names = {id(m): n for n, m in model.named_modules()}
    found: str | None = None
    tb = exc.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, torch.nn.Module) and id(candidate) in names:
            found = f"{names[id(candidate)] or '(root)'!r} ({type(candidate).__name__})"
        tb = tb.tb_next
    return found


def _release_frames(exc: BaseException) -> None:
    """Drop the locals of the exception's finished frames (a failed step's activations).

    Before Python 3.13, reading ``f_locals`` (innermost_module does) caches a dict
    snapshot on the frame that ``frame.clear()`` leaves alone; reading it once more
    after the clear re-syncs it from the now-empty frame and drops those references.
    """
    if exc.__traceback__ is None:
        return
    traceback.clear_frames(exc.__traceback__)
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        tb.tb_frame.f_locals  # noqa: B018 - the read is the re-sync
        tb = tb.tb_next


class TrainingStepError(Exception):
    """The scenario's own code raised during step ``step`` (in ``phase``, when it ran phase by phase).

    ``phase`` is None when the step ran as one piece (a bench's timed step).
    ``original`` is the user's exception and ``traceback_text`` its formatted
    traceback; ``frames`` its user frames (``errors.user_frames``) and
    ``user_frame`` the innermost as 'file:line in name'; ``call`` the call that
    failed (with shapes), ``advice`` a hint from ``KNOWN_ERRORS`` (or None),
    ``oom`` whether it ran out of memory and ``data_loading`` whether fetching
    the batch failed. The exception's frames are cleared once formatted, so the
    tensors they held (an out-of-memory step's activations) are freed; the engine
    that raised this is still usable (history intact, the next call starts a
    fresh step).

    A subclass that words its own message overrides ``_message``, which runs at the
    end of ``__init__``: it sets what the message needs before calling this one.
    """

    def __init__(self, phase: Phase | None, step: int, original: BaseException,
                 context: ErrorContext | None = None, *, data_loading: bool = False) -> None:
        ctx = context or ErrorContext()
        self.phase = phase
        self.step = step
        self.original = original
        # A DataLoader worker's failure surfaces in whichever phase the engine was in
        # (a dead worker is noticed by a signal handler, or at the next batch): name
        # it for what it is, without the model call that merely happened to be running.
        self.data_loading = data_loading or is_data_loading_error(original)
        self.stage = ("data loading" if self.data_loading
                      else f"{phase.value} phase" if phase is not None else "training step")
        self.batch_size = ctx.batch_size
        self.call = None if self.data_loading else ctx.call
        self.module = None if self.data_loading else ctx.module
        self.oom = isinstance(original, torch.OutOfMemoryError)
        self.traceback_text = "".join(
            traceback.format_exception(type(original), original, original.__traceback__)
        )
        frames = user_frames(original)
        self.frames: tuple[traceback.FrameSummary, ...] = tuple(frames)
        self.user_traceback = "".join(traceback.format_list(frames))
        self.user_frame: str | None = (
            f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else None
        )
        hit = known_error(original, phase)
        self.kind: str | None = hit[0].name if hit else None
        self.advice: str | None = None
        if hit is not None:
            advice = hit[0].advice
            self.advice = advice if isinstance(advice, str) else advice(hit[1], phase, ctx)
        _release_frames(original)
        super().__init__(self._message())

    @property
    def headline(self) -> str:
        """One line: 'step 3, forward phase: RuntimeError: ...' (the first line of the message)."""
        first = exception_text(self.original).strip().partition("\n")[0]
        return f"step {self.step}, {self.stage}: {first}"

    def _message(self) -> str:
        lines = [f"step {self.step}, {self.stage}: {exception_text(self.original)}"]
        where = [w for w in (self.call, f"module {self.module}" if self.module else None) if w]
        if where:
            lines.append(f"  in {', inside '.join(where)}")
        if self.user_frame:
            lines.append(f"  at {self.user_frame}")
        if self.advice:
            lines.append(f"  hint: {self.advice}")
        return "\n".join(lines)


class StepError(TrainingStepError):
    """The user's code raised in ``phase`` of a step that runs phase by phase: the engine's,
    and the profiled loop's (``profiling.errors.ProfileStepError``)."""

    phase: Phase

    def __init__(self, phase: Phase, step: int, original: BaseException,
                 context: ErrorContext | None = None, *, data_loading: bool = False) -> None:
        super().__init__(phase, step, original, context, data_loading=data_loading)


def describe_call(phase: Phase, inputs: Sequence[Any], outputs: Any, targets: Any,
                  device: torch.device | None) -> str | None:
    """The call a phase makes, with shapes; None when there is nothing informative to show."""
    if phase is Phase.FORWARD and inputs:
        return f"model({', '.join(describe_value(x, device) for x in inputs)})"
    if phase is Phase.LOSS and targets is not None:
        return (f"loss_fn(outputs {describe_value(outputs, device)}, "
                f"targets {describe_value(targets, device)})")
    return None
