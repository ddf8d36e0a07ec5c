"""How `workbench bench` lays out its results: inference rows apart from training, warnings grouped."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from rich.console import Console

from tests.test_bench import TINY, _bench
from workbench.report.bench import render_run, speedup_bars, warning_lines


def _text(renderable: object, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def _run(tmp_path: Path):  # noqa: ANN202
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    return _bench(path, ["fp32", "accum-2", "int8-dynamic"])


def test_int8_is_compared_with_fp32_inference_in_its_own_section(tmp_path: Path) -> None:
    run = _run(tmp_path)
    for width in (200, 100):
        text = _text(render_run(run), width)
        training, _, rest = text.partition("inference (eval mode, forward only")
        assert rest, text  # the inference section exists
        # int8 is not a row of the training table, and fp32 inference is a row of its own section.
        assert "int8-dynamic" not in training.split("speedup (")[0]
        assert "fp32 inference" in rest and "int8-dynamic" in rest
    bars = _text(speedup_bars(run), 120)
    training_chart, _, inference_chart = bars.partition("inference speedup (× fp32 inference")
    assert "accum-2" in training_chart and "int8-dynamic" not in training_chart
    assert "int8-dynamic" in inference_chart


def test_warnings_are_one_group_and_a_shared_warning_is_one_line(tmp_path: Path) -> None:
    run = _run(tmp_path)
    rows = tuple(dataclasses.replace(r, warnings=("timings are noisy (IQR 40% of the median)",))
                 if r.name in ("fp32", "accum-2") else dataclasses.replace(r, warnings=()) for r in run.results)
    lines = warning_lines(dataclasses.replace(run, results=rows))
    assert lines[0].startswith("⚠ 2 warnings from 2 row(s)")
    assert lines[1:] == ["  fp32, accum-2: timings are noisy (IQR 40% of the median)"]
    assert sum(line.startswith("⚠") for line in lines) == 1
    # The same warning with other figures is one line too, each row's figure beside its name.
    rows = tuple(dataclasses.replace(r, warnings=(f"timing: IQR is {n}% of the median; re-run",))
                 for r, n in zip(run.results, (538, 293, 27)))
    lines = warning_lines(dataclasses.replace(run, results=rows))
    assert lines[1:] == ["  fp32 (538%), accum-2 (293%), int8-dynamic (27%): timing: IQR is … of the median; re-run"]


def test_profile_no_rule_fired_says_which_rules_cannot_apply_on_cpu() -> None:
    from workbench.profiling.advice import GPU_ONLY
    from workbench.report.profile import recommendations_view

    cpu = " ".join(_text(recommendations_view((), "x.py", on_gpu=False), 300).split())
    checked, _, skipped = cpu.partition("Not applicable on this CPU run")
    assert "GPU kernel-busy share" not in checked and "Tensor Core" not in checked
    assert "DataLoader share" in checked
    assert all(name in skipped for name in GPU_ONLY)
    gpu = _text(recommendations_view((), "x.py", on_gpu=True), 300)
    assert "GPU kernel-busy share" in gpu and "Not applicable" not in gpu


def test_uneven_micro_batches_are_named_by_their_sizes(tmp_path: Path) -> None:
    from workbench.report.bench import notes

    path = tmp_path / "tiny.py"
    path.write_text(TINY)  # batches of 16: 3 micro-batches of 6, 5 and 5
    run = _bench(path, ["fp32", "accum-3"])
    row = next(r for r in run.results if r.name == "accum-3")
    assert row.extras["micro_batch_sizes"] == [6, 5, 5]
    assert "micro-batches 6, 5, 5" in notes(row) and "5.33" not in notes(row)


def test_an_accum_row_on_a_batchnorm_model_says_why_its_loss_differs(tmp_path) -> None:
    """cnn models with BatchNorm: accum-2's 'loss +0.68' read as a bug of accumulation; its
    normalisation simply sees each micro-batch alone."""
    from workbench.bench import Plan, run_bench
    from workbench.report.bench import notes
    from workbench.scenario import load_source

    path = tmp_path / "bn.py"
    path.write_text(
        "import torch\nfrom torch import nn\nfrom workbench import Scenario\n"
        "def build(device):\n"
        "    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))\n"
        "    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]\n"
        "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),\n"
        "                    loss_fn=nn.CrossEntropyLoss(), data=data)\n")
    run = run_bench(load_source(str(path)), ["fp32", "accum-2"], plan=Plan(warmup=1, steps=2))
    fp32, accum = run.results
    assert "BatchNorm statistics per micro-batch" in notes(accum, fp32)
    assert "BatchNorm" not in notes(fp32, fp32)
