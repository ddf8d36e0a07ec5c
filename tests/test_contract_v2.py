"""Contract v2: batch structures, the model call, the loss, and one step vocabulary for every command."""

from __future__ import annotations

import dataclasses
import math
from collections import namedtuple

import pytest
import torch
from torch import nn

from workbench import Scenario
from workbench.bench.steps import accumulated_gradients, mean_loss, train_step_fn
from workbench.engine import Engine, EngineConfig
from workbench.scenario import (
    MAPPING,
    PAIR,
    TREE,
    Batch,
    ScenarioError,
    instrumented,
    output_tensors,
    prediction_tensor,
    split_batch,
)


class DictLM(nn.Module):
    """A tiny LM called model(input_ids=..., labels=...) that returns {"loss", "logits"}."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.head(self.emb(input_ids))
        out = {"logits": logits}
        if labels is not None:
            out = {"loss": nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()), **out}
        return out


def dict_batches(n: int = 3, batch: int = 4, seq: int = 6) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 11, (batch, seq), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.roll(-1, 1)})
    return out


def dict_scenario(**changes) -> Scenario:
    torch.manual_seed(0)
    model = DictLM()
    fields = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=None,
                  data=dict_batches())
    fields.update(changes)
    return Scenario(**fields)


# -- batches -----------------------------------------------------------------------------


def test_batch_styles_and_sizes() -> None:
    pair = split_batch((torch.zeros(5, 3), torch.zeros(5)))
    assert pair.style == PAIR and pair.size == 5 and pair.model_args() == ((pair.inputs[0],), {})
    mapping = split_batch({"input_ids": torch.zeros(4, 7, dtype=torch.long), "note": "kept"})
    assert mapping.style == MAPPING and mapping.size == 4
    args, kwargs = mapping.model_args()
    assert args == () and set(kwargs) == {"input_ids", "note"} and kwargs["note"] == "kept"
    keyword_pair = split_batch(({"x": torch.zeros(2, 3)}, torch.zeros(2)))
    assert keyword_pair.style == PAIR and keyword_pair.model_args()[1].keys() == {"x"}
    with pytest.raises(ScenarioError, match="forward=lambda model, batch"):
        split_batch((torch.zeros(2), torch.zeros(2), torch.zeros(2)))
    tree = split_batch((torch.zeros(2), torch.zeros(2), torch.zeros(2)), free_form=True)
    assert tree.style == TREE and tree.loss_arg is tree.data


@dataclasses.dataclass
class Frame:
    image: torch.Tensor
    label: torch.Tensor
    meta: str = "m"


def test_to_moves_every_tensor_and_keeps_structure_and_leaves() -> None:
    Pt = namedtuple("Pt", "a b")
    item = {"frame": Frame(torch.zeros(2, 3), torch.ones(2)), "pts": [Pt(torch.zeros(2), 3)], "name": "x"}
    b = split_batch(item).to("cpu")
    assert isinstance(b.data["frame"], Frame) and b.data["frame"].meta == "m"
    assert isinstance(b.data["pts"][0], Pt) and b.data["pts"][0].b == 3 and b.data["name"] == "x"
    assert len(b.tensors()) == 3


def test_split_along_batch_dim_leaves_other_tensors_whole() -> None:
    seq_major = torch.arange(35.0).reshape(7, 5)  # (time, batch)
    mask = torch.ones(7, 7)  # a causal mask: no batch dimension of size 5
    b = split_batch(((seq_major, mask), seq_major), batch_dim=1)
    assert b.size == 5
    parts = b.split(2)
    assert [p.size for p in parts] == [3, 2]
    assert parts[1].inputs[0].shape == (7, 2) and parts[1].inputs[1].shape == (7, 7)
    assert torch.equal(torch.cat([p.targets for p in parts], 1), seq_major)
    with pytest.raises(ScenarioError, match="cannot be split into 8"):
        b.split(8)


def test_a_time_major_batchs_per_sample_vectors_are_cut_along_their_first_dimension() -> None:
    """(T, B) tokens with (B,) targets and (B,) lengths: the vectors have no dim 1, so they went whole
    into every micro-batch (accum-2 and ddp-2 failed with 'input batch_size (8) to match target (16)')."""
    tokens = torch.arange(35).reshape(7, 5)
    lengths, targets = torch.tensor([7, 6, 5, 4, 3]), torch.tensor([0, 1, 0, 1, 1])
    steps = torch.arange(7.0)  # per time step, not per sample: whole
    b = split_batch(((tokens, lengths, steps), targets), batch_dim=1)
    parts = b.split(2)
    assert [p.targets.tolist() for p in parts] == [[0, 1, 0], [1, 1]]
    assert [p.inputs[1].tolist() for p in parts] == [[7, 6, 5], [4, 3]]
    assert [p.inputs[0].shape for p in parts] == [(7, 3), (7, 2)] and all(p.inputs[2] is steps for p in parts)


def _mask_scenario(**fields) -> Scenario:
    m = nn.Linear(4, 4)
    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), loss_fn=nn.MSELoss(),
                    data=[], **fields)


def test_whole_inputs_keep_a_mask_as_long_as_the_batch_whole() -> None:
    # Time-major tokens (seq 8, batch 8) and their (8, 8) causal mask: by its length alone the
    # mask looks batched, so it was cut in half with the tokens.
    tokens, mask = torch.zeros(8, 8, dtype=torch.long), torch.ones(8, 8)
    item = ((tokens, mask), tokens)
    cut = _mask_scenario(batch_dim=1).make_batch(item).split(2)
    assert cut[0].inputs[1].shape == (8, 4)
    parts = _mask_scenario(batch_dim=1, whole_inputs=(1,)).make_batch(item).split(2)
    assert [p.inputs[0].shape for p in parts] == [(8, 4), (8, 4)]
    assert all(p.inputs[1] is mask for p in parts)
    # A dict batch names it by key.
    d = {"input_ids": torch.zeros(8, 8, dtype=torch.long), "mask": torch.ones(8, 8)}
    halves = _mask_scenario(whole_inputs=("mask",)).make_batch(d).split(2)
    assert [h.data["input_ids"].shape for h in halves] == [(4, 8), (4, 8)] and halves[1].data["mask"].shape == (8, 8)


def test_whole_inputs_must_name_positions_or_keys() -> None:
    with pytest.raises(ScenarioError, match="whole_inputs must be a tuple"):
        _mask_scenario(whole_inputs=[1])
    with pytest.raises(ScenarioError, match="whole_inputs must be a tuple"):
        _mask_scenario(whole_inputs=(-1,))


def test_hf_batch_encoding_stays_one() -> None:
    transformers = pytest.importorskip("transformers")
    enc = transformers.BatchEncoding({"input_ids": torch.zeros(2, 3, dtype=torch.long)})
    b = split_batch(enc).to("cpu")
    assert isinstance(b.data, transformers.BatchEncoding) and b.style == MAPPING


# -- the model call and the loss -----------------------------------------------------------


def test_loss_inside_the_model_and_its_source() -> None:
    s = dict_scenario()
    batch = s.make_batch(s.data[0])
    out = s.call_model(batch)
    value = s.compute_loss(out, batch)
    assert value.source == 'outputs["loss"]' and value.inside_model and value.total.dim() == 0
    assert prediction_tensor(out) is out["logits"]
    assert list(output_tensors(out)) == ["loss", "logits"]


def test_loss_none_without_loss_names_the_file_and_what_to_do() -> None:
    s = dict_scenario(data=[{k: v for k, v in b.items() if k != "labels"} for b in dict_batches()])
    batch = s.make_batch(s.data[0])
    with pytest.raises(ScenarioError, match=r"loss_fn=None.*tensor fields logits.*labels="):
        s.compute_loss(s.call_model(batch), batch)


def test_loss_parts_sum_and_validation() -> None:
    s = dict_scenario(loss_fn=lambda out, batch: {"ce": out["loss"], "l2": out["logits"].pow(2).mean()})
    batch = s.make_batch(s.data[0])
    out = s.call_model(batch)
    value = s.compute_loss(out, batch)
    assert set(value.parts) == {"ce", "l2"}
    assert torch.allclose(value.total, value.parts["ce"] + value.parts["l2"])
    bad = dict_scenario(loss_fn=lambda out, batch: {"ce": out["logits"]})
    with pytest.raises(ScenarioError, match="part 'ce' returned a tensor of shape"):
        bad.compute_loss(out, batch)


def test_instrumented_restores_modes_rng_and_hooks_even_on_error() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a mixed state must come back exactly
    rng = torch.get_rng_state()
    with pytest.raises(RuntimeError):
        with instrumented(model, train=False, grad=False) as hooks:
            hooks.forward_hook(model[0], lambda *a: None)
            torch.rand(3)
            assert not model.training and not torch.is_grad_enabled()
            raise RuntimeError("boom")
    assert model.training and not model[1].training
    assert not model[0]._forward_hooks and torch.equal(torch.get_rng_state(), rng)


# -- through the engine and the bench -------------------------------------------------------


def test_engine_runs_dict_batches_with_the_loss_inside_the_model() -> None:
    with Engine(dict_scenario(), EngineConfig(stats_every=1)) as eng:
        records = [eng.step_once() for _ in range(4)]
    assert all(r.loss is not None and math.isfinite(r.loss) for r in records)
    assert records[0].loss_source == 'outputs["loss"]' and records[0].batch_size == 4
    assert records[-1].loss < records[0].loss + 1.0
    assert records[0].modules  # the probe saw the model's layers


def test_engine_records_loss_parts_and_traces_a_nan_to_its_part() -> None:
    def loss_fn(out, batch):
        aux = out["logits"].mean() * 0.0
        if batch["input_ids"].sum() >= 0:  # always: poison the aux part
            aux = aux + torch.log(torch.zeros(()))  # -inf
        return {"ce": out["loss"], "aux": aux}

    with Engine(dict_scenario(loss_fn=loss_fn)) as eng:
        eng.advance()
        eng.advance()  # the loss phase
        rec = eng.current
    nan = [f for f in rec.findings if f.kind == "nan_inf"]
    assert nan and "'aux'" in nan[0].message and "'ce' finite" in nan[0].message


def test_bench_steps_train_dict_batches_and_accumulate_like_the_full_batch() -> None:
    s = dict_scenario()
    batches = [s.make_batch(b) for b in s.data]
    before = mean_loss(s, batches)
    step = train_step_fn(s, batches)
    for i in range(6):
        step(i)
    assert mean_loss(s, batches) < before
    full = dict_scenario()
    b = full.make_batch(full.data[0])
    full.optimizer.zero_grad()
    full.loss(full.call_model(b), b).backward()
    reference = [p.grad.clone() for p in full.model.parameters()]
    # The per-token mean over the whole batch equals the sample-weighted mean of the halves.
    grads = accumulated_gradients(dict_scenario(), b, 2)
    assert all(torch.allclose(g, r, atol=1e-6) for g, r in zip(grads, reference))


def test_v1_calls_still_work() -> None:
    model = nn.Linear(3, 2)
    s = Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=nn.MSELoss(),
                 data=[(torch.zeros(4, 3), torch.zeros(4, 2))])
    b = split_batch(s.data[0])
    out = s.call_model(b.inputs)  # contract v1: a tuple of inputs
    assert out.shape == (4, 2) and s.loss_fn(out, b.targets).dim() == 0
    assert isinstance(s.compute_loss(out, b.targets).total, torch.Tensor)
    assert isinstance(b, Batch) and b.size == 4
