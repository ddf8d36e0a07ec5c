"""A step with no news for a while (a forward that loops): the TUI says how long and where."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("textual")

from tests.test_tui import SIZE, settle  # noqa: E402
from workbench.tui import session as session_module  # noqa: E402
from workbench.tui.app import create_app  # noqa: E402
from workbench.tui.widgets.panels import PhaseBar  # noqa: E402

STUCK = '''
import time
import torch
from torch import nn
from workbench import Scenario


class Stuck(nn.Linear):
    def forward(self, x):
        if not torch.is_grad_enabled() or not self.training:
            return super().forward(x)
        while True:
            time.sleep(0.05)


def build(device):
    m = Stuck(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="stuck")
'''
LINE = STUCK.splitlines().index("            time.sleep(0.05)") + 1


@pytest.mark.parametrize("key", ["n", "r"], ids=["step", "run"])
async def test_a_stuck_step_says_how_long_and_where(key: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(session_module, "BUSY_NOTICE_S", 1.0)
    path = tmp_path / "stuck.py"
    path.write_text(STUCK)
    app = create_app([str(path)], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        deadline = time.monotonic() + 60
        while main.view is None:
            assert time.monotonic() < deadline, "the scenario did not load"
            await pilot.pause(0.05)
        await pilot.press(key)
        bar = main.query_one(PhaseBar)
        while "with no news" not in bar.status:
            assert time.monotonic() < deadline, f"no busy notice: {bar.status!r}"
            await pilot.pause(0.1)
        assert bar.status.startswith("step 0 busy for ") and f"at {path}:{LINE} in forward" in bar.status, bar.status
        assert "R restarts" in bar.status
