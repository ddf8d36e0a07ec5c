"""workbench diff: two variants layer by layer on identical batches, and where they part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import SCENARIOS
from workbench.bench import divergence
from workbench.bench.divergence import compare_variants
from workbench.cli import main
from workbench.errors import UsageError
from workbench.scenario import load_source

# fp16 overflows past 65504: `Amplify` multiplies by 1e5 what a Linear produced in fp16
# under autocast, so B has Inf right there, while the Linear before it is close.
OVERFLOW = '''
import torch
from torch import nn
from workbench.scenario import Scenario

class Amplify(nn.Module):
    def forward(self, x):
        return x * 1e5

def build(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), Amplify(), nn.Linear(16, 2)).to(device)
    x, y = torch.randn(32, 8), torch.randn(32, 2)
    return Scenario(model=model, data=[(x[:16], y[:16]), (x[16:], y[16:])], loss_fn=nn.MSELoss(),
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
'''

# A loss weighted by 1e-3 through four Tanh layers: its gradients fall below fp16's smallest
# values in an unscaled half-precision backward, which fp16 training (with a GradScaler) avoids.
TINY_LOSS = '''
import torch
from torch import nn
from workbench.scenario import Scenario

def build(device):
    torch.manual_seed(0)
    layers = [m for _ in range(4) for m in (nn.Linear(256, 256), nn.Tanh())]
    model = nn.Sequential(*layers, nn.Linear(256, 10)).to(device)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 256, generator=g), torch.randint(0, 10, (256,), generator=g)
    return Scenario(model=model, data=[(x, y)], optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=lambda out, t: 1e-3 * nn.functional.cross_entropy(out, t))
'''


def test_bf16_stays_close_and_the_layers_come_in_execution_order() -> None:
    div = compare_variants(load_source(str(SCENARIOS / "mlp_digits.py")), "fp32", "bf16", batches=2)
    assert [d.name for d in div.layers] == ["fc1", "act", "fc2", "(model)"]
    assert [d.kind for d in div.layers] == ["Linear", "ReLU", "Linear", "MLP"]
    assert div.layers[0].shape == (64, 128) and div.batches == 2
    for d in div.layers:
        assert 0 < d.rel_error < 0.02 and d.cosine > 0.999 and d.non_finite_b == 0
    assert {d.name for d in div.grads} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert div.loss_a == pytest.approx(div.loss_b, rel=0.01)


def test_int8_compares_the_forward_only() -> None:
    div = compare_variants(load_source(str(SCENARIOS / "regression_mse.py")), "fp32", "int8", batches=1)
    assert div.grads == ()  # int8 is inference: no backward on either side
    tanh = [d for d in div.layers if d.kind == "Tanh"]
    assert tanh and all(0 < d.rel_error < 0.1 for d in tanh)  # the quantized Linear before each differs


def test_the_first_module_past_the_threshold_is_named(write_scenario) -> None:  # noqa: ANN001
    path = write_scenario(OVERFLOW, "overflow.py")
    div = compare_variants(load_source(str(path)), "fp32", "fp16", batches=2)
    first = div.first_over
    assert first is not None and first.name == "1" and first.kind == "Amplify"
    assert first.non_finite_b > 0
    assert div.layers[0].name == "0" and div.layers[0].rel_error < 0.01  # its input was still close
    assert div.diverged


def test_bad_requests_are_refused_before_any_work() -> None:
    source = load_source(str(SCENARIOS / "mlp_digits.py"))
    with pytest.raises(UsageError, match="two different variants"):
        compare_variants(source, "fp32", "fp32")
    with pytest.raises(UsageError, match="unknown variant 'fp8'"):
        compare_variants(source, "fp32", "fp8")
    with pytest.raises(UsageError, match="--batches must be >= 1"):
        compare_variants(source, "fp32", "bf16", batches=0)
    if torch.cuda.is_available():
        with pytest.raises(UsageError, match="int8 .* runs on CPU only"):
            compare_variants(source, "fp32", "int8", device="cuda")


def test_cli_exit_codes_and_json(tmp_path: Path, write_scenario, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    path = write_scenario(OVERFLOW, "overflow.py")
    out = tmp_path / "diff.json"
    assert main(["diff", str(path), "--b", "fp16", "--json", str(out)]) == 1
    printed = " ".join(capsys.readouterr().out.split())
    assert "the variants part at '1' (Amplify)" in printed and "non-finite values in B" in printed
    data = json.loads(out.read_text())
    assert data["a"] == "fp32" and data["b"] == "fp16" and [d["name"] for d in data["layers"]][:2] == ["0", "1"]
    assert main(["diff", str(SCENARIOS / "mlp_digits.py"), "--b", "bf16", "--threshold", "0.5"]) == 0
    assert "agrees with fp32 within 0.5 at every layer and every gradient" in " ".join(
        capsys.readouterr().out.split())
    assert main(["diff", str(SCENARIOS / "mlp_digits.py"), "--b", "fp32"]) == 2
    assert "two different variants" in capsys.readouterr().err


INPLACE = '''
import torch
from torch import nn
from workbench.scenario import Scenario

def build(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 2)).to(device)
    x, y = torch.randn(32, 8), torch.randn(32, 2)
    return Scenario(model=model, data=[(x, y)], loss_fn=nn.MSELoss(),
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
'''


def test_an_in_place_op_does_not_rewrite_what_the_module_before_it_produced(write_scenario) -> None:  # noqa: ANN001
    from workbench.bench.divergence import _capture

    path = write_scenario(INPLACE, "inplace.py")
    scenario = load_source(str(path)).build("cpu")
    with _capture(scenario.model) as seen, torch.no_grad():
        scenario.model(scenario.data[0][0])
    assert (seen["0"].output < 0).any()  # the Linear's own output, not the ReLU's that overwrote it
    assert (seen["1"].output >= 0).all()
    div = compare_variants(load_source(str(path)), "fp32", "bf16", batches=1)
    assert [d.name for d in div.layers] == ["0", "1", "2", "(model)"]


def test_int8_rows_are_matched_by_name_and_the_json_says_the_verdict(tmp_path: Path) -> None:
    div = compare_variants(load_source(str(SCENARIOS / "mlp_digits.py")), "fp32", "int8", batches=1)
    rows = {d.name: d for d in div.layers}
    assert {"fc1", "fc2"} <= rows.keys()  # the quantized Linears carry the float model's names
    assert rows["fc1"].rel_error > 0 and rows["fc1"].cosine > 0.99
    data = div.to_json()
    assert data["diverged"] == div.diverged and data["first_over"] == (div.first_over.name if div.first_over
                                                                       else None)


def test_diff_command_names_match_the_divergence_module() -> None:
    """`workbench diff` spells its choices out (importing divergence loads torch at --help)."""
    from workbench.bench import divergence
    from workbench.commands import diff

    assert diff.VARIANTS == divergence.diff_variants()
    assert diff.DEFAULT_THRESHOLD == divergence.DEFAULT_THRESHOLD


def test_diff_uses_the_bench_variants_own_numerics(tmp_path: Path) -> None:
    """One vocabulary: a diff name is a bench variant (or a short name for one), and its
    autocast dtype comes from the variant's own rule; a variant without numerics is refused."""
    from workbench.bench import divergence, variants
    from workbench.errors import UsageError
    from workbench.scenario import load

    scenario = load(SCENARIOS / "mlp_digits.py")
    for name, dtype in (("amp", torch.bfloat16), ("amp-bf16", torch.bfloat16), ("bf16", torch.bfloat16),
                        ("amp-fp16", torch.float16), ("fp16", torch.float16), ("fp32", None)):
        side = divergence._side(name, scenario)
        assert (side.autocast, side.trains) == (dtype, True), name
    assert variants.variant("amp").numerics(scenario).autocast is torch.bfloat16  # CPU: amp is bf16
    int8 = divergence._side("int8-dynamic", scenario)
    assert not int8.trains and int8.model is not scenario.model
    with pytest.raises(UsageError, match="expected one of fp32, amp"):
        divergence._side("accum-2", scenario)  # batching, not numerics
    assert main(["diff", str(SCENARIOS / "mlp_digits.py"), "--b", "channels-last"]) == 2


