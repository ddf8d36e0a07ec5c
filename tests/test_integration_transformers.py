"""workbench.integrations.transformers with the real Hugging Face Trainer (tiny configs, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it (transformers[torch])

from tests.watch_models import hook_count  # noqa: E402
from workbench.engine.records import NAN_INF, NO_GRADIENT  # noqa: E402

pytestmark = pytest.mark.slow  # building a Trainer takes seconds on these machines


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def _token_rows(n: int = 16, vocab: int = 64, length: int = 8) -> _Rows:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (length,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return _Rows(rows)


def _train(model: nn.Module, dataset: torch.utils.data.Dataset, tmp_path: Path, **watch_kwargs):
    from workbench.integrations.transformers import WorkbenchCallback

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3,
    )
    callback = WorkbenchCallback(**watch_kwargs)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    try:
        trainer.train()
    finally:
        callback.close()
    return callback


def _tiny_gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def test_a_nan_injected_in_a_gpt2_block_is_named_as_root_in_findings_and_report(tmp_path: Path) -> None:
    model = _tiny_gpt2()
    target = model.transformer.h[1].mlp.c_fc
    target.register_forward_hook(lambda m, a, out: out * float("nan"))  # the injected fault
    report = tmp_path / "hf.json"
    wb = _train(model, _token_rows(), tmp_path, every=1, report=report).watch
    assert wb is not None and wb.closed and [r.step for r in wb.history] == [0, 1, 2]
    roots = [f for f in wb.findings if f.kind == NAN_INF and f.step == 0]
    assert roots[0].module == "transformer.h.1.mlp.c_fc"
    assert wb.history[0].loss_source == "outputs.loss"
    data = json.loads(report.read_text())
    assert data["findings"][0]["module"] == "transformer.h.1.mlp.c_fc"
    assert data["summary"]["steps_done"] == 3
    assert hook_count(model) == 1  # only the test's own fault hook is left


def test_a_healthy_gpt2_trains_without_error_findings(tmp_path: Path) -> None:
    model = _tiny_gpt2()
    wb = _train(model, _token_rows(), tmp_path, every=2).watch
    assert [r.measured for r in wb.history] == [True, False, True]
    assert all(r.loss is not None and r.loss > 0 for r in wb.history)
    assert not [f for f in wb.findings if f.severity == "error"]
    assert hook_count(model) == 0


class DetachedHeadLM(nn.Module):
    """Loss inside the model, as Trainer expects; the body's output is detached before the head."""

    def __init__(self, vocab: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, vocab)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.head(self.body(self.embed(input_ids)).detach())
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return out


def test_a_detached_head_gives_no_gradient_to_the_layers_before_it(tmp_path: Path) -> None:
    model = DetachedHeadLM()
    wb = _train(model, _token_rows(), tmp_path, every=1).watch
    missing = {f.parameter for f in wb.findings if f.kind == NO_GRADIENT}
    assert missing == {"embed.weight", "body.weight", "body.bias"}


def test_a_break_ends_train_before_the_update_with_the_watch_closed(tmp_path: Path) -> None:
    import workbench

    model = _tiny_gpt2()
    model.transformer.h[0].attn.c_proj.register_forward_hook(lambda m, a, out: out * float("nan"))
    weights = model.lm_head.weight.detach().clone()
    report = tmp_path / "break.json"
    with pytest.raises(workbench.Break) as caught:
        _train(model, _token_rows(), tmp_path, every=1, break_on="nan_inf", report=report)
    assert caught.value.finding.module == "transformer.h.0.attn.c_proj"
    assert torch.equal(model.lm_head.weight.detach(), weights)
    assert json.loads(report.read_text())["summary"]["stopped_by"] == "breakpoint"
    assert hook_count(model) == 1  # only the test's own fault hook is left


@pytest.mark.parametrize("accumulate", [1, 2])
def test_with_gradient_accumulation_the_steps_loss_is_the_trainers(tmp_path: Path, accumulate: int) -> None:
    # GPT-2 takes loss kwargs: under accumulation the Trainer passes num_items_in_batch and each
    # micro-batch's outputs.loss is its share of the step's; the step's loss is what the Trainer logs.
    from workbench.integrations.transformers import WorkbenchCallback

    model = _tiny_gpt2()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3,
        gradient_accumulation_steps=accumulate,
    )
    callback = WorkbenchCallback(every=2)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_token_rows(), callbacks=[callback])
    try:
        trainer.train()
    finally:
        callback.close()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    wb = callback.watch
    assert wb is not None and len(wb.history) == 3 and len(logged) == 3
    assert [r.loss for r in wb.history] == pytest.approx(logged, rel=1e-3)
