"""`workbench summary`: per-layer shapes, parameters and FLOPs; the model is left untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import SCENARIOS
from workbench.cli import main


def flat(text: str) -> str:
    """Rich wraps at 80 columns under pytest: compare with whitespace collapsed."""
    return " ".join(text.split())
from workbench.engine.summary import summarize
from workbench.scenario import load


def test_cnn_summary_numbers() -> None:
    s = load(SCENARIOS / "cnn_image.py")
    summary = summarize(s)
    layers = {layer.name: layer for layer in summary.layers}
    conv1 = layers["features.0"]
    assert conv1.output_shape == (64, 64, 30, 30) and conv1.params == 64 * 3 * 9 + 64
    # 2 FLOPs per multiply-add: N * C_out * H_out * W_out * C_in * k * k
    assert conv1.flops == 2 * 64 * 64 * 30 * 30 * 3 * 3 * 3
    assert layers["classifier.1"].flops == 2 * 64 * 4608 * 10
    assert layers[""].params == summary.total_params == s.num_parameters()
    assert summary.forward_flops == sum(layer.flops for layer in summary.layers if layer.is_leaf)
    assert conv1.activation_bytes == 64 * 64 * 30 * 30 * 4
    assert [layer.name for layer in summary.layers][:3] == ["", "features", "features.0"]


def test_a_module_called_twice_counts_both_outputs_in_its_row(tmp_path: Path) -> None:
    """One MaxPool used twice: its row showed the last call's bytes only, so the rows no longer
    added up to the total (128 KB of the first call's output were in no row)."""
    from workbench.scenario import load_source

    path = tmp_path / "twice.py"
    path.write_text(
        "import torch\nfrom torch import nn\nfrom workbench import Scenario\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv1, self.conv2, self.pool = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1), nn.MaxPool2d(2)\n"
        "        self.head = nn.Linear(8 * 4 * 4, 2)\n"
        "    def forward(self, x):\n"
        "        x = self.pool(self.conv1(x))\n"
        "        x = self.pool(self.conv2(x))\n"
        "        return self.head(x.flatten(1))\n"
        "def build(device):\n"
        "    m = Net()\n"
        "    return Scenario(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), loss_fn=nn.CrossEntropyLoss(),\n"
        "                    data=[(torch.randn(2, 1, 16, 16), torch.tensor([0, 1]))])\n")
    summary = summarize(load_source(str(path)).build("cpu"))
    pool = next(layer for layer in summary.layers if layer.name == "pool")
    assert pool.calls == 2 and pool.output_shape == (2, 8, 4, 4)  # the shape is the last call's
    assert pool.activation_bytes == (2 * 4 * 8 * 8 + 2 * 8 * 4 * 4) * 4


def test_summary_leaves_the_model_as_it_was() -> None:
    s = load(SCENARIOS / "cnn_image.py:build_batchnorm")
    bn = s.model.features[1]
    before = bn.running_mean.clone()
    rng = torch.get_rng_state()
    summarize(s)
    assert torch.equal(bn.running_mean, before) and s.model.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_lstm_flops_are_counted_and_a_kernel_without_formula_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.engine.summary as summary_module

    summary = summarize(load(SCENARIOS / "lstm_text.py"))
    lstm = {layer.name: layer for layer in summary.layers}["lstm"]
    # Every token through the input and hidden matmuls: 2 * (64*24) * (4*64*32 + 4*64*64).
    assert lstm.flops == 2 * 64 * 24 * (4 * 64 * 32 + 4 * 64 * 64) and summary.uncounted == ()
    # Without a formula for the kernel the LSTM ran (as cuDNN's RNN on CUDA): "not counted".
    monkeypatch.setattr(summary_module, "EXTRA_FORMULAS", {
        k: v for k, v in summary_module.EXTRA_FORMULAS.items() if "mkldnn_rnn" not in str(k)})
    assert summarize(load(SCENARIOS / "lstm_text.py")).uncounted == ("lstm",)


def test_summary_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s.json"
    assert main(["summary", str(SCENARIOS / "resnet_tiny.py"), "--json", str(out)]) == 0
    text = flat(capsys.readouterr().out)
    assert "conv1 (Conv2d)" in text and "total params" in text and "19,862" in text
    data = json.loads(out.read_text())
    assert data["total_params"] == 19862 and data["layers"][0]["name"] == ""
    assert main(["summary", str(SCENARIOS / "resnet_tiny.py"), "--depth", "1"]) == 0
    assert "conv1 (Conv2d)" not in flat(capsys.readouterr().out)
