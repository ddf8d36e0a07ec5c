"""What a user's own text and code can do to the TUI: markup, escape codes, R after a failed load,
a KeyboardInterrupt of their own, the error panel's keys on each screen."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.app import App, ComposeResult  # noqa: E402
from textual.binding import Binding  # noqa: E402
from textual.screen import Screen  # noqa: E402
from textual.widgets import RichLog, Static  # noqa: E402
from textual.widgets._toast import Toast  # noqa: E402

from tests.test_tui import SIZE, plain, settle  # noqa: E402
from workbench.report.numbers import fmt_float  # noqa: E402
from workbench.tui.app import create_app  # noqa: E402
from workbench.tui.render import terminal_text  # noqa: E402
from workbench.tui.screens.dialogs import LogScreen, StepsPrompt  # noqa: E402
from workbench.tui.screens.main import MainScreen  # noqa: E402
from workbench.tui.widgets.common import ErrorPanel, failure_text  # noqa: E402

BRACKETS = "files: [/data/a.csv, /data/b.csv]"  # a closing tag to Rich's markup parser

SCENARIO = '''
import torch
from torch import nn
from workbench import Scenario


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == {stop_at}:
            raise KeyboardInterrupt  # the user's code, not a Ctrl-C
        return self.fc(x)


def build(device):
    {build_line}
    torch.manual_seed(0)
    model = Net().to(device)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="user-text")
'''


def _scenario(tmp_path: Path, stop_at: int = 0, build_line: str = "pass") -> str:
    path = tmp_path / "user_text.py"
    path.write_text(SCENARIO.format(stop_at=stop_at, build_line=build_line))
    return str(path)


async def _wait_for(pilot, predicate, seconds: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


def _log_text(log: RichLog) -> str:
    return "\n".join("".join(segment.text for segment in strip) for strip in log.lines)


# -- 1: user text is never markup ----------------------------------------------------------------
async def test_a_printed_line_or_warning_with_brackets_is_shown_not_parsed() -> None:
    app = create_app([], device="cpu", show_volatile=False)
    # notifications=True: run_test leaves toasts out by default, and the toast is what parsed it.
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause()
        await pilot.press("escape")  # the picker: an empty workbench
        app.capture_output(BRACKETS, False)  # the first printed line becomes a toast
        app.capture("UserWarning: odd value in [/data/x] (markup_warn.py:9)")
        await pilot.pause(0.2)
        assert app.is_running
        toasts = [n.message for n in app._notifications]
        assert any(BRACKETS in text for text in toasts)
        assert BRACKETS in "".join(str(toast.render()) for toast in app.screen.query(Toast))
        main = app.main
        main.notify("RuntimeError: bad path [/data/x]")  # a step's str(exc), say
        main._show_error("ValueError: [/x]", "Traceback … [/x]")
        await pilot.pause(0.2)
        assert app.is_running
        assert "[/x]" in plain(main.query_one("#error-title"))


async def test_a_printed_line_with_brackets_does_not_crash_a_loaded_scenario(tmp_path: Path) -> None:
    spec = _scenario(tmp_path, build_line=f"print({BRACKETS!r})")
    app = create_app([spec], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        await _wait_for(pilot, lambda: any(BRACKETS in line for line in app.logbook))
        await pilot.pause(0.2)
        assert app.is_running
        await pilot.press("n")
        main = await settle(pilot)
        assert main.view is not None and main.view.step == 1


# -- 2: escape codes in the log ------------------------------------------------------------------
def test_terminal_text_keeps_colours_and_drops_what_would_act_on_the_screen() -> None:
    cleared = terminal_text("\x1b[2J garbage")
    assert cleared.plain == " garbage"
    coloured = terminal_text("\x1b[31mred\x1b[0m bell\x07 \x1b]0;title\x07x\x1b")
    assert coloured.plain.startswith("red bell") and not any(ord(c) < 32 for c in coloured.plain)
    assert coloured.spans and coloured.spans[0].end == 3  # the red stays red
    assert terminal_text(" 10%|█   |\r 50%|██  |\r").plain == " 50%|██  |"  # what the bar shows last
    assert terminal_text(BRACKETS).plain == BRACKETS


async def test_log_screen_shows_escape_codes_harmlessly() -> None:
    app = create_app([], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("escape")
        app.push_screen(LogScreen(["stdout: \x1b[2J garbage", "stderr: \x1b[32m 40%\x1b[0m\x07|███|", BRACKETS]))
        await pilot.pause()
        await pilot.pause()
        text = _log_text(app.screen.query_one(RichLog))
        assert "garbage" in text and "40%" in text and BRACKETS in text
        assert "\x1b" not in text and "\x07" not in text
        app.capture_output("prep:  10%|█    |\rprep: 100%|█████|", True)  # tqdm rewriting its line
        assert app.logbook[-1] == "stderr: prep: 100%|█████|"


# -- 3: R after a failed load rebuilds it -------------------------------------------------------
async def test_r_after_a_failed_load_builds_the_same_file_again(tmp_path: Path) -> None:
    spec = _scenario(tmp_path, build_line='raise ValueError("not yet [/fixed]")')
    app = create_app([spec], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        panel = main.query_one(ErrorPanel)
        await _wait_for(pilot, lambda: panel.shown and main.busy is None)
        assert main.session is None and "not yet [/fixed]" in plain(panel.query_one("#error-title"))
        assert "R reset" in plain(panel.query_one("#error-hint"))
        _scenario(tmp_path)  # the user fixes the file
        await pilot.press("R")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)  # not the picker
        await _wait_for(pilot, lambda: main.view is not None and main.busy is None)
        assert not panel.shown and main.view.step == 0


# -- 4: the user's KeyboardInterrupt fails the step, not the process ----------------------------
async def test_a_keyboard_interrupt_of_the_users_code_fails_the_step_and_keeps_the_engine(
        tmp_path: Path) -> None:
    spec = _scenario(tmp_path, stop_at=2)
    app = create_app([spec], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        await pilot.press("n")  # forward call 1: fine
        main = await settle(pilot)
        assert main.view.step == 1
        await pilot.press("r")  # call 2 raises KeyboardInterrupt, in a run
        panel = main.query_one(ErrorPanel)
        await _wait_for(pilot, lambda: panel.shown and main.busy is None)
        title = plain(panel.query_one("#error-title"))
        assert "KeyboardInterrupt" in title and "forward" in title, title
        assert "exited" not in title
        assert main.session is not None and not main.session.closed
        await pilot.press("n")  # the engine lives on: the next step runs
        main = await settle(pilot)
        assert main.view.step == 3 and not panel.shown
        await pilot.press("u")  # and the good steps can still be rewound
        main = await settle(pilot)
        assert main.view.step == 2


# -- 5: the error panel on another screen --------------------------------------------------------
class _ToolScreen(Screen[None]):
    """A screen with the profile screen's keys."""

    BINDINGS = [Binding("escape", "back", "back"), Binding("r", "rerun", "profile again")]

    def compose(self) -> ComposeResult:
        yield ErrorPanel(id="error")


