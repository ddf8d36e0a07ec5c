"""The training loop the profiler records, one named range per phase.

The loop marks every step with ``on_step`` (``prof.step()``) and each phase
with a ``record_function`` range named exactly (the analysis relies on them):

``dataloader``      next batch from ``Scenario.data`` and its copy to the device; with a
                    ``shard`` (DDP ranks) two ranges, the fetch and the copy, and the
                    tool's own slicing of the global batch between them, in neither
``forward``         ``scenario.call_model(batch)`` (under the scenario's autocast)
``loss``            ``scenario.compute_loss(outputs, batch)``; when the model computes the
                    loss itself (``loss_fn=None``) this only reads ``outputs.loss`` and the
                    loss's own time is inside ``forward``
``backward``        ``loss.backward()`` (through the GradScaler under fp16)
``optimizer_step``  clipping (``clip_grad``) and ``before_step`` inside it, then
                    ``optimizer.step()`` and the scheduler's step
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.scenario import Batch, Scenario


def train_steps(
    scenario: Scenario, steps: int, on_step: Callable[[int], None] | None = None,
    on_loss_source: Callable[[str], None] | None = None,
    shard: Callable[[Batch], Batch] | None = None,
) -> None:
    """The training loop with the named phase ranges; ``on_step(i)`` after each step,
    ``on_loss_source(LossValue.source)`` once, after the first step's loss.

    ``shard`` (a DDP rank's slice of each global batch) runs outside every range: it is
    the workbench's work, not the data's, and must not count as DataLoader time.

    An exception from the user's code, SystemExit and other BaseExceptions included,
    is a ProfileStepError naming the step; KeyboardInterrupt (the user's stop) passes."""
    from torch.profiler import record_function

    from workbench.scenario import ScenarioError
    from workbench.scenario.step import (
        DataCycle,
        apply_update,
        backward,
        prepare_update,
        scheduler_after_update,
        scheduler_at_epoch,
    )

    device = scenario.device
    batches = DataCycle(scenario)  # re-iterated when exhausted, so --steps may exceed one epoch
    scaler = scenario.make_scaler()  # fp16 as the user trains it
    scenario.model.train()
    phase = "dataloader"
    last_loss = None  # the previous step's loss: what a per-epoch ReduceLROnPlateau judges, as in the engine
    try:
        for i in range(steps):
            phase = "dataloader"
            with record_function("dataloader"):
                # The copy to the device as the Batch makes it (non_blocking only from pinned
                # memory to a GPU), as in a plain training loop: that wait is part of what the
                # profile should show.
                batch = next(batches)
                if shard is None:
                    batch = batch.to(device)
            if shard is not None:
                batch = shard(batch)
                with record_function("dataloader"):
                    batch = batch.to(device)
            if batches.epoch_started:
                scheduler_at_epoch(scenario, i, batches.epoch, last_loss)
            scenario.optimizer.zero_grad(set_to_none=True)
            phase = "forward"
            with record_function("forward"), scenario.autocast():
                outputs = scenario.call_model(batch)
            phase = "loss"
            with record_function("loss"), scenario.autocast():
                value = scenario.compute_loss(outputs, batch)
            loss = value.total
            if i == 0 and on_loss_source is not None:
                on_loss_source(value.source)
            phase = "backward"
            with record_function("backward"):
                backward(loss, scaler)
            phase = "optimizer_step"
            with record_function("optimizer_step"):
                if scenario.clip_grad_norm is not None or scenario.before_step is not None:
                    with record_function("clip_grad+before_step"):
                        prepare_update(scenario, scaler)
                apply_update(scenario, scaler)
                last_loss = loss.detach()
                scheduler_after_update(scenario, i + 1, batches.epoch, last_loss)
            # No loss.item() here: it would add a host-device sync the real loop may not have.
            if on_step is not None:
                on_step(i)
    except (ScenarioError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # sys.exit() in the user's code too: a step failure, not our exit
        raise _step_error(scenario, phase, i, exc) from exc


def _step_error(scenario: Scenario, phase: str, step: int, exc: BaseException) -> Exception:
    """The user's code raised inside a step: a StepError naming the file:line and the phase."""
    from workbench.profiling.errors import ProfileStepError

    source = scenario.source
    where = source.where if source is not None else scenario.name or "scenario"
    return ProfileStepError(phase, step, exc, where=where, path=source.path if source is not None else None)