def test_the_fp16_side_scales_its_loss_as_fp16_training_does(write_scenario) -> None:  # noqa: ANN001
    # Unscaled, the first layer's weight gradient read a relative error of about 1.1 (most of it
    # flushed to zero); with GradScaler's 2^16 it is fp16 rounding, under 1%.
    div = compare_variants(load_source(str(write_scenario(TINY_LOSS, "tiny_loss.py"))), "fp32", "fp16", batches=1)
    grads = {d.name: d for d in div.grads}
    assert set(grads) == {f"{i}.{k}" for i in (0, 2, 4, 6, 8) for k in ("weight", "bias")}
    assert all(d.rel_error < 0.01 and d.non_finite_b == 0 for d in grads.values()), {
        n: d.rel_error for n, d in grads.items()}


def test_on_cuda_a_tf32_setting_that_governs_the_model_is_named_and_left_as_it_is() -> None:
    # Only flags are read, so this runs without a GPU; cuDNN convolutions default to TF32.
    cuda = torch.device("cuda")
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    assert divergence.tf32_settings(conv, cuda) == ("torch.backends.cudnn.conv",)
    assert divergence.tf32_settings(mlp, cuda) == ()  # a Linear runs no cuDNN convolution
    assert divergence.tf32_settings(conv, torch.device("cpu")) == ()
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # as a build() may do
    try:
        assert divergence.tf32_settings(mlp, cuda) == ("torch.backends.cuda.matmul",)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # read, not changed
    finally:
        torch.backends.cuda.matmul.fp32_precision = "none"
    assert torch.get_float32_matmul_precision() == "highest"