async def test_the_error_panel_offers_the_keys_of_its_own_screen() -> None:
    class Tool(App[None]):
        def on_mount(self) -> None:
            self.push_screen(_ToolScreen())

    app = Tool()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        panel = app.screen.query_one(ErrorPanel)
        panel.show_error("profiling x failed", "details")
        await pilot.pause()
        hint = plain(panel.query_one("#error-hint"))
        assert "esc back" in hint and "r profile again" in hint
        assert "R reset" not in hint and "switch" not in hint


def test_failure_text_shows_the_message_and_the_users_frames_only(tmp_path: Path) -> None:
    from workbench.profiling.errors import ProfileStepError

    def users_forward() -> None:
        raise ValueError("shapes (8, 4) and (3, 2) do not match")

    try:
        users_forward()
    except ValueError as exc:
        error = ProfileStepError("forward", 3, exc, where="mlp.py", path=__file__)
    title, details = failure_text("profiling mlp", error)
    assert title == "profiling mlp failed: ValueError: shapes (8, 4) and (3, 2) do not match"
    assert "--verbose" not in title + details
    assert "users_forward" in details and "step 3, forward phase" in details
    assert "workbench/profiling" not in details

    try:
        raise RuntimeError("no such variant [/x]")
    except RuntimeError as exc:
        title, _ = failure_text("benchmarks of mlp", exc)
    assert title == "benchmarks of mlp failed: RuntimeError: no such variant [/x]"


