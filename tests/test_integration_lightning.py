"""workbench.integrations.lightning with the real Lightning Trainer (tiny modules built here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from tests.watch_models import LogOfShifted, hook_count  # noqa: E402
from workbench.engine.records import NAN_INF, NO_GRADIENT  # noqa: E402

pytestmark = pytest.mark.slow  # a Lightning Trainer takes seconds to start on these machines


class Regressor(pl.LightningModule):
    """training_step calls a submodule, not self(): the root's forward never runs."""

    def __init__(self, poison: bool = False, detach_head: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), LogOfShifted() if poison else nn.Identity())
        self.head = nn.Linear(8, 1)
        self.detach_head = detach_head

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        h = self.body(x)
        return nn.functional.mse_loss(self.head(h.detach() if self.detach_head else h), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(module: pl.LightningModule, tmp_path: Path, plugins: list | None = None,
         **watch_kwargs) -> "WorkbenchCallback":  # noqa: F821
    from workbench.integrations.lightning import WorkbenchCallback

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    callback = WorkbenchCallback(**watch_kwargs)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[callback], plugins=plugins)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    return callback


def test_a_nan_injected_at_a_module_is_its_root_in_findings_and_report(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Regressor(poison=True)
    report = tmp_path / "lightning.json"
    cb = _fit(module, tmp_path, every=1, report=report)
    wb = cb.watch
    assert wb is not None and wb.closed and [r.step for r in wb.history] == [0, 1, 2]
    roots = [f for f in wb.findings if f.kind == NAN_INF and f.step == 0]
    assert roots[0].module == "body.2" and "from finite inputs" in roots[0].message
    assert wb.history[0].loss_source == "training_step" and wb.history[0].loss != wb.history[0].loss
    data = json.loads(report.read_text())
    assert data["findings"][0]["kind"] == NAN_INF and data["findings"][0]["module"] == "body.2"
    assert data["summary"]["steps_done"] == 3
    assert hook_count(module) == 0


def test_a_detached_head_leaves_the_body_without_gradient(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Regressor(detach_head=True)
    wb = _fit(module, tmp_path, every=1).watch
    assert {f.parameter for f in wb.findings if f.kind == NO_GRADIENT} == {"body.0.weight", "body.0.bias"}
    healthy = wb.history[-1]
    assert healthy.param("head.weight").update_norm > 0 and healthy.modules


def test_a_break_ends_fit_before_the_update_and_closes_the_watch(tmp_path: Path) -> None:
    import workbench

    torch.manual_seed(0)
    module = Regressor(poison=True)
    weights = module.head.weight.detach().clone()
    with pytest.raises(workbench.Break):
        _fit(module, tmp_path, every=1, break_on="nan_inf", report=tmp_path / "b.json")
    assert torch.equal(module.head.weight.detach(), weights)
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["summary"]["stopped_by"] == "breakpoint"
    assert hook_count(module) == 0


def test_16_mixed_precision_hands_its_grad_scaler_to_the_watch(tmp_path: Path) -> None:
    # Lightning makes no GradScaler for 16-mixed on CPU; one is given to the plugin here, as
    # Lightning makes one on CUDA. Its scale must not show in the output-gradient norms.
    from lightning.pytorch.plugins.precision import MixedPrecision

    def fit(**watch_kwargs) -> list:
        torch.manual_seed(0)
        plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
        return list(_fit(Regressor(), tmp_path, plugins=[plugin], every=1, **watch_kwargs).watch.history)

    handed, withheld = fit(), fit(scaler=None)  # scaler=None: the user's own choice wins
    assert [r.grad_scale for r in handed] == [65536.0] * 3 and withheld[0].grad_scale is None
    for a, b in zip(handed, withheld):
        ga, gb = a.module("body.0").grad_norm, b.module("body.0").grad_norm
        assert ga is not None and gb == pytest.approx(65536.0 * ga, rel=1e-5)


class Recording(Regressor):
    """Keeps each training_step's loss, as the batch computed it."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.item())
        return loss


def test_16_mixed_precision_records_the_loss_training_step_returned_not_the_scaled_one(tmp_path: Path) -> None:
    """The plugin hands on_before_backward the loss times the scaler's scale: recorded as it came,
    the loss read 65536x too large and jumped each time the scale grew (false loss_divergence)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    module = Recording()
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", growth_interval=1))
    history = list(_fit(module, tmp_path, plugins=[plugin], every=1).watch.history)
    scales = [r.grad_scale for r in history]
    assert len(history) >= 2 and scales[0] == 65536.0 and scales[1] == 131072.0, scales  # the scale grew
    assert [r.loss for r in history] == pytest.approx(module.losses[:len(history)], rel=1e-6)


def test_with_accumulate_grad_batches_the_steps_loss_is_its_batches_mean_undivided(tmp_path: Path) -> None:
    from workbench.integrations.lightning import WorkbenchCallback

    torch.manual_seed(0)
    module = Recording()
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(48, 4, generator=g), torch.randn(48, 1, generator=g))
    callback = WorkbenchCallback(every=2)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[callback], accumulate_grad_batches=2)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    wb = callback.watch
    assert wb is not None and len(wb.history) == 3 and len(module.losses) == 6
    expected = [(a + b) / 2 for a, b in zip(module.losses[::2], module.losses[1::2])]
    assert [r.loss for r in wb.history] == pytest.approx(expected, rel=1e-6)
