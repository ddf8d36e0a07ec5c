"""workbench attach on a watched loop: a held script stays idle, and the screen shows the step it holds.

Real ``workbench.watch`` loops on the tiny models of ``tests.watch_models``, served on a Unix
socket under ``tmp_path``; the client is ``Session.attach`` driven the way the main screen
drives it (no Textual), or the transport's own ``connect``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import workbench
from tests.watch_models import DictLM, dict_batches
from workbench.engine.records import BreakHit, Phase
from workbench.session import protocol as P
from workbench.session.log import read_log
from workbench.tui.session import EngineView, InspectorData, Session, SessionState


def _until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"not seen within {timeout} s: {what}")


class HeldLoop:
    """A loop whose first step makes a NaN (DictLM's "poison" module) and holds at ``nan_inf``."""

    def __init__(self, tmp: Path, steps: int = 2, **options: Any) -> None:
        torch.manual_seed(0)
        self.model = DictLM(poison=True)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.run_dir = tmp / "run"
        self.wb = workbench.watch(self.model, self.opt, every=1, break_on="nan_inf", on_break="wait",
                                  serve=f"unix:{tmp / 's.sock'}", run_dir=self.run_dir, **options)
        self.steps = steps
        self.done: list[int] = []
        self.thread = threading.Thread(target=self._train, daemon=True, name="user-loop")

    def _train(self) -> None:
        with self.wb:
            for i, batch in enumerate(dict_batches(self.steps)):
                self.model(**batch)["loss"].backward()
                self.opt.step()
                self.opt.zero_grad()
                self.done.append(i)

    def start(self) -> HeldLoop:
        self.thread.start()
        return self

    def log_lines(self) -> list[str]:
        return (self.run_dir / "session.jsonl").read_text().splitlines()


class ScreenLike:
    """A SessionListener that asks for the selected module's sample after every view, as the main
    screen does for an attached session (``MainScreen.engine_updated`` -> ``_request_inspect``)."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.session: Session | None = None
        self.views: list[EngineView] = []
        self.samples: list[InspectorData] = []

    def _ask(self, view: EngineView) -> None:
        self.views.append(view)
        assert self.session is not None
        self.session.request_sample(self.module)

    def loaded(self, view: EngineView) -> None:
        self._ask(view)

    def updated(self, view: EngineView) -> None:
        self._ask(view)

    def sample(self, data: InspectorData) -> None:
        self.samples.append(data)

    def done(self, request: int, view: EngineView, *rest: Any) -> None:
        self.views.append(view)

    def load_failed(self, *args: Any) -> None: ...
    def failed(self, *args: Any) -> None: ...
    def output(self, *args: Any) -> None: ...
    def lost(self, *args: Any) -> None: ...
    def busy(self, *args: Any) -> None: ...
    def ended(self, text: str) -> None: ...


def test_an_attached_screen_asks_no_more_samples_while_the_script_holds(tmp_path: Path) -> None:
    """Fix 1: the answer to a sample alone must not make the screen ask for it again (a held
    script answered in a loop: a busy core and a session.jsonl growing by ~220 MB an hour)."""
    loop = HeldLoop(tmp_path).start()
    screen = ScreenLike("head")
    session = Session.attach(str(loop.run_dir))
    screen.session = session
    session.open(screen)  # type: ignore[arg-type]
    try:
        _until(lambda: session.state.progress is not None and session.state.progress.paused
               and bool(screen.samples) and screen.samples[-1].step == 0, what="the hold and its sample")
        time.sleep(0.4)  # the answers on their way land
        before = len(loop.log_lines())
        samples = len(screen.samples)
        time.sleep(1.5)
        assert len(screen.samples) == samples  # nothing changed: nothing asked, nothing answered
        assert len(loop.log_lines()) == before  # and nothing logged
        assert loop.thread.is_alive() and loop.done == []  # still held
        # Where the script is did change once the client continues: it is asked for again.
        session.set_breakpoints([])
        session.run()
        loop.thread.join(20)
        assert not loop.thread.is_alive()
    finally:
        session.close()
        loop.wb.close()
    sent = [line for line in loop.log_lines() if '"type":"sample"' in line]
    assert len(sent) <= 6, f"{len(sent)} samples were answered for a 2-step run"


def test_every_k_steps_the_table_keeps_the_last_measured_steps_module_stats(tmp_path: Path) -> None:
    """Fix 2: with every=4 the steps between measured ones must not blank the model table."""
    torch.manual_seed(0)
    model = DictLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run_dir = tmp_path / "run"
    with workbench.watch(model, opt, every=4, serve=f"unix:{tmp_path / 's.sock'}", run_dir=run_dir):
        for batch in dict_batches(6):
            model(**batch)["loss"].backward()
            opt.step()
            opt.zero_grad()
    state = SessionState()
    shown: dict[int, tuple[int, set[str], set[str]]] = {}  # step -> (measured step, modules, fresh ones)
    for message in read_log(run_dir / "session.jsonl").messages:
        state.apply(message)
        view = state.view(without_progress=True)
        if isinstance(message, P.Step) and view is not None:
            measured = view.last_measured
            assert measured is not None
            shown[message.record.step] = (measured.step, set(view.module_stats()), view.fresh_modules())
    assert sorted(shown) == [0, 1, 2, 3, 4, 5]
    for step, (measured, modules, fresh) in shown.items():
        assert measured == (0 if step < 4 else 4), (step, measured)
        assert {"embed", "body", "head"} <= modules, step  # numbers on every step, none blank
        assert fresh == set()  # an older step's: the table shows them dimmed


def test_at_a_hold_the_view_shows_the_held_steps_stats_loss_and_phases(tmp_path: Path) -> None:
    """Fix 3: the hold's Progress carries the held step as far as it got, not current=None."""
    from workbench.session.transport import connect

    loop = HeldLoop(tmp_path, steps=3)
    state = SessionState()
    with connect(loop.run_dir) as conn:
        loop.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (state.progress is not None and state.progress.paused):
            for m in conn.poll(0.1):
                state.apply(m)
        p = state.progress
        assert p is not None and p.paused and p.current is not None
        view = state.view()
        assert view is not None and view.pending_break is not None and view.step == 0
        assert view.current is not None and view.current.step == 0
        assert view.current.loss is not None and view.current.loss != view.current.loss  # the held NaN loss
        stats = view.module_stats()
        assert stats["poison"].nan_count, stats["poison"]  # the held step's NaN, not a clean older step's
        assert "poison" in view.fresh_modules()
        assert {Phase.FORWARD, Phase.BACKWARD} <= set(view.done_phases)
        assert Phase.OPTIMIZER_STEP not in view.done_phases
        conn.send(P.SetBreakpoints(()))
        conn.send(P.Continue())
        loop.thread.join(20)
    assert loop.done == [0, 1, 2]


@pytest.mark.parametrize("on_break", ["raise", "log"])
def test_a_loss_breakpoint_fires_on_a_loss_logged_after_the_optimizer_step(on_break: str) -> None:
    """Fix 4: the README's own loop logs the loss after optimizer.step(); loss<X must still fire,
    when that step's record is written (at the next step's start), and say it is after the update."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ran: list[int] = []
    wb = workbench.watch(model, opt, every=4, break_on="loss<50", on_break=on_break)
    with pytest.raises(workbench.Break) if on_break == "raise" else contextlib.nullcontext(), wb:
        for i in range(3):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 20)), torch.randint(0, 3, (8,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            wb.log(loss=loss)  # after the step, as the README's first example had it
            ran.append(i)
    hit = wb.break_hits[0]
    assert hit.step == 0 and hit.breakpoint == "loss<50" and hit.phase is Phase.OPTIMIZER_STEP
    assert "after optimizer.step()" in hit.reason
    if on_break == "raise":
        assert ran == [0] and [r.step for r in wb.history] == [0]  # raised as step 1 began
    else:
        assert ran == [0, 1, 2] and [h.step for h in wb.break_hits] == [0, 1, 2]


def test_a_held_script_says_so_on_stderr_and_stays_held_when_its_client_leaves(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fix 5: nobody attached: one line says what holds where and how to attach. A hold waits for a
    decision, so a client that leaves (the TUI quit) leaves it held, and that is said again."""
    from workbench.session.transport import connect

    err: list[str] = []

    def said() -> str:
        err.append(capsys.readouterr().err)
        return "".join(err)

    loop = HeldLoop(tmp_path).start()
    _until(lambda: "held at breakpoint" in said(), what="the held line")
    line = next(x for x in said().splitlines() if "held at breakpoint" in x)
    assert "step 0" in line and "nan_inf" in line and f"workbench attach {loop.run_dir}" in line
    with connect(loop.run_dir) as conn:
        seen: list[Any] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(isinstance(m, BreakHit) for m in seen):
            seen += conn.poll(0.1)
        time.sleep(1.0)  # a while on the screen (the script looks for its clients twice a second)
    _until(lambda: "its client left" in said(), what="the line after the client left")
    assert said().count("held at breakpoint") == 2  # once per time nobody is attached
    assert loop.thread.is_alive() and loop.done == []  # still held for the next client
    with connect(loop.run_dir) as conn:
        conn.send(P.SetBreakpoints(()))
        conn.send(P.Continue())
        loop.thread.join(20)
    assert loop.done == [0, 1]
