"""What a new user hit in the TUI: each test failed before its fix (Pilot, real engine)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

pytest.importorskip("textual")

from workbench.tui.app import create_app  # noqa: E402
from workbench.tui.screens.dialogs import HelpScreen, InspectorScreen  # noqa: E402
from workbench.tui.screens.picker import picker_entries  # noqa: E402
from workbench.tui.widgets.footer import KeyFooter, fit_keys  # noqa: E402
from workbench.tui.widgets.model_table import ModelTable  # noqa: E402
from workbench.tui.widgets.panels import unique_labels  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MLP = str(ROOT / "scenarios" / "mlp_digits.py")
RAISES3 = str(ROOT / "scenarios" / "broken" / "raises_at_step3.py")
NAN = str(HERE / "tui_scenarios" / "nan_at_step3.py")
SLOW = str(HERE / "tui_scenarios" / "slow_forward.py")
PRINTS = str(HERE / "tui_scenarios" / "prints.py")


async def settle(pilot, rounds: int = 300):  # noqa: ANN001
    main = pilot.app.main
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if main.busy is None and not main.queue and not any(w.is_running for w in pilot.app.workers):
            break
    return main


def screen_text(app) -> str:  # noqa: ANN001
    """Everything on the terminal now, as plain text (from the SVG screenshot)."""
    svg = app.export_screenshot()
    return html.unescape("".join(re.findall(r"<text[^>]*>(.*?)</text>", svg, flags=re.S))).replace("\xa0", " ")


async def test_stepping_keys_pressed_while_a_phase_runs_are_queued_and_shown() -> None:
    app = create_app([SLOW], device="cpu", show_volatile=False)
    async with app.run_test(size=(120, 40)) as pilot:
        main = await settle(pilot)
        await pilot.press("f", "f", "f")  # the first forward takes 0.3 s: the others wait
        text = screen_text(app)
        assert "running forward" in text
        assert "queued: f f" in text
        main = await settle(pilot)
        # All three ran: forward, loss, backward.
        assert [p.value for p in main.view.done_phases] == ["forward", "loss", "backward"]
        assert main.view.next_phase.value == "optimizer_step"


async def test_keys_pressed_while_loading_run_once_the_scenario_is_ready() -> None:
    app = create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f", "f")
        main = await settle(pilot)
        assert main.view is not None and main.view.next_phase.value == "backward"


@pytest.mark.slow
async def test_inspector_follows_the_cursor_during_a_run_and_i_shows_one_module() -> None:
    app = create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=(120, 40)) as pilot:
        main = await settle(pilot)
        await pilot.press("n")
        main = await settle(pilot)
        table = main.query_one(ModelTable)
        await pilot.press("r")  # runs until p
        await pilot.pause(0.2)
        table.select_module("fc2")
        await pilot.pause(0.6)
        inspector = main.query_one("#inspector")
        assert inspector.border_title.startswith("Inspector · fc2")
        seen_step = main._inspected.step if main._inspected is not None else None
        await pilot.pause(0.5)
        # Read again while the run goes on: the histograms follow the steps.
        assert main._inspected is not None and main._inspected.module == "fc2"
        assert seen_step is not None and main._inspected.step > seen_step
        await pilot.press("p")
        main = await settle(pilot)
        await pilot.press("i")
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, InspectorScreen)
        assert "fc2" in modal.title_text
        # The stats line is fc2's own, not the module that was inspected before.
        from rich.console import Console

        from workbench.report.numbers import fmt_float

        console = Console(width=200, record=True, file=open("/dev/null", "w"))
        console.print(modal.body)
        body = console.export_text()
        fc2 = main.view.module_stats()["fc2"]
        assert f"activation mean {fmt_float(fc2.mean)}" in body


async def test_after_a_failed_step_the_header_names_it_and_findings_keep_their_rows() -> None:
    app = create_app([RAISES3], device="cpu", show_volatile=False)
    async with app.run_test(size=(120, 40)) as pilot:
        main = await settle(pilot)
        await pilot.press("r")
        main = await settle(pilot)
        await pilot.pause()
        text = screen_text(app)
        assert "step 3" in text.split("\n")[0] or "step 3 raised" in text
        assert "step 3 raised" in text
        assert main.query_one("#findings").size.height >= 2


async def test_help_legend_is_whole_at_80_columns() -> None:
    app = create_app([], device="cpu", show_volatile=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("escape")  # the picker
        await pilot.pause()
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        legend = app.screen.query_one("#help-legend")
        legend.scroll_visible(animate=False)
        await pilot.pause()
        # Every line of the legend is laid out (it used to end at "… yellow ⚠").
        assert legend.size.height >= 6
        assert "enter on a finding jumps to its module" in str(legend.content)


async def test_footer_always_shows_help_and_quit_and_every_key() -> None:
    for size in ((80, 24), (120, 40), (200, 60)):
        app = create_app([], device="cpu", show_volatile=False)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await pilot.press("escape")
            await pilot.pause()
            footer = app.main.query_one(KeyFooter)
            line = footer.content.plain
            assert "? help" in line and "q quit" in line, (size, line)
            for key in "f n N r p x u B R s b P i l".split():
                assert re.search(rf"(^|\s){re.escape(key)}(\s|$)", line), (size, key, line)
            assert len(line) <= size[0]


def test_fit_keys_drops_words_before_keys_and_never_help_or_quit() -> None:
    items = [("f", "phase"), ("n", "step"), ("l", "log"), ("?", "help"), ("q", "quit")]
    assert fit_keys(items, 80, ["l", "n", "f"]) == items
    squeezed = fit_keys(items, 24, ["l", "n", "f"])
    assert ("?", "help") in squeezed and ("q", "quit") in squeezed
    assert ("l", "") in squeezed
    tiny = fit_keys(items, 16, ["l", "n", "f"])
    assert [k for k, _ in tiny][-2:] == ["?", "q"]


async def test_the_side_column_grows_with_the_terminal() -> None:
    widths = {}
    for size in ((120, 40), (200, 60)):
        app = create_app([MLP], device="cpu", show_volatile=False)
        async with app.run_test(size=size) as pilot:
            main = await settle(pilot)
            widths[size[0]] = main.query_one("#side").size.width
    assert widths[200] >= widths[120] + 20  # it was 34 at every size


async def test_80x24_keeps_the_model_table_usable() -> None:
    app = create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=(80, 24)) as pilot:
        main = await settle(pilot)
        assert main.query_one(ModelTable).size.height >= 8  # header + rows (it had 5 rows)


async def test_the_highlighted_finding_is_shown_whole_in_the_detail_pane() -> None:
    app = create_app([NAN], device="cpu", show_volatile=False)
    async with app.run_test(size=(160, 45)) as pilot:
        main = await settle(pilot)
        await pilot.press("N")
        await pilot.pause()
        await pilot.press("backspace", "backspace", "5", "enter")
        main = await settle(pilot)
        assert main.view.findings
        findings = main.query_one("#findings")
        findings.focus()
        findings.highlighted = 0
        await pilot.pause()
        detail = main.query_one("#finding-detail")
        assert detail.has_class("shown")
        from workbench.engine.records import collapse_findings

        newest = collapse_findings(main.view.findings)[-1]
        assert str(newest.message) in str(detail.content)
        # A finding repeated over steps is one row with its step range and count.
        rows = [str(findings.get_option_at_index(i).prompt) for i in range(findings.option_count)]
        repeated = [f for f in collapse_findings(main.view.findings) if f.count > 1]
        if repeated:
            f = repeated[-1]
            assert any(f"s{f.step}–s{f.last_step} ×{f.count}" in row for row in rows), rows


async def test_saved_breakpoints_show_on_the_main_screen() -> None:
    app = create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=(120, 40)) as pilot:
        main = await settle(pilot)
        await pilot.press("B")
        await pilot.pause()
        for ch in "loss>5":
            await pilot.press(ch if ch != ">" else "greater_than_sign")
        await pilot.press("ctrl+s")
        main = await settle(pilot)
        assert "breaks loss>5" in screen_text(app)


async def test_print_from_the_scenario_lands_in_the_log() -> None:
    app = create_app([PRINTS], device="cpu", show_volatile=False)
    async with app.run_test(size=(120, 40)) as pilot:
        main = await settle(pilot)
        await pilot.press("n")
        main = await settle(pilot)
        log = list(app.logbook)
        assert "stdout: building the chatty scenario" in log
        assert "stdout: forward sees a batch of 8" in log
        assert "stderr: stderr from forward" in log


async def test_the_table_has_a_zeros_column_and_memory_an_rss_meter() -> None:
    app = create_app([MLP], device="cpu", show_volatile=True)
    async with app.run_test(size=(120, 40)) as pilot:
        main = await settle(pilot)
        await pilot.press("n")
        main = await settle(pilot)
        table = main.query_one(ModelTable)
        act = main.view.module_stats()["act"]
        assert table.get_cell("act", "zeros").plain.strip() == str(round(act.zero_fraction * 100))
        assert "▕" in screen_text(app)  # the RSS meter


def test_picker_gives_each_variant_its_own_line() -> None:
    entries = {e.label: e.summary for e in picker_entries([])}
    assert entries["binary_bce"] != entries["binary_bce:build_logits"]
    assert "BCEWithLogitsLoss" in entries["binary_bce:build_logits"]


def test_heat_strip_labels_are_unique_for_hf_style_names() -> None:
    names = ["bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
             "bert.embeddings.token_type_embeddings", "bert.encoder.layer.0.attention.self.query",
             "bert.encoder.layer.1.attention.self.query", "classifier"]
    labels = unique_labels(names, 10)
    assert len(set(labels)) == len(labels)
    assert all(len(label) <= 10 for label in labels)
    assert labels[-1] == "classifier"


async def test_bench_checklist_draws_checked_and_unchecked_differently() -> None:
    from textual.app import App

    from workbench.scenario import load_source
    from workbench.tui.screens.bench import BenchScreen, VariantChecklist

    class Host(App[None]):
        def on_mount(self) -> None:
            self.push_screen(BenchScreen(load_source(MLP), "cpu"))

    app = Host()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        checklist = app.screen.query_one(VariantChecklist)
        rows = ["".join(seg.text for seg in checklist.render_line(y)) for y in range(checklist.option_count)]
        compile_row = next(r for r in rows if "compile" in r)  # unchecked by default
        fp32_row = next(r for r in rows if "fp32" in r)
        assert "✔" in fp32_row and "✔" not in compile_row and "X" not in compile_row


def test_a_collapsed_finding_shows_its_step_range_count_and_what_followed() -> None:
    from workbench.engine.records import Finding, Phase
    from workbench.tui.widgets.findings import _option, finding_detail

    nan_loss = Finding(4, Phase.LOSS, "", None, "nan_inf", "error", None, None, "loss is NaN",
                       cause="non_finite_data")
    root = Finding(3, Phase.FORWARD, "fc1", None, "dead_units", "warning", 0.9, 0.5, "90% of units are zero",
                   count=7, last_step=9, consequences=(nan_loss,))
    row = str(_option(0, root, 120).prompt)
    assert "s3–s9 ×7" in row and "1 following: nan_inf" in row
    detail = str(finding_detail(root))
    assert "90% of units are zero" in detail and "nan_inf (model) s4: loss is NaN" in detail


def test_bench_table_notes_are_cut_between_words_not_inside_one() -> None:
    from workbench.tui.screens.bench import clip_words

    text = "gloo: all-reduce 41% of fwd+bwd; params equal on all ranks; launch 3.1 s"
    clipped = clip_words(text, 40)
    assert len(clipped) <= 40 and clipped.endswith("…")
    assert text.startswith(clipped[:-1]) and text[len(clipped) - 1] in " ;"  # ends where a word ended
    assert clip_words("short", 40) == "short"


# -- the second user test (tmux, 120x40 and 80x24) ---------------------------------------------

CNN = str(ROOT / "scenarios" / "cnn_image.py")


def panel_lines(widget) -> list[str]:  # noqa: ANN001
    """A Static panel's content as laid out at its content width (what the terminal shows)."""
    from rich.console import Console

    console = Console(width=widget.size.width, record=True, file=open("/dev/null", "w"))
    console.print(widget.content)
    return console.export_text().splitlines()


