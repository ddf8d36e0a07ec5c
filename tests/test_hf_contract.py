"""Real Hugging Face models (tiny configs built here, nothing downloaded) through every command.

Dict batches (BERT's as ``BatchEncoding``, as a tokenizer returns them), the loss
computed inside the model (``loss_fn=None``), clipping and a per-step warm-up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from workbench.bench import Plan, run_bench  # noqa: E402
from workbench.cli import main  # noqa: E402
from workbench.engine import Engine  # noqa: E402
from workbench.scenario import load, load_source  # noqa: E402

pytestmark = pytest.mark.slow  # importing transformers alone takes seconds here

GPT2 = '''
import torch
from workbench import Scenario


def build(device):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).to(device)
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(4):
        ids = (torch.randint(0, 8, (8, 1), generator=g) + torch.arange(16)) % 64
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return Scenario(model=model, optimizer=optimizer, loss_fn=None, data=data, clip_grad_norm=1.0,
                    scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 3)),
                    scheduler_interval="step", description="tiny GPT-2")
'''

BERT = '''
import torch
from workbench import Scenario


def build(device):
    from transformers import BatchEncoding, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config).to(device)
    g = torch.Generator().manual_seed(2)
    data = []
    for _ in range(4):
        labels = torch.randint(0, 2, (8,), generator=g)
        ids = 2 + labels[:, None] * 30 + torch.randint(0, 30, (8, 12), generator=g)
        mask = (torch.arange(12) < torch.randint(6, 13, (8, 1), generator=g)).long()
        data.append(BatchEncoding({"input_ids": ids * mask, "attention_mask": mask, "labels": labels}))
    return Scenario(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3), loss_fn=None,
                    data=data, description="tiny BERT classifier")
'''


@pytest.fixture
def gpt2(tmp_path: Path) -> Path:
    path = tmp_path / "gpt2_tiny.py"
    path.write_text(GPT2)
    return path


@pytest.fixture
def bert(tmp_path: Path) -> Path:
    path = tmp_path / "bert_tiny.py"
    path.write_text(BERT)
    return path


def test_engine_reads_the_models_own_loss(gpt2: Path, bert: Path) -> None:
    for path in (gpt2, bert):
        with Engine(load(path)) as eng:
            records = [eng.step_once() for _ in range(4)]
        assert {r.loss_source for r in records} == {"outputs.loss"}
        assert all(r.loss is not None and r.loss == r.loss for r in records)
        assert records[0].batch_size == 8 and records[0].modules
        if path is gpt2:  # a learnable sequence: the LM's own loss falls within 4 steps
            assert records[-1].loss < records[0].loss


def test_run_and_check(gpt2: Path, bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    assert main(["run", str(bert), "--steps", "3", "--json", str(out)]) == 0
    steps = json.loads(out.read_text())["steps"]
    assert [s["loss_source"] for s in steps] == ["outputs.loss"] * 3
    assert main(["check", str(gpt2), str(bert), "--steps", "4"]) == 0


def test_summary(gpt2: Path, bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", str(bert)]) == 0
    assert main(["summary", str(gpt2)]) == 0
    out = capsys.readouterr().out
    assert "BertForSequenceClassification" in out and "GPT2LMHeadModel" in out


def test_bench_fp32_accum_2_and_int8(gpt2: Path) -> None:
    run = run_bench(load_source(str(gpt2)), ["fp32", "accum-2", "int8-dynamic"], plan=Plan(warmup=1, steps=2))
    for r in run.results:
        assert r.ok, (r.name, r.reason)
    # Same effective batch: accumulation follows fp32 (the loss is a per-token mean over equal halves).
    assert run.get("accum-2").final_loss == pytest.approx(run.get("fp32").final_loss, rel=1e-3)
    assert run.get("int8-dynamic").extras["held_out_batches"] >= 1


def test_profile(gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(gpt2), "--device", "cpu", "--steps", "3", "--logdir", str(tmp_path / "prof")]) == 0
    assert list((tmp_path / "prof").rglob("*.pt.trace.json"))
    out = capsys.readouterr().out
    # GPT-2 computes its loss inside forward (a ModelOutput's .loss): the report says so.
    assert "forward (+ loss inside the model)" in out and "computed inside the model (outputs.loss)" in out


def test_diff(bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "diff.json"
    rc = main(["diff", str(bert), "--b", "bf16", "--threshold", "0.5", "--json", str(out)])
    assert rc in (0, 1)
    report = json.loads(out.read_text())
    assert report["layers"] and report["grads"]  # compared layer by layer and by gradient


async def test_tui_session_steps_a_real_hf_model(bert: Path) -> None:
    # The TUI on BERT with a BatchEncoding batch and the model's own loss: one full step fills
    # the model table with the HF module names and the phase bar with the model's loss.
    from tests.test_tui import SIZE, plain, settle
    from workbench.tui.app import create_app
    from workbench.tui.widgets.model_table import ModelTable

    app = create_app([str(bert)], device="cpu", show_volatile=False)
    async with app.run_test(size=SIZE) as pilot:
        main = await settle(pilot)
        await pilot.press("n")
        main = await settle(pilot)
        last = main.view.last
        assert last is not None and last.loss_source == "outputs.loss" and last.loss == last.loss
        names = {m.name for m in last.modules}
        assert "bert.encoder.layer.0.attention.self.query" in names and "classifier" in names
        table = main.query_one(ModelTable)
        assert table.get_cell("classifier", "shape").plain.strip() == "2"  # per sample: 2 labels
        assert "loss from outputs.loss, timed in forward" in " ".join(plain(main.query_one("#phase")).split())
