"""Lightning 2.x: ``WorkbenchCallback(**watch_kwargs)``, a thin adapter over ``workbench.watch``.

::

    from workbench.integrations.lightning import WorkbenchCallback

    trainer = L.Trainer(callbacks=[WorkbenchCallback(every=16, report="runs/watch/exp1.json")])

Lightning runs the forward and backward inside ``optimizer.step(closure)``, so the
optimizer's own pre-step hook comes before them: the backward boundary is Lightning's
``on_before_optimizer_step`` instead (after the closure, before the update), and the loss
is the one ``on_before_backward`` receives. One step is one optimizer step (with
``accumulate_grad_batches=k``, k batches, and its loss the mean of theirs, undivided by k);
with several optimizers, one round of them.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        f"workbench.integrations.lightning needs Lightning 2.x ({exc}). Install it with "
        "`pip install 'torch-workbench[lightning]'`.") from exc

from workbench.session.watch import Watch, watch


class WorkbenchCallback(pl.Callback):
    """Watch a Lightning training run; takes ``workbench.watch``'s keyword arguments.

    ``callback.watch`` is the Watch once training started (findings, history), and stays
    readable after the run ends.
    """

    def __init__(self, **watch_kwargs: Any) -> None:
        super().__init__()
        self.watch_kwargs = watch_kwargs
        self.watch: Watch | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        kwargs = {"title": type(pl_module).__name__, **self.watch_kwargs}
        # precision="16-mixed" scales the loss with its plugin's GradScaler: the watch unscales
        # the output-gradient norms with it (the parameters' are unscaled before this hook).
        kwargs.setdefault("scaler", getattr(trainer.precision_plugin, "scaler", None))
        self.watch = watch(pl_module, list(trainer.optimizers) or None, step_pre_hooks=False, **kwargs)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._open():
            self.watch.epoch = trainer.current_epoch  # type: ignore[union-attr]
            if batch_idx % max(trainer.accumulate_grad_batches, 1) == 0:
                self.watch.begin_step()  # type: ignore[union-attr]

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
        if self._open():
            loss = _unscaled(loss, getattr(trainer.precision_plugin, "scaler", None))
            k = trainer.accumulate_grad_batches
            if pl_module.automatic_optimization and k > 1 and hasattr(loss, "detach"):
                # Lightning divides training_step's loss by k before the backward: this batch's own
                # loss is k times it (the watch takes the mean over the step's k batches).
                loss = loss.detach() * k
            self.watch.set_loss(loss, "training_step")  # type: ignore[union-attr]

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._open():
            self.watch.before_optimizer_step(optimizer)  # type: ignore[union-attr]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.watch is not None:
            self.watch.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.watch is not None:
            self.watch.close(exception)

    def _open(self) -> bool:
        return self.watch is not None and not self.watch.closed


def _unscaled(loss: Any, scaler: Any) -> Any:
    """The loss as training_step returned it: under precision="16-mixed" the plugin hands this
    hook the loss its GradScaler multiplied by the scale (65536, then more as it grows), which
    read as the loss would be that much larger and jump at each growth of the scale. Divided by
    the scale tensor the scaler multiplied by (a power of two: exact), on the device: no sync."""
    scale = getattr(scaler, "_scale", None) if scaler is not None and scaler.is_enabled() else None
    if scale is None or not hasattr(loss, "detach"):
        return loss
    return loss.detach() / scale.to(loss.device)