async def run_steps(pilot, k: int):  # noqa: ANN001
    """Run k steps with N and wait until they are done."""
    await pilot.press("N")
    await pilot.pause()
    await pilot.press("backspace", "backspace", *str(k), "enter")
    main = pilot.app.main
    target = main.view.step + k
    for _ in range(20):
        main = await settle(pilot)
        if main.view.step >= target and main.busy is None:
            break
    assert main.view.step >= target
    return main


@pytest.mark.slow
async def test_charts_show_the_newest_steps_and_whole_labels_after_a_resize() -> None:
    from workbench.tui.render import sparkline
    from workbench.tui.widgets.panels import ChartsPanel

    app = create_app([CNN], device="cpu", show_volatile=False)
    async with app.run_test(size=(200, 60)) as pilot:
        await settle(pilot)
        main = await run_steps(pilot, 26)  # more steps than the sparkline has cells at 120 columns
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        await pilot.pause()
        charts = main.query_one(ChartsPanel)
        lines = panel_lines(charts)
        history = main.view.history
        assert all(len(line.rstrip()) <= charts.size.width and "…" not in line for line in lines), lines
        loss = next(line for line in lines if line.startswith("loss"))
        value = float(loss.split()[1])  # the value whole ("7.49e…" before)
        assert value == pytest.approx(history[-1].loss, rel=0.01)
        spark = loss.rstrip().rsplit(" ", 1)[-1]
        # As many steps as fit, and they are the newest: the line scrolls.
        assert len(history) > len(spark) >= charts.size.width - 14
        assert spark == sparkline([r.loss for r in history], len(spark)).plain
        # One heat row per layer with parameters, each label whole and its own.
        labels = [line.split(" ", 1)[0] for line in lines[2:] if line.strip()]
        assert labels == ["features.0", "features.3", "classifier.1"]


