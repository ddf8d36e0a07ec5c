"""Batches as the data yields them: ``(inputs, targets)``, a Mapping, or any nesting.

A :class:`Batch` keeps the structure the user's data produced and knows three
things about it: which tensors it holds (to move them, to split them, to show
their shapes), how the model is called with it, and what the loss function
receives. Every command builds its batches with :func:`split_batch` and
moves, splits and measures them through :class:`Batch`, so a structure that
works in ``run`` works in ``bench``, ``profile`` and ``diff`` too.

Styles:

``pair``     ``(inputs, targets)``: ``model(*inputs)`` (a Tensor is one input; a
             Mapping of inputs is passed as keywords), ``loss_fn(outputs, targets)``.
``mapping``  a dict or any Mapping (an HF ``BatchEncoding``): ``model(**batch)``,
             ``loss_fn(outputs, batch)``.
``tree``     anything else (a dataclass, a 3-tuple, a list ...): the scenario's
             ``forward(model, batch)`` calls the model, ``loss_fn(outputs, batch)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch

from workbench.scenario.errors import ScenarioError

PAIR, MAPPING, TREE = "pair", "mapping", "tree"


# -- walking a structure ----------------------------------------------------------------


def tree_map(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``value`` with every tensor leaf replaced by ``fn(leaf)``; other leaves kept as they are.

    Tuples (named tuples too), lists, Mappings and dataclass instances are rebuilt
    with their own type where that type can be rebuilt from its items (a
    ``BatchEncoding`` stays one), else as the nearest plain container.
    """
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        items = [tree_map(fn, v) for v in value]
        if hasattr(value, "_fields"):  # a named tuple
            return type(value)(*items)
        return tuple(items)
    if isinstance(value, list):
        return [tree_map(fn, v) for v in value]
    if isinstance(value, Mapping):
        mapped = {k: tree_map(fn, v) for k, v in value.items()}
        if type(value) is dict:
            return mapped
        try:
            return cast(Any, type(value))(mapped)
        except Exception:  # a Mapping type that cannot be rebuilt from a dict
            return items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: tree_map(fn, getattr(value, f.name))
                   for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


def tree_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor leaf of ``value``, depth first, in the structure's own order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from tree_tensors(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from tree_tensors(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from tree_tensors(getattr(value, f.name))


def _all_on(value: Any, device: torch.device) -> bool:
    """Every tensor of ``value`` is on ``device`` (a plain tensor checked without a walk)."""
    if isinstance(value, torch.Tensor):
        return value.device == device
    return all(t.device == device for t in tree_tensors(value))


