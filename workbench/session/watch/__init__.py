"""``workbench.watch``: the engine's instruments on a training loop the user owns.

::

    with workbench.watch(model, optimizer, every=16, report="runs/watch/exp1.json") as wb:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step(); optimizer.zero_grad()
            wb.log(loss=loss)

What one step is
    A step ends when every optimizer given has run ``step()`` once since the last
    boundary (one optimizer: each ``optimizer.step()``; a GAN loop with
    ``[opt_g, opt_d]``: one round of both, in whatever order the loop steps them; an
    optimizer that steps twice before the others closes the round early). Without an
    optimizer, ``wb.step()`` ends a step: call it after ``backward()`` and before the
    weights change and the gradients are cleared. Under a GradScaler that skips an
    update, ``optimizer.step()`` is not called and the round closes at the next one.

Where each measurement happens (the Instruments of the engine, at the same boundaries)
    * forward: on a measured step (``step % every == 0``) the probe's module hooks are
      attached when the step starts and the first forward of the model's root run with
      gradients on is measured; its stats are read in one transfer when that forward
      returns (or at the step's optimizer step when the root module is never called, as
      in a Lightning ``training_step`` that calls a submodule). Forwards under
      ``torch.no_grad()`` (evaluation) are not measured. On an unmeasured step no module
      hook is attached: only two hooks on the root module note the loss a model returns.
    * loss: the ``loss=`` given to ``wb.log`` before the step, else the loss an integration
      hands over (the one its framework calls backward on), else the loss the model
      returned (``outputs.loss`` / ``outputs["loss"]``, as a Hugging Face model does); read
      at the optimizer step, in one transfer. Under gradient accumulation the step's loss
      is the mean over its micro-batches (their sum when the model divided each by the
      whole step's ``num_items_in_batch``, as Hugging Face's Trainer has it). A loss logged
      after ``optimizer.step()`` joins that step's record (and its rules) when the next step
      starts, when the model returned none.
    * backward: ``optimizer.step()``'s pre-hook, for the parameters that optimizer holds:
      gradient stats and the backward rules (one transfer), then breakpoints. A
      ``Break`` raised here stops ``step()`` before any weight changes. So the gradients
      are the ones the optimizer gets: after any ``clip_grad_norm_`` the loop does (log
      its return value, ``wb.log(grad_norm=...)``, for the norm before clipping).
    * update: the post-hook, update/weight norms (one transfer) and the update rules.

``wb.log(**scalars)`` keeps tensors as they are (no sync); they are read together, in one
transfer, when the step's record is written.

The package, one job a module:

* loop.py      ``Watch`` and ``watch``: the hooks on the model and the optimizers, the step
               boundaries, each step's record.
* losses.py    the step's loss over its micro-batches, and whose loss it is.
* breaks.py    ``break_on`` conditions, which one fires, ``Break``, pdb at a hit.
* outputs.py   the JSON report, the TensorBoard log and the live session (``serve=``).
* ranks.py     this process's rank under torch.distributed and each rank's own output paths.
* wrapped.py   the model under torch.compile/DDP and the optimizer under a framework's wrapper.
"""

from __future__ import annotations

from workbench.session.watch.breaks import ON_BREAK, Break, parse_breakpoints
from workbench.session.watch.loop import Watch, watch
from workbench.session.watch.outputs import REPORT_START, check_report_path
from workbench.session.watch.ranks import rank_path
from workbench.session.watch.wrapped import unwrap_model, unwrap_optimizer

__all__ = ["ON_BREAK", "REPORT_START", "Break", "Watch", "check_report_path", "parse_breakpoints", "rank_path",
           "unwrap_model", "unwrap_optimizer", "watch"]