# -- 6: N with nothing loaded ---------------------------------------------------------------------
async def test_step_k_with_no_scenario_says_so_and_asks_nothing() -> None:
    app = create_app([], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("escape")
        await pilot.press("N")
        await pilot.pause()
        assert not isinstance(app.screen, StepsPrompt)
        assert any("no scenario loaded" in n.message for n in app._notifications)


# -- 7: the finding-detail box follows the list ----------------------------------------------------
def _detail_matches_the_list(main: MainScreen) -> bool:
    from workbench.tui.widgets.findings import FindingsPanel, finding_detail

    detail = main.query_one("#finding-detail", Static)
    panel = main.query_one(FindingsPanel)
    finding = panel.finding_at(panel.highlighted) if panel.highlighted is not None else None
    if finding is None:
        return not detail.has_class("shown") and plain(detail).strip() == ""
    return detail.has_class("shown") and plain(detail) == _rendered(finding_detail(finding))


def _rendered(text: object) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(text)
    return console.export_text()


async def _highlight_a_finding(pilot, main: MainScreen) -> None:  # noqa: ANN001
    from workbench.tui.widgets.findings import FindingsPanel

    main.session.set_breakpoints(["nan_inf"])
    await pilot.press("r")  # stops at step 3 with NaN findings
    main = await settle(pilot)
    assert main.view is not None and main.view.findings
    main.query_one(FindingsPanel).focus()
    await pilot.press("down", "down")
    await pilot.pause(0.1)
    detail = main.query_one("#finding-detail", Static)
    assert detail.has_class("shown") and "s3" in plain(detail)


async def test_the_finding_detail_follows_the_list_after_reset_and_another_scenario() -> None:
    from tests.test_tui import NAN

    app = create_app([NAN], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        await _highlight_a_finding(pilot, main)
        await pilot.press("R")  # the list empties while it rebuilds: so does the box
        await pilot.pause(0.1)
        assert _detail_matches_the_list(main)
        await _wait_for(pilot, lambda: main.view is not None and main.busy is None)
        await pilot.pause(0.1)
        assert _detail_matches_the_list(main)

        await _highlight_a_finding(pilot, main)
        await pilot.press("u")  # back to the start of step 3: its findings are gone
        main = await settle(pilot)
        await pilot.pause(0.1)
        assert _detail_matches_the_list(main)

        await _highlight_a_finding(pilot, main)
        await pilot.press("s")
        await pilot.pause()
        picker = app.screen
        entry = next(e for e in picker.entries if e.label == "mlp_digits")
        picker.dismiss(entry.source)
        await pilot.pause(0.1)
        assert _detail_matches_the_list(main)
        await _wait_for(pilot, lambda: main.view is not None and main.busy is None)
        await pilot.pause(0.1)
        assert main.view.summary.label == "mlp_digits" and _detail_matches_the_list(main)


# -- 8: the phase line's loss is this step's, or says whose it is ---------------------------------
async def test_the_phase_line_names_the_step_a_loss_is_from() -> None:
    from tests.test_tui import NAN

    app = create_app([NAN], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        assert "step 0  loss ·" in plain(main.query_one("#phase"))  # nothing measured yet
        await pilot.press("n", "n")
        main = await settle(pilot)
        last = fmt_float(main.view.history[-1].loss, 4)
        phase = plain(main.query_one("#phase"))
        assert f"step 2  last loss (step 1) {last}" in phase, phase
        await pilot.press("f")  # step 2's forward: its loss is not measured yet
        main = await settle(pilot)
        phase = plain(main.query_one("#phase"))
        assert f"step 2  last loss (step 1) {last}" in phase, phase
        await pilot.press("f")  # its loss phase
        main = await settle(pilot)
        phase = plain(main.query_one("#phase"))
        assert f"step 2  loss {fmt_float(main.view.current.loss, 4)}" in phase and "last loss" not in phase, phase
        await pilot.press("f", "f", "u")  # step 2 done, then back to its start
        main = await settle(pilot)
        assert main.view.step == 2
        phase = plain(main.query_one("#phase"))
        assert f"step 2  last loss (step 1) {last}" in phase, phase


# -- 9: the error panel's title wraps: the file and line stay in sight ----------------------------
LONG_ERROR = '''
import torch
from torch import nn
from workbench import Scenario


class Net(nn.Linear):
    def forward(self, x):
        return super().forward(x).reshape(32, 256)


def build(device):
    model = Net(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="long-error")
'''


async def test_the_error_title_wraps_so_its_file_and_line_show(tmp_path: Path) -> None:
    from tests.test_tui_usability import screen_text

    folder = tmp_path / "project"
    folder.mkdir()
    path = folder / "long_error.py"
    path.write_text(LONG_ERROR)
    line = LONG_ERROR.splitlines().index("        return super().forward(x).reshape(32, 256)") + 1
    app = create_app([str(path)], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None)
        await pilot.press("f")
        panel = main.query_one(ErrorPanel)
        await _wait_for(pilot, lambda: panel.shown and main.busy is None)
        await pilot.pause(0.1)
        title = plain(panel.query_one("#error-title"))
        assert "RuntimeError in forward of step 0" in title and "is invalid for input of size 16" in title
        assert len(f"{title.splitlines()[0]}  (at {path}:{line} in forward)") > SIZE[0]  # it did not fit
        text = screen_text(app)
        assert f"at {path}:{line} in forward" in text, text
        assert "R reset" in text  # the hint under it still shows


def test_error_title_bounds_a_long_message_and_keeps_the_location() -> None:
    from workbench.tui.widgets.common import TITLE_CHARS, error_title

    assert error_title("ValueError: short").plain == "ValueError: short"
    assert error_title("ValueError: x  (at a.py:3 in f)").plain == "ValueError: x\nat a.py:3 in f"
    huge = error_title("RuntimeError in forward of step 1: " + "y" * 5000 + "  (at m.py:9 in forward)").plain
    assert huge.endswith("…\nat m.py:9 in forward") and len(huge) < TITLE_CHARS + 40
    lines = error_title("E: one\ntwo\nthree\nfour\nfive").plain
    assert lines == "E: one\ntwo\nthree…"


# -- 10: a build that hangs: keys wait for it, not for the next scenario ---------------------------
HANGING_BUILD = '''
import threading
from workbench import Scenario


def build(device):
    threading.Event().wait()  # a build() that never returns
'''


def _hanging_app(tmp_path: Path):  # noqa: ANN202
    path = tmp_path / "hangs_on_build.py"
    path.write_text(HANGING_BUILD)
    return create_app([str(path)], device="cpu", show_volatile=False)


async def _building(pilot) -> MainScreen:  # noqa: ANN001
    """The main screen once the hanging build() has started."""
    from workbench.tui.screens.main import Busy

    main = pilot.app.main
    await _wait_for(pilot, lambda: main.busy is Busy.LOADING and main.doing == "building the scenario")
    return main


async def test_p_during_a_hanging_build_says_it_builds_and_what_can_be_done(tmp_path: Path) -> None:
    app = _hanging_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await _building(pilot)
        await pilot.press("p")
        await pilot.pause()
        said = [n.message for n in app._notifications][-1]
        assert "nothing is running" not in said
        assert "building the scenario (hangs_on_build) is in progress" in said, said
        assert "R restarts it" in said and "s picks another" in said and "q quits" in said


async def test_keys_queued_during_a_hanging_build_do_not_run_on_the_next_scenario(tmp_path: Path) -> None:
    from workbench.tui.screens.main import Busy

    app = _hanging_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        main = await _building(pilot)
        await pilot.press("f")
        await pilot.pause()
        assert list(main.queue) == [Busy.ADVANCE]
        await pilot.press("s")
        await pilot.pause()
        picker = app.screen
        entry = next(e for e in picker.entries if e.label == "mlp_digits")
        picker.dismiss(entry.source)
        await pilot.pause()
        assert not main.queue
        await _wait_for(pilot, lambda: main.view is not None and main.busy is None, 60)
        main = await settle(pilot)
        assert main.view.summary.label == "mlp_digits"
        assert main.view.step == 0 and main.view.next_phase.value == "forward" and not main.view.done_phases


# -- 11: a run whose third step hangs names that step, and shows the two that finished -----------
HANGS_AT_STEP2 = '''
import time
import torch
from torch import nn
from workbench import Scenario


class Net(nn.Linear):
    calls = 0

    def forward(self, x):
        if torch.is_grad_enabled() and self.training:
            Net.calls += 1
            while Net.calls == 3:  # step 2's forward
                time.sleep(0.05)
        return super().forward(x)


def build(device):
    torch.manual_seed(0)
    model = Net(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data, name="hangs-at-step-2")
'''


async def test_a_run_that_hangs_in_step_2_says_step_2_and_shows_steps_0_and_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.tui import session as session_module
    from workbench.tui.widgets.panels import PhaseBar

    monkeypatch.setattr(session_module, "BUSY_NOTICE_S", 1.0)
    path = tmp_path / "hangs_at_step2.py"
    path.write_text(HANGS_AT_STEP2)
    app = create_app([str(path)], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await _wait_for(pilot, lambda: main.view is not None, 60)
        await pilot.press("r")
        bar = main.query_one(PhaseBar)
        await _wait_for(pilot, lambda: "with no news" in bar.status, 60)
        assert bar.status.startswith("step 2 busy for "), bar.status
        assert [r.step for r in main.view.history] == [0, 1]
        assert main.view.step == 2 and main.view.next_phase.value == "forward"
        assert "fill in after the first full step" not in plain(main.query_one("#charts"))