def _move(device: torch.device, non_blocking: bool | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def move(t: torch.Tensor) -> torch.Tensor:
        if t.device == device:
            return t
        # non_blocking only helps (and is only safe to ask for by default) from pinned host
        # memory to a GPU; anywhere else it is a plain copy anyway.
        nb = non_blocking if non_blocking is not None else (
            device.type == "cuda" and t.device.type == "cpu" and t.is_pinned())
        return t.to(device, non_blocking=nb)

    return move


# -- the batch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One batch, validated, in the structure the data yielded.

    ``pair`` batches keep ``inputs`` (a tuple of positional inputs, or a Mapping of
    keyword inputs) and ``targets``; ``mapping`` and ``tree`` batches keep the
    whole structure in ``data`` (``inputs`` is then ``()`` and ``targets`` None).
    ``batch_dim`` is the dimension that indexes samples (1 for time-major models).
    """

    inputs: Any
    targets: Any
    data: Any = None
    style: str = PAIR
    batch_dim: int = 0
    whole: tuple[int | str, ...] = ()  # Scenario.whole_inputs: inputs split() leaves whole

    # -- what the model and the loss get -------------------------------------------
    def model_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments of the default model call."""
        if self.style == PAIR:
            if isinstance(self.inputs, Mapping):
                return (), dict(self.inputs)
            return tuple(self.inputs), {}
        if self.style == MAPPING:
            return (), dict(self.data)
        raise ScenarioError(
            f"a batch of type {type(self.data).__name__} has no default model call; give the "
            "scenario forward=lambda model, batch: model(...) to say how the model takes it."
        )

    @property
    def forward_arg(self) -> Any:
        """What a scenario's ``forward(model, batch)`` receives: the inputs of a pair (as
        in contract v1), the whole structure otherwise."""
        return self.inputs if self.style == PAIR else self.data

    @property
    def loss_arg(self) -> Any:
        """What ``loss_fn(outputs, ...)`` receives: the targets of a pair, else the whole batch."""
        return self.targets if self.style == PAIR else self.data

    # -- tensors -------------------------------------------------------------------
    @property
    def structure(self) -> Any:
        """The batch as yielded: ``(inputs, targets)`` for a pair, ``data`` otherwise."""
        return (self.inputs, self.targets) if self.style == PAIR else self.data

    def tensors(self) -> list[torch.Tensor]:
        return list(tree_tensors(self.structure))

    def input_tensors(self) -> list[torch.Tensor]:
        """The tensors the model is called with (a pair's targets left out)."""
        return list(tree_tensors(self.inputs if self.style == PAIR else self.data))

    @property
    def size(self) -> int:
        """Samples in the batch: the length along ``batch_dim`` of its first tensor that has
        that dimension (a pair's targets first, as contract v1 counted)."""
        first = self.targets if self.style == PAIR else self.data
        if isinstance(first, torch.Tensor) and first.dim() > self.batch_dim:  # the usual batch: no walk
            return int(first.shape[self.batch_dim])
        order = [*tree_tensors(self.targets), *tree_tensors(self.inputs)] if self.style == PAIR else self.tensors()
        for t in order:
            if t.dim() > self.batch_dim:
                return int(t.shape[self.batch_dim])
        return 1

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], *, inputs_only: bool = False) -> Batch:
        """The same batch with ``fn`` applied to every tensor (to a pair's inputs only, if asked)."""
        if self.style == PAIR:
            targets = self.targets if inputs_only else tree_map(fn, self.targets)
            return dataclasses.replace(self, inputs=tree_map(fn, self.inputs), targets=targets)
        return dataclasses.replace(self, data=tree_map(fn, self.data))

    def to(self, device: torch.device | str, non_blocking: bool | None = None) -> Batch:
        """Every tensor on ``device``; non-tensor leaves pass through. ``non_blocking``
        defaults to True exactly for pinned host tensors going to a GPU. A batch already there
        is returned as it is (every CPU step: rebuilding it cost more than the check)."""
        device = torch.device(device)
        parts = (self.inputs, self.targets) if self.style == PAIR else (self.data,)
        if all(_all_on(part, device) for part in parts):
            return self
        return self.map(_move(device, non_blocking))

    def split(self, k: int, dim: int | None = None) -> list[Batch]:
        """``k`` micro-batches along ``dim`` (default ``batch_dim``), sizes differing by at most one.

        Tensors whose length along ``dim`` is not the batch size (a causal mask, a
        carried hidden state, a scalar) go whole into every micro-batch, and so do the
        inputs named in ``whole`` whatever their length. With ``dim`` >= 1 (time-major
        batches) a tensor that has no such dimension but is batch-sized along its first one
        (the targets ``(B,)`` of a ``(T, B)`` batch, the lengths of packed sequences) is cut
        along that one: passed whole, each micro-batch's outputs met all the targets.
        """
        dim = self.batch_dim if dim is None else dim
        kept = {id(t) for t in self._whole_tensors()}
        n = self.size if dim == self.batch_dim else None
        if n is None:
            n = next((int(t.shape[dim]) for t in self.tensors() if t.dim() > dim), 1)
        if k < 1 or n < k:
            raise ScenarioError(
                f"a batch of {n} samples (dim {dim}) cannot be split into {k} parts; use a larger "
                f"batch or fewer parts")
        bounds = [len(part) for part in torch.arange(n).tensor_split(k)]
        starts = [sum(bounds[:j]) for j in range(k)]

        def part(j: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def cut(t: torch.Tensor) -> torch.Tensor:
                if id(t) in kept:
                    return t
                if t.dim() <= dim:  # per sample along its first dimension, or whole
                    return t.narrow(0, starts[j], bounds[j]) if t.dim() and t.shape[0] == n else t
                if t.shape[dim] != n:
                    return t
                return t.narrow(dim, starts[j], bounds[j])
            return cut

        return [self.map(part(j)) for j in range(k)]

    def _whole_tensors(self) -> list[torch.Tensor]:
        """The tensors under the inputs ``whole`` names (positions of a tuple, keys of a dict)."""
        if not self.whole:
            return []
        holder = self.inputs if self.style == PAIR else self.data
        found: list[torch.Tensor] = []
        for w in self.whole:
            if isinstance(holder, Mapping) and w in holder:
                found += tree_tensors(holder[w])
            elif isinstance(holder, (tuple, list)) and isinstance(w, int) and w < len(holder):
                found += tree_tensors(holder[w])
        return found


# -- building one from what the data yielded --------------------------------------------


def _has_tensor(value: Any) -> bool:
    return next(tree_tensors(value), None) is not None


def split_batch(item: Any, where: str = "scenario data", *, free_form: bool = False,
                batch_dim: int = 0) -> Batch:
    """Check one item yielded by ``Scenario.data`` and wrap it in a :class:`Batch`.

    ``free_form``: the scenario gives its own ``forward``, so any structure holding a
    tensor is accepted. Raises ScenarioError that says what was yielded and what
    was expected.
    """
    if isinstance(item, Mapping):
        if not _has_tensor(item):
            raise ScenarioError(
                f"{where} yielded a {type(item).__name__} with no tensor in it (keys: "
                f"{', '.join(map(str, list(item)[:8]))}); expected tensors such as input_ids.")
        return Batch((), None, item, MAPPING, batch_dim)
    is_pair = isinstance(item, (tuple, list)) and len(item) == 2 and not hasattr(item, "_fields")
    if is_pair:
        inputs, targets = item
        if isinstance(inputs, torch.Tensor):
            inputs_t: Any = (inputs,)
        elif isinstance(inputs, Mapping) and _has_tensor(inputs):
            inputs_t = inputs
        elif isinstance(inputs, (tuple, list)) and _has_tensor(inputs):
            inputs_t = tuple(inputs)
        elif free_form and _has_tensor(item):
            return Batch((), None, item, TREE, batch_dim)
        else:
            raise ScenarioError(
                f"{where} yielded inputs of type {type(inputs).__name__}; expected a Tensor, a "
                "non-empty tuple of Tensors or a dict of Tensors. (With another structure, give "
                "the scenario forward=lambda model, batch: ... to say how the model takes it.)"
            )
        if not _has_tensor(targets):
            if free_form:
                return Batch((), None, item, TREE, batch_dim)
            raise ScenarioError(
                f"{where} yielded targets of type {type(targets).__name__}; expected a Tensor "
                "(or a structure of Tensors)."
            )
        return Batch(inputs_t, targets, None, PAIR, batch_dim)
    if free_form and _has_tensor(item):
        return Batch((), None, item, TREE, batch_dim)
    got = type(item).__name__
    if isinstance(item, (tuple, list)):
        got += f" of length {len(item)}"
    raise ScenarioError(
        f"{where} yielded a {got}; expected (inputs, targets) where inputs is a Tensor "
        "or a tuple of Tensors and targets a Tensor, or a dict of Tensors (called as "
        "model(**batch)). For any other structure give the scenario "
        "forward=lambda model, batch: ... to say how the model takes it."
    )
