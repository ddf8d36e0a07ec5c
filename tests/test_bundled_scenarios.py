"""Every bundled scenario builds, honours the contract and actually learns."""

from __future__ import annotations

import torch
import pytest

from workbench.scenario import Scenario, discover
from tests.conftest import SCENARIOS

# The transformers scenario imports transformers (seconds on a loaded machine): slow.
# The heavier models train for several seconds each (measured with --durations): the quick
# loop keeps the small ones, the full suite runs all.
HEAVY = {"hf_style", "regression_mse", "cnn_image", "cnn_image:build_batchnorm", "gru_bidirectional", "resnet_tiny", "lstm_text",
         "transformer_lm"}
SOURCES = [pytest.param(s, marks=pytest.mark.slow) if s.label in HEAVY else s for s in discover(SCENARIOS)]
LABELS = {s.label for s in discover(SCENARIOS)}


def test_all_expected_scenarios_are_bundled() -> None:
    labels = LABELS
    for expected in ("mlp_digits", "cnn_image", "cnn_image:build_batchnorm", "lstm_text",
                     "gru_bidirectional", "collab_filter", "regression_mse", "binary_bce",
                     "resnet_tiny"):
        assert expected in labels


def _plain_training_loss(s: Scenario, steps: int) -> list[float]:
    """A user's own loop, independent of the engine: loss per step (batches of any structure,
    through the scenario's own model call and loss)."""
    torch.manual_seed(s.seed)
    losses: list[float] = []
    s.model.train()
    while len(losses) < steps:
        for item in s.data:
            batch = s.make_batch(item)
            out = s.call_model(batch)
            loss = s.loss(out, batch)
            s.optimizer.zero_grad()
            loss.backward()
            s.optimizer.step()
            if s.scheduler is not None:
                s.scheduler.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.label)
def test_scenario_loss_decreases(source) -> None:
    s = source.build("cpu")
    assert s.name and s.description
    assert s.source == source
    losses = _plain_training_loss(s, 40)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(losses)))
    # Learnable data: the loss falls clearly within 40 steps.
    assert last < 0.8 * first, f"{source.label}: loss {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.label)
def test_scenario_is_deterministic(source) -> None:
    a, b = source.build("cpu"), source.build("cpu")
    batch_a, batch_b = a.make_batch(next(iter(a.data))), b.make_batch(next(iter(b.data)))
    for x, y in zip(batch_a.input_tensors(), batch_b.input_tensors()):
        assert torch.equal(x, y)
    for x, y in zip(batch_a.tensors(), batch_b.tensors()):
        assert torch.equal(x, y)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