def test_no_tf32_note_on_the_cpu() -> None:
    result = compare_variants(load_source(SCENARIOS / "cnn_image.py"), "fp32", "bf16", batches=1)
    assert not any("TF32" in note for note in result.notes)


NO_BF16_KERNEL = '''
import torch
from torch import nn
from workbench.scenario import Scenario

class Fussy(nn.Module):
    """Stands for an operation this build has no bf16 kernel for (a CPU LSTM under bf16 autocast)."""
    def forward(self, x):
        if x.dtype == torch.bfloat16:
            raise RuntimeError("could not create a primitive descriptor for this op.")
        return x

def build(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), Fussy()).to(device)
    x, y = torch.randn(16, 8), torch.randn(16, 4)
    return Scenario(model=model, data=[(x, y)], loss_fn=nn.MSELoss(),
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
'''


def test_a_variant_this_device_cannot_run_is_named_and_the_advice_fits(write_scenario, capsys) -> None:  # noqa: ANN001
    path = write_scenario(NO_BF16_KERNEL, "fussy.py")
    assert main(["diff", str(path), "--b", "bf16"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the bf16 side of fp32 vs bf16 raised RuntimeError: could not create a primitive descriptor" in err
    assert "The fp32 side ran the same batch, so it is bf16 itself that fails here" in err
    assert "workbench run" not in err and ".." not in err


FLOAT64_DEFAULT = '''
import torch
from torch import nn
from workbench.scenario import Scenario

def build(device):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)  # the user's global setting: the model is float64
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).to(device)
    return Scenario(model=model, data=[(torch.randn(8, 4), torch.randint(0, 2, (8,)))],
                    loss_fn=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
'''


def test_fp16_against_a_float64_model_runs_and_says_autocast_left_it_float64(write_scenario) -> None:  # noqa: ANN001
    path = write_scenario(FLOAT64_DEFAULT, "wide.py")
    try:
        div = compare_variants(load_source(str(path)), "fp32", "fp16")
    finally:
        torch.set_default_dtype(torch.float32)
    assert any("the fp16 side computed in float64 too" in n for n in div.notes)


UNSEEDED_F64 = """
import torch
from torch import nn
from workbench import Scenario

def build(device):
    # No torch.manual_seed anywhere: the weights come from whatever state the generator is in.
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double().to(device)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))
            for _ in range(2)]
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    loss_fn=nn.CrossEntropyLoss(), data=data)
"""


def test_a_build_that_does_not_seed_gives_both_sides_the_same_weights(tmp_path) -> None:
    """Autocast leaves float64 as it is: amp and fp32 must agree exactly. They read 'rel error 1.48 at
    the first layer' when the second build drew other initial weights from the moved generator."""
    from workbench.bench.divergence import compare_variants
    from workbench.scenario import load_source

    path = tmp_path / "unseeded.py"
    path.write_text(UNSEEDED_F64)
    torch.randn(1000)  # wherever the generator happens to be
    div = compare_variants(load_source(str(path)), "fp32", "amp")
    assert not div.diverged and div.loss_a == div.loss_b