def test_chart_values_are_formatted_to_fit_never_cut() -> None:
    from workbench.tui.widgets.panels import fit_float

    for x in (7.4912e-5, -7.4912e-5, 12345.678, -123456.7, 2.3456, 0.0, float("nan"), None, -1.5e-12):
        text = fit_float(x, 7)
        assert len(text) <= 7 and "…" not in text, (x, text)
    assert fit_float(7.4912e-5, 7) == "7.49e-5" and fit_float(2.3456, 7) == "2.346"


def test_heat_labels_keep_the_part_that_tells_layers_apart() -> None:
    labels = unique_labels(["features.0", "features.3", "classifier.1"], 8)
    assert labels == ["…tures.0", "…tures.3", "…ifier.1"]


async def test_a_breakpoint_glob_that_matches_no_module_is_kept_with_a_warning() -> None:
    from textual.widgets import Input, Static

    from workbench.tui.screens.dialogs import BreakpointsScreen

    app = create_app([MLP], device="cpu", show_volatile=False)
    async with app.run_test(size=(120, 40)) as pilot:
        main = await settle(pilot)
        await pilot.press("B")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, BreakpointsScreen)
        said = dialog.query_one("#bp-error", Static)
        field = dialog.query_one("#bp-input", Input)
        field.value = "dead_units@nosuch.*"
        await pilot.press("enter")
        await pilot.pause()
        assert "added: dead_units@nosuch.*" in str(said.content)
        assert "matches no module of this model (yet): nosuch.*" in str(said.content)
        assert "dead_units@nosuch.*" in dialog.conditions  # still allowed: modules may appear later
        field.value = "dead_units@fc*"
        await pilot.press("enter")
        await pilot.pause()
        assert str(said.content) == "added: dead_units@fc*"
        await pilot.press("ctrl+s")
        main = await settle(pilot)
        assert main.conditions == ("dead_units@nosuch.*", "dead_units@fc*")


