"""The Scenario contract: what a scenario file's ``build(device)`` returns.

Contract v1 (still accepted unchanged): ``data`` yields ``(inputs, targets)``,
the model is called ``model(*inputs)`` and the loss is ``loss_fn(outputs,
targets)``. Contract v2 lets real training code in without rewriting it:
any batch structure (see :mod:`workbench.scenario.batch`), the loss computed
inside the model (``loss_fn=None``) or as named parts, gradient clipping and a
``before_step`` hook, mixed precision, schedulers that step per epoch or take
arguments, time-major batches and state that lives outside the model.

Every command calls the model and computes the loss through
:meth:`Scenario.call_model` and :meth:`Scenario.compute_loss`, so a scenario
that runs in one command runs in all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from workbench.scenario.batch import PAIR, Batch, split_batch
from workbench.scenario.errors import ScenarioError
from workbench.scenario.outputs import describe_output, output_loss

AMP_MODES = (None, "bf16", "fp16")
SCHEDULER_INTERVALS = (None, "step", "epoch")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LossValue:
    """One loss computation: the total to backpropagate, its named parts, where it came from.

    ``parts`` is empty unless ``loss_fn`` returned a dict; then ``total`` is
    their sum. ``source`` is ``"loss_fn"``, ``"outputs.loss"`` or
    ``'outputs["loss"]'`` (the model computed it).
    """

    total: torch.Tensor
    parts: Mapping[str, torch.Tensor] = field(default_factory=dict)
    source: str = "loss_fn"

    @property
    def inside_model(self) -> bool:
        return self.source != "loss_fn"


class ScenarioOrigin(Protocol):
    """Where a Scenario came from, as the contract reads it; the loader's ScenarioSource is one.

    A protocol rather than the loader's class: the loader builds Scenarios, so the contract
    below it names only what it needs of a source and does not import the loader back.
    """

    @property
    def path(self) -> str | None: ...  # the .py file, when there is one

    @property
    def where(self) -> str: ...  # the file, module or spec, for messages

    @property
    def label(self) -> str: ...  # the short name lists and titles show

    def build(self, device: str | torch.device = "cpu") -> Scenario: ...  # a fresh Scenario


@dataclass
class Scenario:
    """Everything one training setup needs: model, optimizer, loss and data.

    ``data`` must be re-iterable (a DataLoader, a list of batches ...). It may
    yield ``(inputs, targets)`` (``model(*inputs)``, ``loss_fn(outputs,
    targets)``), a Mapping such as ``{"input_ids", "attention_mask",
    "labels"}`` (``model(**batch)``, ``loss_fn(outputs, batch)``) or any other
    structure together with ``forward(model, batch)``. Every tensor in a batch is
    moved to the scenario's device. See the README, "Writing a scenario", for
    each field with an example.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    # None: the model computes the loss (an HF model given labels): outputs.loss / outputs["loss"].
    # A callable may return a scalar Tensor or a dict of named scalar parts (summed).
    loss_fn: Callable[..., Any] | None
    data: Iterable[Any]
    name: str = ""
    description: str = ""
    scheduler: Any | None = None
    seed: int = 0
    # forward(model, batch): a pair's inputs tuple (contract v1), else the whole batch.
    forward: Callable[[nn.Module, Any], Any] | None = None
    eval_data: Iterable[Any] | None = None
    tags: tuple[str, ...] = ()
    # -- contract v2 ---------------------------------------------------------------
    batch_dim: int = 0  # the dimension that indexes samples: 1 for time-major (seq, batch, ...) models
    # Inputs every micro-batch and DDP shard gets whole, even when their length along batch_dim
    # is the batch size (a (seq, seq) causal mask when seq == batch): positions in a pair's inputs
    # tuple, or keys of a dict batch or of dict inputs.
    whole_inputs: tuple[int | str, ...] = ()
    amp: Literal["bf16", "fp16"] | None = None  # autocast as the user trains; fp16 adds a GradScaler
    clip_grad_norm: float | None = None  # max total gradient norm; the engine clips and records it
    before_step: Callable[[nn.Module, torch.optim.Optimizer], None] | None = None  # after backward
    scheduler_interval: Literal["step", "epoch"] | None = None  # None: per step (v1), with a check
    scheduler_step: Callable[[Any, int, int], None] | None = None  # (scheduler, step, epoch)
    state: Callable[[], Any] | None = None  # state outside the model, for snapshots (rewind/replay)
    load_state: Callable[[Any], None] | None = None  # puts back what state() returned
    carries_state: bool = False  # state lives outside the model (a carried hidden state ...)
    # Set by the loader: where this scenario came from, and what it noticed at load.
    source: ScenarioOrigin | None = field(default=None, repr=False, compare=False)
    load_warnings: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = _contract_problems(self)
        if problems:
            raise ScenarioError("Scenario(...) " + "; ".join(problems))

    # -- conveniences used by every layer -------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter or buffer (cpu if none)."""
        for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def where(self) -> str:
        """The scenario's file (or module, or name) for messages."""
        if self.source is not None:
            return self.source.where
        return self.name or "scenario"

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(
            p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only
        )

    # -- batches ------------------------------------------------------------------
    def make_batch(self, item: Any, where: str | None = None) -> Batch:
        """One item of ``data`` as a :class:`Batch` (validated; still where the data put it)."""
        batch = split_batch(item, where or f"{self.where}: data", free_form=self.forward is not None,
                            batch_dim=self.batch_dim)
        return dataclasses.replace(batch, whole=self.whole_inputs) if self.whole_inputs else batch

    # -- the model call and the loss ------------------------------------------------
    def call_model(self, batch: Batch | tuple[torch.Tensor, ...], model: nn.Module | None = None) -> Any:
        """Run the model the way the scenario says, through ``model`` when given (a DDP,
        DataParallel or compiled wrapper, a quantized copy), else ``self.model``.

        ``batch`` is a :class:`Batch` or, as in contract v1, a tuple of inputs.
        """
        net = self.model if model is None else model
        if not isinstance(batch, Batch):
            if self.forward is not None:
                return self.forward(net, batch)
            return net(*batch)
        if self.forward is not None:
            return self.forward(net, batch.forward_arg)
        args, kwargs = batch.model_args()
        return net(*args, **kwargs)

    @property
    def loss_inside_model(self) -> bool:
        """The model computes the loss itself (``loss_fn=None``)."""
        return self.loss_fn is None

    def compute_loss(self, outputs: Any, batch: Batch | Any) -> LossValue:
        """The loss of one forward: ``loss_fn(outputs, targets)`` for a pair batch,
        ``loss_fn(outputs, batch)`` otherwise, or the model's own ``.loss``.

        ``batch`` may also be a pair's targets as contract v1 passed them. Raises
        ScenarioError naming the scenario file when the result is not a scalar
        Tensor (or a dict of them), or when ``loss_fn=None`` and the output has no loss.
        """
        if self.loss_fn is None:
            loss, source = output_loss(outputs)
            if loss is None:
                raise ScenarioError(
                    f"{self.where}: loss_fn=None, so the loss must come from the model's output "
                    f"(outputs.loss or outputs['loss']), but the model returned "
                    f"{describe_output(outputs)}. Pass the labels in the batch (a Hugging Face model "
                    "computes the loss only when given labels=...) or give the scenario a loss_fn.",
                    path=self.source.path if self.source else None,
                )
            _check_scalar(loss, source, self)
            return LossValue(loss, {}, source)
        arg = batch.loss_arg if isinstance(batch, Batch) else batch
        result = self.loss_fn(outputs, arg)
        if isinstance(result, Mapping):
            if not result:
                raise ScenarioError(f"{self.where}: loss_fn returned an empty dict; expected named "
                                    "scalar loss parts such as {'ce': ..., 'aux': ...}.")
            parts = {str(k): v for k, v in result.items()}
            for name, part in parts.items():
                _check_scalar(part, f"loss_fn's part {name!r}", self)
            total = sum(parts.values())  # type: ignore[arg-type]
            assert isinstance(total, torch.Tensor)
            return LossValue(total.reshape(()), parts, "loss_fn")
        _check_scalar(result, "loss_fn", self)
        return LossValue(result, {}, "loss_fn")

    def loss(self, outputs: Any, batch: Batch | Any) -> torch.Tensor:
        """The total loss tensor of :meth:`compute_loss` (what ``backward`` is called on)."""
        return self.compute_loss(outputs, batch).total

    @property
    def loss_is_summed(self) -> bool:
        """``loss_fn`` sums over samples (``reduction="sum"``): micro-batch losses add up as
        they are instead of being weighted by their share of the batch."""
        return getattr(self.loss_fn, "reduction", "mean") == "sum"

    # -- mixed precision -----------------------------------------------------------
    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.amp) if self.amp else None

    def autocast(self, dtype: torch.dtype | None | Literal["scenario"] = "scenario") -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` for the scenario's device: its own ``amp`` by default, ``dtype``
        when given, none for ``None``."""
        chosen = self.amp_dtype if dtype == "scenario" else dtype
        if chosen is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=chosen)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for ``amp="fp16"`` (None otherwise); on CPU too (torch >= 2.3)."""
        if self.amp != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)


def _check_scalar(value: Any, what: str, s: Scenario) -> None:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return
    if isinstance(value, torch.Tensor) and value.is_complex():
        raise ScenarioError(
            f"{s.where}: {what} returned a complex tensor ({value.dtype}); a loss to minimise must be real. "
            "Reduce it to a real number, e.g. z.abs().pow(2).mean() or (z.real ** 2).mean().",
            path=s.source.path if s.source else None,
        )
    got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
    raise ScenarioError(
        f"{s.where}: {what} returned {got}; expected a scalar Tensor (reduce with .mean() or .sum()), "
        "or from loss_fn a dict of named scalar Tensors.",
        path=s.source.path if s.source else None,
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _contract_problems(s: Scenario) -> list[str]:
    problems: list[str] = []
    if not isinstance(s.model, nn.Module):
        problems.append(f"model must be a torch.nn.Module, got {type(s.model).__name__}")
    if not isinstance(s.optimizer, torch.optim.Optimizer):
        problems.append(
            f"optimizer must be a torch.optim.Optimizer, got {type(s.optimizer).__name__}"
        )
    if s.loss_fn is not None and not callable(s.loss_fn):
        problems.append(
            f"loss_fn must be callable (outputs, targets) -> Tensor, or None when the model returns "
            f".loss, got {type(s.loss_fn).__name__}")
    if s.data is None or not hasattr(s.data, "__iter__"):
        problems.append(
            f"data must be re-iterable (a DataLoader or a list of (inputs, targets)), got {type(s.data).__name__}"
        )
    elif iter(s.data) is s.data:
        problems.append(
            "data is a one-shot iterator (a generator?); pass something re-iterable "
            "such as a DataLoader or a list of batches"
        )
    if s.eval_data is not None and not hasattr(s.eval_data, "__iter__"):
        problems.append(f"eval_data must be re-iterable, got {type(s.eval_data).__name__}")
    if not isinstance(s.name, str):
        problems.append(f"name must be a str, got {type(s.name).__name__}")
    if not isinstance(s.description, str):
        problems.append(f"description must be a str, got {type(s.description).__name__}")
    if not isinstance(s.seed, int) or isinstance(s.seed, bool):
        problems.append(f"seed must be an int, got {type(s.seed).__name__}")
    if s.forward is not None and not callable(s.forward):
        problems.append("forward must be a callable forward(model, inputs) -> outputs")
    if s.scheduler is not None and not hasattr(s.scheduler, "step"):
        problems.append(f"scheduler must have a step() method, got {type(s.scheduler).__name__}")
    if not isinstance(s.batch_dim, int) or isinstance(s.batch_dim, bool) or s.batch_dim < 0:
        problems.append(f"batch_dim must be an int >= 0 (0, or 1 for time-major batches), got {s.batch_dim!r}")
    if not isinstance(s.whole_inputs, tuple) or not all(
            (isinstance(w, int) and not isinstance(w, bool) and w >= 0) or isinstance(w, str) for w in s.whole_inputs):
        problems.append("whole_inputs must be a tuple of input positions (ints >= 0) or dict keys (strs), "
                        f"e.g. whole_inputs=(1,) for a mask passed second; got {s.whole_inputs!r}")
    if s.amp not in AMP_MODES:
        problems.append(f'amp must be "bf16", "fp16" or None, got {s.amp!r}')
    if s.clip_grad_norm is not None and not (_is_number(s.clip_grad_norm) and s.clip_grad_norm > 0
                                             and math.isfinite(s.clip_grad_norm)):
        problems.append(f"clip_grad_norm must be a positive number (the max total norm), got {s.clip_grad_norm!r}")
    if s.scheduler_interval not in SCHEDULER_INTERVALS:
        problems.append(f'scheduler_interval must be "step", "epoch" or None, got {s.scheduler_interval!r}')
    for name in ("before_step", "scheduler_step", "state", "load_state"):
        value = getattr(s, name)
        if value is not None and not callable(value):
            problems.append(f"{name} must be callable, got {type(value).__name__}")
    if (s.state is None) != (s.load_state is None):
        problems.append("state and load_state go together: state() returns what load_state(value) puts back")
    if not isinstance(s.carries_state, bool):
        problems.append(f"carries_state must be True or False, got {s.carries_state!r}")
    if not isinstance(s.tags, (tuple, list)):
        problems.append(f"tags must be a tuple of str, got {type(s.tags).__name__}")
    return problems


__all__ = ["Scenario", "LossValue", "PAIR"]
