"""Transformer-family numbers: attention FLOPs, nested tensors, distinct activation memory,
loss computed inside the model, tied weights, int8 on GPT-2, gradient noise in diff, and
tensors the instruments cannot reduce as they are (complex, sparse, float64, a PINN).

Local stand-ins for timm/torchvision shapes live in tests/transformer_shapes.py; Hugging
Face models are the real package, built from tiny configs (no downloads).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.bench import Plan, run_bench
from workbench.bench.divergence import compare_variants, past_threshold
from workbench.cli import main
from workbench.engine.probe import ActivationProbe
from workbench.engine.summary import summarize
from workbench.errors import UsageError
from workbench.scenario import Scenario, load, load_source

SHAPES = Path(__file__).resolve().parent / "transformer_shapes.py"
PLAN = Plan(warmup=1, steps=2)


def shape(name: str) -> str:
    return f"{SHAPES}:{name}"


def layers_of(summary) -> dict:  # noqa: ANN001
    return {layer.name: layer for layer in summary.layers}


# -- FLOPs -----------------------------------------------------------------------------


def test_sdpa_attention_flops_are_counted_on_cpu() -> None:
    s = summarize(load(shape("build_vit")))
    layers = layers_of(s)
    attn = layers["blocks.0.attn"]
    b, n, d, heads = 4, 16, 32, 4  # 16x16 image, 4x4 patches
    linears = layers["blocks.0.attn.qkv"].flops + layers["blocks.0.attn.proj"].flops
    assert linears == 2 * b * n * d * 3 * d + 2 * b * n * d * d
    # Q K^T and softmax(.) V: 2 * (2 * B*H * N*N * D/H), counted by engine.flops.
    assert attn.flops - linears == 4 * b * heads * n * n * (d // heads)
    assert s.forward_flops == sum(layer.flops for layer in s.layers if layer.is_leaf) + 2 * 4 * b * heads * n * n * 8


def test_gru_is_counted_and_the_footer_agrees() -> None:
    s = summarize(load(shape("build_tied")))
    gru = layers_of(s)["rnn"]
    assert gru.flops == 2 * 4 * 6 * (3 * 16 * 16 * 2) and gru.flops_counted and s.uncounted == ()  # W_ih, W_hh per token


# -- nested tensors --------------------------------------------------------------------


def test_summary_of_an_eval_encoder_with_a_padding_mask() -> None:
    s = summarize(load(shape("build_encoder")))
    layers = layers_of(s)
    linear1 = layers["enc.layers.0.linear1"]
    assert linear1.nested and linear1.output_shape == (8, 6, 32)
    # Only the real tokens are computed on the nested path: 4 sequences of 4 and 4 of 6.
    assert linear1.flops == 2 * (4 * 4 + 4 * 6) * 16 * 32
    mha = layers["enc.layers.0.self_attn"]
    assert mha.flops == 4 * 2 * 40 * 16 * 16 + 4 * 16 * (4 * 4 * 4 + 4 * 6 * 6)
    assert layers["head"].output_shape == (8, 3) and not layers["head"].nested


def test_the_probe_measures_nested_outputs_through_their_values() -> None:
    scenario = load(shape("build_encoder"))
    model = scenario.model.eval()
    probe = ActivationProbe(model)
    probe.attach()
    try:
        probe.begin_forward(measure=True)
        with torch.no_grad():
            model(*scenario.data[0][0])
        decoded = probe.decode_forward(probe.forward_tensor().tolist())
        probe.end_forward()
        call = next(c for c in probe.calls if c.name == "enc.layers.0.linear1")
    finally:
        probe.detach()
    assert call.measured and call.shape == (8, 6, 32) and call.numel == 40 * 32
    out = decoded[call.index].output
    assert out is not None and math.isfinite(out.min) and math.isfinite(out.max) and out.min < out.max


def test_diff_int8_runs_on_the_encoder() -> None:
    div = compare_variants(load_source(shape("build_encoder")), "fp32", "int8", batches=2)
    rows = {d.name: d for d in div.layers}
    assert rows["enc.layers.0.linear1"].rel_error == 0.0  # kept float, and the padding is left out
    assert rows["head"].rel_error > 0  # quantized
    assert any("zero-padded" in note for note in div.notes)


@pytest.mark.slow
def test_the_bench_int8_row_runs_on_the_encoder() -> None:
    row = run_bench(load_source(shape("build_encoder")), ["int8-dynamic"], plan=PLAN).get("int8-dynamic")
    assert row.ok, row.reason
    assert row.extras["quantized_layers"] == ["head (Linear→int8)"]
    assert any("enc.layers.0.linear1" in w and "fast path" in w for w in row.warnings)


# -- activation bytes ------------------------------------------------------------------


def test_activation_bytes_count_each_storage_once() -> None:
    s = summarize(load(shape("build_vit")))
    layers = layers_of(s)
    # nn.Identity and eval-mode Dropout return the memory they were given.
    assert layers["blocks.0.drop_path1"].storage_of == "blocks.0.ls1"
    assert layers["blocks.0.mlp.2"].storage_of == "blocks.0.mlp.1"
    assert layers["pos_drop"].storage_of == "patch_embed.proj"  # through a flatten/transpose view
    naive = sum(layer.activation_bytes for layer in s.layers if layer.is_leaf)
    assert s.activation_bytes < naive
    distinct = {layer.storage_of or layer.name for layer in s.layers if layer.activation_bytes}
    assert "blocks.0.drop_path1" not in distinct and "blocks.0.ls1" in distinct


def test_the_engine_counts_activation_storage_once() -> None:
    from workbench.engine import Engine

    with Engine(load(shape("build_vit"))) as eng:
        rec = eng.step_once()
    names = {m.name for m in rec.modules}
    leaves = [m for m in rec.modules if m.name and not any(n.startswith(m.name + ".") for n in names)]
    # Training mode: Dropout makes new tensors, but the drop-path Identities return their
    # input and patch_embed.norm (an Identity) returns a transposed view of the conv's output.
    shared = [m for m in leaves if "drop_path" in m.name or m.name == "patch_embed.norm"]
    assert len(shared) == 5
    assert rec.memory.activation_bytes == sum(m.bytes for m in leaves) - sum(m.bytes for m in shared)


# -- tied weights ----------------------------------------------------------------------


def test_a_tied_weight_is_counted_once_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    s = summarize(load(shape("build_tied")))
    decoder = layers_of(s)["decoder"]
    assert decoder.shared_params == ("embed.weight",) and decoder.params == 40  # its bias only
    assert sum(layer.params for layer in s.layers if layer.is_leaf) == s.total_params
    assert main(["summary", shape("build_tied")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "decoder shares embed.weight (tied weights)" in printed


def test_the_engine_module_tree_counts_a_tied_weight_once() -> None:
    from workbench.engine import Engine

    with Engine(load(shape("build_tied"))) as eng:
        tree = eng.module_tree
    assert tree["decoder"].total_params == tree["decoder"].own_params == 40
    assert tree["decoder"].shared_params == ("embed.weight",)
    assert sum(node.own_params for node in tree.values()) == tree[""].total_params == sum(
        p.numel() for p in eng.scenario.model.parameters())


# -- diff: gradient noise, public names --------------------------------------------------


def test_a_gradient_that_is_zero_in_truth_is_not_the_worst() -> None:
    div = compare_variants(load_source(shape("build_pool")), "fp32", "bf16", batches=2)
    grads = {d.name: d for d in div.grads}
    bias = grads["score.bias"]
    assert bias.floored and bias.raw_rel_error > 10  # noise over noise
    assert bias.rel_error < div.threshold and not past_threshold(bias, div.threshold)
    assert not any(d.floored for n, d in grads.items() if n != "score.bias")
    assert not div.diverged


# -- tensors the instruments cannot reduce as they are ----------------------------------------


def test_complex_weights_and_activations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", shape("build_complex"), "--steps", "2"]) == 0
    div = compare_variants(load_source(shape("build_complex")), "fp32", "bf16", batches=1)
    rows = {d.name: d for d in div.layers}
    assert rows["lin"].shape == (16, 8, 2)  # real and imaginary parts
    assert {d.name for d in div.grads} >= {"lin.weight", "lin.bias"}
    with pytest.raises(UsageError, match="complex weights"):
        compare_variants(load_source(shape("build_complex")), "fp32", "int8")


def test_sparse_gradients_in_diff() -> None:
    div = compare_variants(load_source(shape("build_sparse")), "fp32", "bf16", batches=1)
    emb = {d.name: d for d in div.grads}["0.weight"]
    assert emb.shape == (20, 8) and math.isfinite(emb.rel_error)


def test_float64_models_skip_the_int8_row_with_the_reason() -> None:
    source = load_source(shape("build_float64"))
    row = run_bench(source, ["int8-dynamic"], plan=PLAN).get("int8-dynamic")
    assert row.status == "skipped" and "float64" in row.reason
    with pytest.raises(UsageError, match="float64"):
        compare_variants(source, "fp32", "int8")


def test_a_pinn_forward_under_summary() -> None:
    s = summarize(load(shape("build_pinn")))
    assert s.forward_flops is None and "torch.autograd.grad" in s.notes[0]
    assert layers_of(s)["net.0"].output_shape == (32, 16)


# -- Hugging Face: loss inside the model, tied weights, Conv1D -----------------------------

# A tiny GPT-2 from a config (no download); each scenario below adds its data.
GPT2_MODEL = '''
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from workbench.scenario import Scenario

def build(device):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).to(device)
'''

# Contract v1: (inputs, targets) pairs, a forward that passes labels, the loss read off the output.
GPT2 = GPT2_MODEL + '''    ids = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(1))
    return Scenario(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                    loss_fn=lambda out, targets: out.loss,
                    forward=lambda m, inputs: m(input_ids=inputs[0], labels=inputs[0]),
                    data=[(ids, ids), (ids.flip(0), ids.flip(0))], name="tiny-gpt2")
'''


def _bert() -> Scenario:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=32, num_labels=3)
    model = BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(1)
    ids, y = torch.randint(0, 100, (4, 12), generator=g), torch.randint(0, 3, (4,), generator=g)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[0, 8:] = 0
    return Scenario(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                    loss_fn=lambda out, targets: out.loss,
                    forward=lambda m, inputs: m(input_ids=inputs[0], attention_mask=inputs[1], labels=inputs[2]),
                    data=[((ids, mask, y), y)], name="tiny-bert")


@pytest.mark.slow
def test_bert_attention_flops_and_the_logits_row() -> None:
    pytest.importorskip("transformers")
    s = summarize(_bert())
    layers = layers_of(s)
    self_attn = layers["bert.encoder.layer.0.attention.self"]
    projections = sum(layers[f"bert.encoder.layer.0.attention.self.{p}"].flops for p in ("query", "key", "value"))
    assert self_attn.flops - projections == 4 * 4 * 12 * 12 * 32  # B * L * L * hidden, twice two matmuls
    assert layers[""].output_shape == (4, 3) and "loss" in s.loss_field and s.shown_field == "logits"


@pytest.mark.slow
def test_gpt2_loss_inside_tied_head_and_int8(write_scenario, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    pytest.importorskip("transformers")
    path = write_scenario(GPT2, "gpt2.py")
    s = summarize(load(path))
    layers = layers_of(s)
    assert layers[""].output_shape == (4, 12, 100)  # the logits, not the loss scalar
    assert "loss" in s.loss_field and {f.name for f in s.output_fields} == {"loss", "logits"}
    assert layers["lm_head"].shared_params == ("transformer.wte.weight",) and layers["lm_head"].params == 0
    assert sum(layer.params for layer in s.layers if layer.is_leaf) == s.total_params
    assert main(["summary", str(path)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "the model computes its own loss: outputs" in printed and "shows outputs.logits" in printed
    assert "lm_head shares transformer.wte.weight" in printed

    row = run_bench(load_source(str(path)), ["int8-dynamic"], plan=PLAN).get("int8-dynamic")
    assert row.ok, row.reason
    e = row.extras
    assert e["compared"] == "logits" and e["argmax_agreement"] is not None  # scored on the logits
    # GPT-2's matmuls are transformers Conv1D, not nn.Linear: quantized as the Linear they are.
    assert "transformer.h.0.attn.c_attn (Conv1D→Linear→int8)" in e["quantized_layers"]
    assert "lm_head (Linear→int8)" in e["quantized_layers"] and len(e["quantized_layers"]) == 9
    assert any("8 transformers Conv1D layer(s)" in w for w in row.warnings)
    assert any("tied weights split: lm_head ↔ transformer.wte.weight" in w for w in row.warnings)
    assert any("LayerNorm" in r for r in e["float_reasons"])  # the rest stays float, each with its reason

    div = compare_variants(load_source(str(path)), "fp32", "int8", batches=1)
    rows = {d.name: d for d in div.layers}
    assert rows["(model)"].shape == (4, 12, 100) and rows["transformer.h.0.attn.c_attn"].rel_error > 0
    assert any("computes its own loss" in note and "outputs.logits" in note for note in div.notes)


def test_module_outputs_are_read_by_their_prediction_not_their_loss() -> None:
    from workbench.engine.probe import first_float_tensor

    logits, loss = torch.randn(2, 3), torch.tensor(1.0)
    assert first_float_tensor({"loss": loss, "logits": logits, "ids": torch.tensor([1, 2])}) is logits
    assert first_float_tensor({"loss": loss, "hidden": {"h": logits}}) is logits  # nested one level deeper
    assert first_float_tensor((nn.Identity()(logits), loss)) is logits
    assert first_float_tensor(torch.zeros(2, dtype=torch.complex64)) is not None  # read as |z|


# -- contract v2: dict batches, the loss inside the model -----------------------------------

# Contract v2: dict batches, loss_fn=None (the loss is outputs.loss).
GPT2_V2 = GPT2_MODEL + '''    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        ids = torch.randint(0, 100, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 9:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids})
    return Scenario(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), loss_fn=None,
                    data=batches, name="tiny-gpt2-v2")
'''


@pytest.mark.slow
def test_gpt2_with_dict_batches_and_its_own_loss(write_scenario, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    pytest.importorskip("transformers")
    path = write_scenario(GPT2_V2, "gpt2_v2.py")
    s = summarize(load(path))
    layers = layers_of(s)
    assert layers[""].output_shape == (4, 12, 100) and s.shown_field == "logits" and "loss" in s.loss_field
    assert layers["lm_head"].shared_params == ("transformer.wte.weight",)
    attn = layers["transformer.h.0.attn"]
    inner = layers["transformer.h.0.attn.c_attn"].flops + layers["transformer.h.0.attn.c_proj"].flops
    assert attn.flops - inner == 4 * 4 * 12 * 12 * 32  # GPT-2's SDPA on CPU, counted

    row = run_bench(load_source(str(path)), ["int8-dynamic"], plan=PLAN).get("int8-dynamic")
    assert row.ok, row.reason
    assert row.extras["compared"] == "logits"

    div = compare_variants(load_source(str(path)), "fp32", "bf16", batches=1)
    assert {d.name: d for d in div.layers}["(model)"].shape == (4, 12, 100)
    assert any("computes its own loss" in note for note in div.notes)
    assert not any(past_threshold(d, div.threshold) and d.floored for d in div.grads)


@pytest.mark.slow
def test_hf_conv1d_becomes_the_linear_it_is() -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    from workbench.bench.variants.quantize import conv1d_as_linear

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(6, 4), nn.ReLU(), Conv1D(3, 6))
    x = torch.randn(5, 4)
    expected = model(x)
    assert conv1d_as_linear(model) == ["0", "2"]
    assert type(model[0]) is nn.Linear and model[0].weight.shape == (6, 4)
    torch.testing.assert_close(model(x), expected)