def test_unmatched_glob_note_checks_modules_parameters_and_suggests_close_names() -> None:
    from workbench.engine.breakpoints import Breakpoint
    from workbench.tui.screens.dialogs import unmatched_glob_note

    modules = ["", "features", "features.0", "features.3", "classifier", "classifier.1"]
    note = unmatched_glob_note(Breakpoint.parse("dead_units@featurs.*"), modules)
    assert note.startswith("matches no module of this model (yet): featurs.*") and "close: features" in note
    assert unmatched_glob_note(Breakpoint.parse("dead_units@features.*"), modules) == ""
    assert unmatched_glob_note(Breakpoint.parse("nan_inf"), modules) == ""  # no glob
    assert unmatched_glob_note(Breakpoint.parse("dead_units@nosuch.*"), []) == ""  # no model to check
    # A parameter's name: before the first backward none is known, so one that could be is let be;
    # once they are known, the real names decide.
    assert unmatched_glob_note(Breakpoint.parse("exploding_gradient@*.weight"), modules) == ""
    params = ["features.0.weight", "features.0.bias"]
    assert unmatched_glob_note(Breakpoint.parse("exploding_gradient@features.0.bias"), modules, params) == ""
    assert unmatched_glob_note(Breakpoint.parse("exploding_gradient@features.0.wieght"), modules, params)


