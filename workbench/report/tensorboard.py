"""TensorBoard output for `workbench run --tensorboard DIR` (SummaryWriter, imported lazily).

Scalars every step: loss, lr per param group, total and per-parameter
gradient norms (per-parameter ones on measured steps). Weight and gradient
histograms every ``histogram_every`` steps, taken after backward (before the
optimizer step clears the gradients).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench.engine.records import StepRecord


class TensorBoardMissing(Exception):
    """tensorboard is not installed."""


def _summary_writer() -> Any:
    # add_histogram goes through numpy; OpenBLAS's spinning threads then slow the next torch
    # step ~2x on small CPUs (ENVIRONMENT.md). This only helps if numpy is not loaded yet
    # (importing torch loads it): `workbench run --tensorboard` sets it before torch.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch raises ImportError when tensorboard is missing
        raise TensorBoardMissing(
            f"--tensorboard needs the tensorboard package ({exc}). Install it with "
            "`pip install 'torch-workbench[tb]'` (or `pip install tensorboard`), or drop --tensorboard."
        ) from exc
    return SummaryWriter


class TensorBoardWriter:
    def __init__(self, logdir: str | Path, histogram_every: int = 10) -> None:
        writer_cls = _summary_writer()
        self.logdir = Path(logdir)
        self.histogram_every = max(1, histogram_every)
        self._writer = writer_cls(log_dir=str(self.logdir))

    def step(self, record: StepRecord) -> None:
        w, step = self._writer, record.step
        if record.loss is not None:
            w.add_scalar("loss", record.loss, step)
        for name, value in record.loss_parts.items():
            w.add_scalar(f"loss_parts/{name}", value, step)
        if record.grad_norm_before_clip is not None:
            w.add_scalar("grad_norm/before_clip", record.grad_norm_before_clip, step)
        if record.grad_norm_after_clip is not None:
            w.add_scalar("grad_norm/after_clip", record.grad_norm_after_clip, step)
        if record.grad_scale is not None:
            w.add_scalar("amp/grad_scale", record.grad_scale, step)
            w.add_scalar("amp/skipped", float(record.amp_skipped), step)
        for i, lr in enumerate(record.lrs):
            w.add_scalar(f"lr/group{i}", lr, step)
        if record.total_grad_norm is not None:
            w.add_scalar("grad_norm/total", record.total_grad_norm, step)
        for p in record.params:
            if p.grad_norm is not None:
                w.add_scalar(f"grad_norm/{p.name}", p.grad_norm, step)
            if p.update_ratio is not None:
                w.add_scalar(f"update_ratio/{p.name}", p.update_ratio, step)
        w.add_scalar("time/step_ms", record.seconds * 1e3, step)
        w.add_scalar("time/debugger_ms", record.instrument_seconds * 1e3, step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Named scalars of one step (``wb.log`` of workbench.watch)."""
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)

    def wants_histograms(self, step: int) -> bool:
        return step % self.histogram_every == 0

    def histograms(self, model: Any, step: int) -> None:
        """Weights and gradients; call after backward, before the optimizer step."""
        for name, p in model.named_parameters():
            # Deliberate syncs, every histogram_every steps only: histograms need the values on the host.
            self._writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
            if p.grad is not None:
                self._writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
