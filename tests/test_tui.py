"""The TUI through Textual's Pilot: what the widgets show is what the engine measured."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.widgets import OptionList  # noqa: E402

from workbench.report.numbers import fmt_float  # noqa: E402
from workbench.scenario import load_source  # noqa: E402
from workbench.tui.app import create_app  # noqa: E402
from workbench.tui.screens.bench import BenchScreen  # noqa: E402
from workbench.tui.screens.main import MainScreen  # noqa: E402
from workbench.tui.screens.picker import PickerScreen, picker_entries  # noqa: E402
from workbench.tui.widgets.common import ErrorPanel  # noqa: E402
from workbench.tui.widgets.model_table import ModelTable, short_float  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MLP = str(ROOT / "scenarios" / "mlp_digits.py")
NAN = str(HERE / "tui_scenarios" / "nan_at_step3.py")
RAISES_FORWARD = str(HERE / "tui_scenarios" / "raises_in_forward.py")
RAISES_BUILD = str(HERE / "tui_scenarios" / "raises_on_build.py")
SIZE = (120, 40)


async def settle(pilot, rounds: int = 200) -> MainScreen:
    """Wait until the engine workers finished and their messages were handled."""
    main = pilot.app.main
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if main.busy is None and not any(w.is_running for w in pilot.app.workers):
            break
    return main


def plain(widget) -> str:
    """What a Static-based widget shows, as plain text (rendered 200 columns wide)."""
    from rich.console import Console

    content = widget.content
    if isinstance(content, str):
        return content
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(content)
    return console.export_text()


def cell(table: ModelTable, module: str, column: str) -> str:
    return table.get_cell(module, column).plain


def test_picker_entries_list_bundled_given_and_broken(tmp_path: Path) -> None:
    entries = picker_entries([NAN, str(tmp_path / "missing.py")])
    labels = [(e.group, e.label) for e in entries]
    assert ("given", "nan_at_step3") == labels[0]
    assert entries[1].error is not None and "no such file" in entries[1].error
    bundled = [label for group, label in labels if group == "bundled"]
    assert "mlp_digits" in bundled and "cnn_image:build_batchnorm" in bundled
    mlp = next(e for e in entries if e.label == "mlp_digits")
    assert "784-128-10 MLP" in mlp.summary


async def test_no_scenario_opens_picker_and_escape_leaves_an_empty_workbench() -> None:
    app = create_app([], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, PickerScreen)
        options = app.screen.query_one(OptionList)
        assert options.highlighted is not None
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert app.main.session is None
        await pilot.press("n")  # nothing loaded: a notice, not a crash
        await pilot.pause()
        assert app.is_running


async def test_stepping_phase_by_phase_shows_the_engines_numbers() -> None:
    from workbench.engine import Engine

    app = create_app([MLP], device="cpu", show_volatile=False)
    # The same scenario in a second engine: same seed, same model, same batches.
    reference = Engine.from_source(load_source(MLP), "cpu")
    try:
        async with app.run_test(size=SIZE) as pilot:
            main = await settle(pilot)
            assert main.view is not None and main.view.next_phase.value == "forward"
            table = main.query_one(ModelTable)
            assert cell(table, "fc1", "shape").strip() == "·"  # nothing measured yet

            await pilot.press("f")
            main = await settle(pilot)
            reference.advance()
            fc1 = reference.current.modules
            stats = {m.name: m for m in fc1}["fc1"]
            assert main.view.next_phase.value == "loss"
            assert cell(table, "fc1", "shape").strip() == "128"
            assert cell(table, "fc1", "mean").strip() == short_float(stats.mean)
            assert cell(table, "fc1", "max").strip() == short_float(stats.max)
            assert cell(table, "act", "min").strip() == short_float({m.name: m for m in fc1}["act"].min)
            phase = plain(main.query_one("#phase"))
            assert "✔ forward" in phase and "▶ loss" in phase

            await pilot.press("f", "f")  # loss, backward
            main = await settle(pilot)
            await pilot.pause()
            reference.advance()
            reference.advance()
            assert main.view.current.loss == pytest.approx(reference.current.loss)
            assert f"loss {fmt_float(reference.current.loss, 4)}" in plain(main.query_one("#phase"))
            assert main.view.next_phase.value == "optimizer_step"

            await pilot.press("f")  # optimizer step completes step 0
            main = await settle(pilot)
            record = reference.step_once()
            assert main.view.step == 1 and main.view.last.loss == pytest.approx(record.loss)
            uw = max(p.update_ratio for p in record.params if p.module == "fc2")
            assert cell(table, "fc2", "uw").strip() == short_float(uw)

            await pilot.press("n")  # a full step
            main = await settle(pilot)
            assert main.view.step == 2 and len(main.view.history) == 2
            assert app.is_running
    finally:
        reference.close()


async def test_nan_breakpoint_stops_at_the_right_step_and_module() -> None:
    from workbench.tui.screens.dialogs import BreakpointsScreen

    app = create_app([NAN], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await pilot.press("B")
        await pilot.pause()
        assert isinstance(app.screen, BreakpointsScreen)
        await pilot.press(*"nonsense", "enter")
        await pilot.pause()
        assert "unknown finding kind 'nonsense'" in plain(app.screen.query_one("#bp-error"))
        app.screen.query_one("#bp-input").value = ""
        await pilot.press(*"nan_inf", "enter", "ctrl+s")
        main = await settle(pilot)
        assert main.conditions == ("nan_inf",)
        assert [bp.describe() for bp in main.view.breakpoints] == ["nan_inf"]

        await pilot.press("r")
        main = await settle(pilot)
        hit = main.view.pending_break
        assert hit is not None and hit.step == 3
        assert hit.finding is not None and hit.finding.module == "fc1"
        assert main.view.next_phase.value == "optimizer_step"
        table = main.query_one(ModelTable)
        assert table.selected == "fc1"  # the cursor jumped to the culprit
        assert "breakpoint nan_inf" in plain(main.query_one("#phase"))
        assert cell(table, "fc1", "mean").strip() == "nan"

        await pilot.press("x")  # skip the poisoned optimizer step
        main = await settle(pilot)
        assert main.view.step == 4 and main.view.last.skipped


async def test_rewind_goes_back_and_the_replay_hits_the_same_breakpoint() -> None:
    app = create_app([NAN], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await pilot.press("u")  # nothing has run: a notice, nothing changes
        main = await settle(pilot)
        assert main.view.step == 0
        main.session.set_breakpoints(["nan_inf"])
        await pilot.press("r")
        main = await settle(pilot)
        first = main.view.pending_break
        assert first is not None and first.step == 3
        losses = [r.loss for r in main.view.history]
        await pilot.press("u")  # the start of step 3 (the paused one)
        main = await settle(pilot)
        assert main.view.step == 3 and main.view.next_phase.value == "forward"
        await pilot.press("u")  # the start of step 2
        main = await settle(pilot)
        assert main.view.step == 2 and main.view.pending_break is None
        assert [r.step for r in main.view.history] == [0, 1]
        assert all(f.step < 2 for f in main.view.findings)
        await pilot.press("r")
        main = await settle(pilot)
        again = main.view.pending_break
        assert again is not None and (again.step, again.finding.module) == (first.step, first.finding.module)
        assert [r.loss for r in main.view.history] == losses  # the same batches, the same numbers


async def test_exception_in_a_step_shows_the_error_panel_and_the_app_keeps_going() -> None:
    app = create_app([RAISES_FORWARD], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await pilot.press("n")  # step 0 works
        main = await settle(pilot)
        assert main.view.step == 1
        await pilot.press("f")  # the forward of step 1 raises
        main = await settle(pilot)
        panel = main.query_one(ErrorPanel)
        assert panel.shown
        title = plain(panel.query_one("#error-title"))
        details = plain(panel.query_one("#error-details"))
        assert "RuntimeError" in title and "forward" in title
        assert "deliberate failure on call 2" in details and "raises_in_forward.py" in details
        assert app.is_running
        await pilot.press("n")  # the engine starts a fresh step; call 3 succeeds
        main = await settle(pilot)
        assert not panel.shown and main.view.step >= 1
        await pilot.press("R")  # reset rebuilds from the file
        main = await settle(pilot)
        assert main.view is not None and main.view.step == 0 and not main.view.history


async def test_failing_build_shows_the_error_and_the_picker_still_works() -> None:
    app = create_app([RAISES_BUILD], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        panel = main.query_one(ErrorPanel)
        assert panel.shown and main.session is None
        text = plain(panel.query_one("#error-title")) + plain(panel.query_one("#error-details"))
        assert "KeyError" in text and "raises_on_build.py" in text
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, PickerScreen)
        picker = app.screen
        index = next(i for i, e in enumerate(picker.entries) if e.label == "mlp_digits")
        picker.dismiss(picker.entries[index].source)
        main = await settle(pilot)
        assert main.view is not None and main.view.summary.label == "mlp_digits"
        assert not panel.shown


async def test_run_pauses_mid_run_and_throttles_updates() -> None:
    from workbench.tui import messages as msg

    app = create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        updates: list[int] = []
        original = main.engine_updated

        def counting(message: msg.EngineUpdated) -> None:
            updates.append(message.view.step)
            original(message)

        main.engine_updated = counting  # type: ignore[method-assign]
        await pilot.press("r")  # no breakpoint: runs until paused
        for _ in range(100):
            await pilot.pause(0.05)
            if main.view.step >= 3:
                break
        assert main.busy == "run"
        await pilot.press("p")
        main = await settle(pilot)
        assert main.busy is None and main.session.stop.is_set()
        steps = main.view.step
        assert steps >= 3
        assert "paused after" in main.status
        # Throttled to ~10 updates a second however fast steps go.
        assert len(updates) <= steps


async def test_keys_help_palette_and_the_bench_screen() -> None:
    from workbench.tui.screens.dialogs import HelpScreen, StepsPrompt

    app = create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=(80, 24)) as pilot:
        main = await settle(pilot)
        assert main.has_class("narrow")
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("N")
        await pilot.pause()
        assert isinstance(app.screen, StepsPrompt)
        app.screen.query_one("#steps").value = ""
        await pilot.press("3", "enter")
        main = await settle(pilot)
        assert main.view.step == 3
        titles = [c.title for c in app.get_system_commands(main)]
        for expected in ("Phase", "Step", "Run→break", "Breakpoints", "Reset", "Bench", "Profile"):
            assert expected in titles
        await pilot.press("b")
        await pilot.pause()
        assert isinstance(app.screen, BenchScreen) and app.is_running


NAN7 = str(ROOT / "scenarios" / "broken" / "nan_at_step7.py")


def test_picker_lists_the_broken_demos_with_their_descriptions() -> None:
    entries = {e.label: e for e in picker_entries([])}
    broken = [label for label, e in entries.items() if e.group == "broken demos"]
    assert {"nan_at_step7", "dead_relu", "detached_branch", "raises_at_step3"} <= set(broken)
    # The Scenario's own description= (read without importing), not the file's first docstring line.
    assert entries["nan_at_step7"].summary.startswith("BROKEN: hand-written normalisation without eps")
    assert "--break-on nan_inf" in entries["nan_at_step7"].details  # the docstring says how to find it
    # A variant passing its description through a helper gets its own line.
    assert entries["cnn_image:build_batchnorm"].summary != entries["cnn_image"].summary
    assert "BatchNorm2d" in entries["cnn_image:build_batchnorm"].summary


async def test_save_keeps_a_typed_condition_not_yet_added() -> None:
    """Typing a condition and pressing Ctrl+S (no Enter) saves it; a bad one keeps the form open."""
    from workbench.tui.screens.dialogs import BreakpointsScreen

    app = create_app([NAN], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("B")
        await pilot.pause()
        await pilot.press(*"loss>", "ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, BreakpointsScreen)  # did not parse: still open, error shown
        assert plain(app.screen.query_one("#bp-error"))
        app.screen.query_one("#bp-input").value = ""
        await pilot.press(*"nan_inf", "ctrl+s")
        main = await settle(pilot)
        assert main.conditions == ("nan_inf",)


async def run_to_breakpoint(pilot, condition: str) -> MainScreen:
    """Add one breakpoint through the form (B, type, Enter, Ctrl+S), then run (r) until it fires."""
    from workbench.tui.screens.dialogs import BreakpointsScreen

    await settle(pilot)
    await pilot.press("B")
    await pilot.pause()
    assert isinstance(pilot.app.screen, BreakpointsScreen)
    await pilot.press(*condition, "enter", "ctrl+s")
    await settle(pilot)
    await pilot.press("r")
    return await settle(pilot)


async def test_nan_inf_breakpoint_on_the_bundled_demo_stops_at_step_7_on_norm() -> None:
    app = create_app([NAN7], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await run_to_breakpoint(pilot, "nan_inf")
        hit = main.view.pending_break
        assert hit is not None and hit.step == 7 and main.view.step == 7
        assert hit.finding is not None and hit.finding.kind == "nan_inf" and hit.finding.module == "norm"
        table = main.query_one(ModelTable)
        assert table.selected == "norm"
        assert cell(table, "norm", "naninf").strip() == "64"  # 64 rows × the one stuck feature
        # The inspector follows the cursor: NaN positions in the output's own (batch, feature) shape.
        for _ in range(300):  # up to 15 s: the sample comes from the host, slower on a loaded machine
            await pilot.pause(0.05)
            if main._inspected is not None and main._inspected.module == "norm":
                break
        data = main._inspected
        assert data.nan_total == 64 and data.numel == 64 * 12 and data.output_numel is None
        assert data.nan_positions[:2] == ((0, 3), (1, 3))  # sensor 3, stuck at 0 in batch 7
        assert "non-finite at [0, 3], [1, 3], [2, 3] …" in plain(main.query_one("#inspector"))
        assert "step 7 · paused before optimizer step" in plain(main.query_one("#title"))


async def test_stale_rows_are_dim_and_changed_numbers_flash() -> None:
    from workbench.tui import theme

    app = create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await pilot.press("n")  # step 0 complete: its numbers are now from the previous step
        main = await settle(pilot)
        table = main.query_one(ModelTable)
        mean = table.get_cell("fc1", "mean")
        assert mean.plain.strip() not in ("", "·") and str(mean.style) == theme.DIM
        await pilot.press("f")  # the forward of step 1 measures them again
        main = await settle(pilot)
        mean = table.get_cell("fc1", "mean")
        assert str(mean.style) == ""  # fresh: no longer dim
        flashing = table.flashing
        assert ("fc1", "mean") in flashing  # a new batch: the mean changed, so it flashes
        assert ("fc1", "shape") not in flashing  # same shape: no flash
        assert any(str(span.style) == theme.FLASH for span in mean.spans)  # drawn in the flash style
        await pilot.pause(1.0)
        assert not table.flashing  # and it stops: same number, plain style
        mean = table.get_cell("fc1", "mean")
        assert not mean.spans and str(mean.style) == ""


async def test_memory_panel_shows_the_debugger_tax_per_instrument() -> None:
    from workbench.tui.widgets.panels import INSTRUMENT_LABEL, MemoryPanel, debugger_tax

    app = create_app([MLP], device="cpu", show_volatile=True)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(3):
            await settle(pilot)
            await pilot.press("n")
        main = await settle(pilot)
        history = main.view.history
        tax = debugger_tax(history)
        assert tax is not None and tax.steps == 3
        # The panel averages what the engine recorded; nothing is measured twice.
        assert tax.tax_seconds == pytest.approx(sum(r.instrument_seconds for r in history) / 3)
        assert dict(tax.instruments).keys() == set().union(*(r.instrument_breakdown for r in history))
        text = " ".join(plain(main.query_one(MemoryPanel)).split())
        assert f"debugger tax {tax.ratio:.2f}×" in text
        top = tax.instruments[0][0]
        assert INSTRUMENT_LABEL.get(top, top) in text


def test_table_numbers_fit_their_columns_without_being_cropped() -> None:
    from workbench.tui.widgets.model_table import short_count

    assert [short_float(v) for v in (0.035, -0.0063, 1234.5, -12345.678, 1e-9, 0.0, float("nan"))] == [
        "0.035", "-6e-3", "1234", "-1e4", "1e-9", "0", "nan"]
    # A NaN count of 2,048 must not read as "2.0" (a cropped "2.05 K").
    assert [short_count(n) for n in (64, 2048, 921_600, 1_384_448)] == ["64", "2048", "922K", "1.4M"]


def test_shapes_drop_the_batch_dimension_only() -> None:
    from workbench.tui.render import shape_str
    assert shape_str((8, 24, 32), 8) == "24×32"  # a batch of 8 token sequences
    assert shape_str((24, 32), 8) == "24×32"  # a position embedding: no batch dimension
    assert shape_str((24, 8, 64), 8) == "24×8×64"  # a time-major LSTM's (T, N, H)
    assert shape_str((8, 10), 0) == "10"  # batch size unknown: the first dimension is the batch's
    assert (shape_str((8,), 8), shape_str(None, 8)) == ("8", "·")


async def test_phase_bar_says_a_loss_from_the_model_is_timed_in_forward() -> None:
    # transformer_lm computes its loss in forward: the loss phase's ~0 ms must not read as free.
    app = create_app([str(ROOT / "scenarios" / "transformer_lm.py")], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await pilot.press("n")  # one whole step
        main = await settle(pilot)
        phase = " ".join(plain(main.query_one("#phase")).split())
        assert main.view.last is not None and main.view.last.loss_source == 'outputs["loss"]'
        assert 'loss from outputs["loss"], timed in forward' in phase


async def test_phase_bar_names_no_loss_source_for_a_loss_fn() -> None:
    app = create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await pilot.press("n")
        main = await settle(pilot)
        assert main.view.last is not None
        assert "timed in forward" not in plain(main.query_one("#phase"))
