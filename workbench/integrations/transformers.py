"""Hugging Face ``Trainer`` (transformers 5.x): ``WorkbenchCallback(**watch_kwargs)`` over ``workbench.watch``.

::

    from workbench.integrations.transformers import WorkbenchCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[WorkbenchCallback(every=16, report="runs/watch/exp1.json")])
    trainer.train()

The watch starts at ``on_train_begin`` (the Trainer has built its optimizer by then) on the
model and the optimizer under accelerate's wrapper; steps end on that optimizer's own step
hooks, so one step is one Trainer step (``gradient_accumulation_steps`` batches). The Trainer
clips gradients (``max_grad_norm``) before ``optimizer.step()``: the gradient stats are the
clipped gradients the optimizer uses. The loss is the one the model returns
(``outputs.loss``), over the step's micro-batches as the Trainer logs it (their sum when the
model takes ``num_items_in_batch``, their mean otherwise). A ``workbench.Break`` raised at a breakpoint ends ``trainer.train()``;
the watch is closed (hooks removed, report written) before it propagates.
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        f"workbench.integrations.transformers needs transformers ({exc}). Install it with "
        "`pip install 'torch-workbench[hf]'`.") from exc

from workbench.session.watch import Watch, watch


class WorkbenchCallback(TrainerCallback):
    """Watch a Hugging Face Trainer run; takes ``workbench.watch``'s keyword arguments.

    ``callback.watch`` is the Watch once training started (findings, history), and stays
    readable after the run ends.
    """

    def __init__(self, **watch_kwargs: Any) -> None:
        self.watch_kwargs = watch_kwargs
        self.watch: Watch | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if model is None:
            raise RuntimeError("WorkbenchCallback: the Trainer passed no model to on_train_begin")
        options = {"title": type(model).__name__, "close_on_break": True, **self.watch_kwargs}
        self.watch = watch(model, optimizer, **options)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._open():
            self.watch.epoch = int(state.epoch or 0)  # type: ignore[union-attr]
            self.watch.begin_step()  # type: ignore[union-attr]

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None:
            self.watch.close()

    def close(self, exc: BaseException | None = None) -> None:
        """Close the watch when ``trainer.train()`` raised (the Trainer has no exception callback)."""
        if self.watch is not None:
            self.watch.close(exc)

    def _open(self) -> bool:
        return self.watch is not None and not self.watch.closed
