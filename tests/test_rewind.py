"""Engine.rewind: back to a recent step's start, replay it bit for bit, with full stats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.engine import Engine, EngineConfig, Phase
from workbench.scenario import load

# Everything that makes a replay hard: dropout (RNG), a shuffling DataLoader (its
# order cannot be rewound), Adam's state, a learning-rate schedule, BatchNorm buffers.
NOISY = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from workbench.scenario import Scenario

def build(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 3)).to(device)
    x, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    return Scenario(model=model, data=DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),
                    loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer,
                    scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5))
'''


@pytest.fixture
def noisy(write_scenario) -> Path:  # noqa: ANN001
    return write_scenario(NOISY, "noisy.py")


def _engine(path: Path, **config) -> Engine:  # noqa: ANN003
    return Engine(load(str(path), "cpu"), EngineConfig(**config))


def _params(eng: Engine) -> list[torch.Tensor]:
    return [t.detach().clone() for t in eng.scenario.model.state_dict().values()]


def test_replayed_steps_match_the_first_run_bit_for_bit(noisy: Path) -> None:
    with _engine(noisy, snapshots=4) as eng:
        first = [eng.step_once() for _ in range(8)]  # 8 steps: crosses an epoch (6 batches)
        after_first = _params(eng)
        lr_first = eng.scenario.optimizer.param_groups[0]["lr"]
        assert eng.rewindable_steps == (4, 5, 6, 7)
        assert eng.rewind(3) == 5 and eng.step == 5 and eng.next_phase is Phase.FORWARD
        assert [r.step for r in eng.history] == [0, 1, 2, 3, 4]  # the rewound records are gone
        replay = [eng.step_once() for _ in range(3)]
        assert [r.loss for r in replay] == [r.loss for r in first[5:]]
        assert [r.epoch for r in replay] == [r.epoch for r in first[5:]]
        assert all(torch.equal(a, b) for a, b in zip(after_first, _params(eng)))
        assert eng.scenario.optimizer.param_groups[0]["lr"] == lr_first
        # After the replay the data carries on where it was: step 8 is the step a run
        # that never rewound would take.
        eighth = eng.step_once()
    with _engine(noisy) as plain:
        straight = [plain.step_once() for _ in range(9)]
    assert eighth.loss == straight[8].loss


def test_rewind_mid_step_restarts_that_step(noisy: Path) -> None:
    with _engine(noisy, snapshots=2) as eng:
        eng.step_once()
        done = [eng.advance().phase for _ in range(3)]  # forward, loss, backward of step 1
        assert done == [Phase.FORWARD, Phase.LOSS, Phase.BACKWARD]
        loss = eng.current.loss
        assert eng.rewind(1) == 1 and eng.current.phases_done == ()
        assert eng.step_once().loss == loss


def test_replay_takes_full_stats_whatever_stats_every_says(noisy: Path) -> None:
    with _engine(noisy, snapshots=8, stats_every=4) as eng:
        first = [eng.step_once() for _ in range(6)]
        assert [r.measured for r in first] == [True, False, False, False, True, False]
        eng.rewind(4)  # back to step 2
        replay = [eng.step_once() for _ in range(4)]
        assert all(r.measured and r.modules for r in replay)  # the heavy instruments, on every replayed step
        assert [r.loss for r in replay] == [r.loss for r in first[2:]]
        assert [eng.step_once().measured for _ in range(3)] == [False, False, True]  # steps 6-8: back to every 4th
        assert "snapshot" in replay[0].instrument_breakdown  # its cost shows in the overhead budget


def test_rewind_says_why_it_cannot(noisy: Path) -> None:
    with _engine(noisy) as eng:
        eng.step_once()
        with pytest.raises(ValueError, match="snapshots are off"):
            eng.rewind(1)
    with _engine(noisy, snapshots=2) as eng:
        with pytest.raises(ValueError, match="no step has started yet"):
            eng.rewind(1)
        for _ in range(5):
            eng.step_once()
        with pytest.raises(ValueError, match=r"cannot rewind to step 1: snapshots are kept for steps 3\.\.4"):
            eng.rewind(4)
        with pytest.raises(ValueError, match="steps must be >= 1"):
            eng.rewind(0)
        assert eng.step == 5  # nothing changed
        eng.rewind(2)  # uses up both snapshots
        with pytest.raises(ValueError, match="no snapshot is kept now"):
            eng.rewind(1)


def test_findings_of_the_rewound_steps_are_made_again(write_scenario) -> None:  # noqa: ANN001
    from tests.conftest import ROOT

    with Engine(load(str(ROOT / "scenarios/broken/nan_at_step7.py"), "cpu"), EngineConfig(snapshots=3)) as eng:
        eng.run(8)
        kinds = {(f.step, f.kind) for f in eng.findings}
        assert (7, "nan_inf") in kinds
        eng.rewind(2)  # back to step 6, before the NaN
        assert all(f.step < 6 for f in eng.findings)
        eng.run(2)
        assert {(f.step, f.kind) for f in eng.findings} == kinds


def test_the_snapshot_budget_keeps_fewer_or_none(noisy: Path) -> None:
    from workbench.engine.snapshots import size_of

    with _engine(noisy, snapshots=8) as eng:
        eng.step_once()
        one = size_of(eng.scenario)  # model + Adam state, after the first step made it
    assert one > 0
    with _engine(noisy, snapshots=8, snapshot_budget=int(one * 2.5)) as eng:
        for _ in range(5):
            eng.step_once()
        assert eng.rewindable_steps == (3, 4) and eng.snapshot_bytes <= one * 2.5
    with _engine(noisy, snapshots=8, snapshot_budget=one // 2) as eng:
        eng.step_once()  # step 0 (no Adam state yet) fits; from step 1 on one snapshot is over budget
        eng.step_once()
        eng.step_once()
        assert eng.rewindable_steps == ()  # step 0's snapshot went too: the chain is broken at step 1
        with pytest.raises(ValueError, match=r"MB snapshot budget, so none are taken"):
            eng.rewind(3)


def test_rewind_to_step_0_keeps_the_batchnorm_bias_knowledge(noisy: Path) -> None:
    # The Linear before BatchNorm1d has a bias the norm cancels; the engine learns that on
    # the first measured forward and must not forget it when rewound to before it.
    with _engine(noisy, snapshots=4) as eng:
        first = [eng.step_once() for _ in range(3)]
        eng.rewind(3)
        replay = [eng.step_once() for _ in range(3)]
        assert [[(f.kind, f.parameter) for f in r.findings] for r in replay] == \
            [[(f.kind, f.parameter) for f in r.findings] for r in first]


def test_skipped_steps_are_uncounted_when_rewound_over(noisy: Path) -> None:
    with _engine(noisy, snapshots=4) as eng:
        eng.step_once()
        for _ in range(3):
            eng.advance()
        eng.skip_step()  # step 1 skipped
        assert eng.skipped_steps == 1
        eng.rewind(1)  # back to step 1
        assert eng.skipped_steps == 0