def test_an_int8_rows_speedup_says_it_is_against_inference() -> None:
    from workbench.bench.results import Timing, VariantResult
    from workbench.tui.screens.bench import row_cells

    int8 = VariantResult("int8-dynamic", "ok", timing=Timing((0.01, 0.011)), speedup=0.92,
                         speedup_basis="fp32 inference")
    assert row_cells(int8)[5] == "0.92× (inference)"


async def test_bench_screen_names_the_resolved_device_and_leaves_cuda_rows_unchecked_on_cpu() -> None:
    from workbench.tui.screens.bench import BenchScreen, VariantChecklist

    app = create_app([MLP], device="auto", show_volatile=False)
    async with app.run_test(size=(120, 40)) as pilot:
        main = await settle(pilot)
        device = main.view.summary.device
        await pilot.press("b")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, BenchScreen)
        title = str(screen.query_one("#bench-title").content)
        assert title == f"Bench · mlp_digits on {device}"  # not "on auto"
        if device.startswith("cuda"):
            return
        checklist = screen.query_one(VariantChecklist)
        rows = ["".join(seg.text for seg in checklist.render_line(y)) for y in range(checklist.option_count)]
        for name in ("amp-bf16", "dataparallel"):
            assert name not in checklist.selected
            row = next(r for r in rows if name in r)
            assert f"{name} (needs CUDA)" in row and "✔" not in row
        assert {"fp32", "amp", "ddp-2"} <= set(checklist.selected)


def test_the_rss_line_is_worded_to_fit_never_cut_inside_a_unit() -> None:
    from workbench.tui.widgets.panels import rss_text

    rss, total = int(380.1 * 2**20), int(23.5 * 2**30)
    assert rss_text(rss, total, 40).plain == "380.1 MB  1.6% of 23.5 GB RAM"
    for width in range(8, 40):
        text = rss_text(rss, total, width).plain
        assert len(text) <= max(width, len("380.1 MB")), (width, text)
        assert text.endswith(("MB", "GB", "RAM", "%")), text
    assert rss_text(rss, total, 23).plain == "380.1 MB of 23.5 GB RAM"


async def test_memory_and_model_table_fit_their_words_at_120_columns() -> None:
    from workbench.tui.widgets.panels import MemoryPanel, _total_memory

    app = create_app([CNN], device="cpu", show_volatile=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        main = await settle(pilot)
        memory = main.query_one(MemoryPanel)
        lines = panel_lines(memory)
        rss = next(line for line in lines if line.startswith("RSS")).rstrip()
        if _total_memory():
            assert rss.endswith(("GB", "RAM")), rss  # "… 1.6% of 23.5" before
        assert all("…" not in line for line in lines[:3]), lines
        # The rows fit the panel: the scrollbar's cells go to the names, and a type name is cut
        # whole rather than to a letter ("features S…", "MaxPoo…" before).
        table = main.query_one(ModelTable)
        names = {row: table.get_cell(row, "module").plain for row in ("features", "features.2", "classifier")}
        assert names["features.2"].strip() == "2 MaxPool2d"
        assert not names["features"].rstrip().endswith("S…"), names
        assert "classifier" in names["classifier"]


def test_the_inspector_title_leaves_out_an_empty_description() -> None:
    from workbench.tui.widgets.inspector import inspector_title

    class Data:
        module, description = "", ""

    assert inspector_title(Data()) == "Inspector · model"  # was "Inspector · model · "
    Data.description = "Linear(4, 2)"
    assert inspector_title(Data()) == "Inspector · model · Linear(4, 2)"


def test_the_picker_names_the_files_a_directory_holds_that_are_not_scenarios(tmp_path: Path) -> None:
    """As `workbench list` does: a helper module in the directory was left out without a word."""
    (tmp_path / "good.py").write_text("def build(device):\n    raise NotImplementedError\n")
    (tmp_path / "notes.py").write_text("NOTES = 'no build function here'\n")
    entries = [e for e in picker_entries([str(tmp_path)]) if e.group == str(tmp_path)]
    assert [e.label for e in entries] == ["good", "notes"]
    assert entries[0].error is None and entries[1].source is None
    assert entries[1].error is not None and entries[1].error.startswith("skipped: ")
