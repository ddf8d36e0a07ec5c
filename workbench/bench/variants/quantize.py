"""int8 dynamic quantization: inference latency, size, error and agreement vs fp32."""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.bench.context import BenchContext
from workbench.bench.memory import track_peak
from workbench.bench.results import Hardware, VariantResult
from workbench.bench.steps import call, first_tensor, inference_fn
from workbench.bench.timing import measure
from workbench.bench.variants.base import Variant
from workbench.scenario import Scenario

# What quantize_dynamic converts with its default configuration.
QUANTIZABLE: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell,
)
API = "torch.ao.quantization.quantize_dynamic (deprecated upstream for torchao; its warning is silenced)"


def state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def quantize(model: nn.Module) -> nn.Module:
    """An int8 inference copy of ``model``; the original is untouched."""
    float_copy = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        # quantize_dynamic (and importing its modules, which use torch.jit.script_method)
        # warns that it moves to torchao; the row names the API instead.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        import torch.ao.quantization

        return torch.ao.quantization.quantize_dynamic(float_copy, set(QUANTIZABLE), dtype=torch.qint8)


def layer_report(float_model: nn.Module, quantized: nn.Module) -> tuple[list[str], list[str]]:
    """(quantized layers, layers left in float that hold weights) as 'name (Type)'."""
    done, left = [], []
    float_modules = dict(float_model.named_modules())
    for name, module in quantized.named_modules():
        if not name:
            continue
        if name not in float_modules:
            continue  # helpers the conversion added, such as fc._packed_params
        if ".quantized." in type(module).__module__:
            done.append(f"{name} ({type(float_modules[name]).__name__}→int8)")
        elif any(True for _ in module.parameters(recurse=False)):
            left.append(f"{name} ({type(module).__name__})")
    return done, left


@dataclass(frozen=True)
class DynamicInt8(Variant):
    name: str = "int8-dynamic"
    description: str = "dynamic int8 quantization (Linear/LSTM/GRU), inference vs fp32 inference"

    def applicable(self, scenario: Scenario, hardware: Hardware) -> str | None:
        if scenario.device.type != "cpu":
            return "quantized int8 kernels (fbgemm/qnnpack) run on CPU only; use --device cpu"
        if "fbgemm" not in torch.backends.quantized.supported_engines and \
                "qnnpack" not in torch.backends.quantized.supported_engines:
            return "this torch build has no quantized engine (fbgemm/qnnpack)"
        if not any(isinstance(m, QUANTIZABLE) for m in scenario.model.modules()):
            return "no Linear/LSTM/GRU layers to quantize"
        return None

    def batch_note(self, ctx: BenchContext) -> str:
        return f"inference batch size {ctx.eval_batches[0].size}"

    def run(self, ctx: BenchContext) -> VariantResult:
        scenario = ctx.build()
        model = scenario.model.eval()
        batches = [b.to(ctx.device) for b in ctx.eval_batches]
        with track_peak(ctx.device) as peak:
            int8 = quantize(model)
            reference = measure(inference_fn(scenario, model, batches), ctx.plan, ctx.device,
                                samples_per_step=batches[0].size, tick=ctx.tick)
            timing = measure(inference_fn(scenario, int8, batches), ctx.plan, ctx.device,
                             samples_per_step=batches[0].size)
        done, left = layer_report(model, int8)
        extras: dict[str, Any] = {
            "api": API,
            "engine": torch.backends.quantized.engine,
            "quantized_layers": done,
            "float_layers": left,
            "size_fp32_bytes": state_dict_bytes(model),
            "size_int8_bytes": state_dict_bytes(int8),
            **agreement(scenario, model, int8, batches),
        }
        extras["size_ratio"] = extras["size_fp32_bytes"] / max(extras["size_int8_bytes"], 1)
        warnings_: list[str] = []
        if not done:
            warnings_.append("quantize_dynamic converted no layer; timings compare fp32 with itself")
        return self.ok(
            timing=timing,
            reference=reference,
            speedup=reference.median / timing.median if timing.median else None,
            speedup_basis="fp32 inference",
            peak_memory=peak.bytes,
            memory_method=peak.method,
            extras=extras,
            warnings=tuple(warnings_),
        )


@torch.no_grad()
def agreement(scenario: Scenario, fp32: nn.Module, int8: nn.Module, batches: list[Any]) -> dict[str, Any]:
    """Max abs output error and, for class scores, how often argmax agrees."""
    max_err = 0.0
    same = total = 0
    classes = True
    for batch in batches:
        a = first_tensor(call(scenario, fp32, batch)).float()
        b = first_tensor(call(scenario, int8, batch)).float()
        max_err = max(max_err, float((a - b).abs().max()))
        if a.dim() >= 2 and a.shape[-1] > 1:
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.argmax(-1).numel()
        else:
            classes = False
    return {
        "max_abs_error": max_err,
        "argmax_agreement": same / total if classes and total else None,
        "held_out_batches": len(batches),
    }
