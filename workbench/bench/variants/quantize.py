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
from workbench.bench.variants.base import Numerics, Variant
from workbench.engine.params import own_and_shared, param_owners
from workbench.engine.probe import dense
from workbench.errors import UsageError
from workbench.scenario import Scenario
from workbench.scenario.outputs import output_loss, output_tensors

# What quantize_dynamic converts with its default configuration.
QUANTIZABLE: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell,
)
API = "torch.ao.quantization.quantize_dynamic (deprecated upstream for torchao; its warning is silenced)"

# torch's Transformer layers read their Linear layers' ``.weight`` for the fused fast path
# and feed them nested tensors under a padding mask; a dynamically quantized Linear has
# neither (``weight`` is a method, and quantized::linear_dynamic has no nested kernel).
_NEEDS_FLOAT_LINEAR: tuple[type[nn.Module], ...] = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def not_quantizable(model: nn.Module) -> str | None:
    """Why this model cannot be dynamically quantized at all, or None."""
    # The layers it would convert: their weights (and so their inputs) must be float32.
    weights = [p for m in model.modules() if isinstance(m, QUANTIZABLE) or is_hf_conv1d(m)
               for p in m.parameters(recurse=False)]
    other = sorted({str(p.dtype).replace("torch.", "") for p in weights
                    if p.is_floating_point() and p.dtype != torch.float32})
    if other:
        return (f"the model's weights are {', '.join(other)}: quantize_dynamic's int8 kernels take float32 "
                "weights and inputs; compare a .float() copy to try int8")
    if any(p.is_complex() for p in weights):
        return "the model has complex weights: quantize_dynamic has no complex int8 kernels"
    return None


def kept_float(model: nn.Module) -> dict[str, str]:
    """Quantizable layers deliberately left float: qualified name -> why."""
    kept: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, _NEEDS_FLOAT_LINEAR):
            for child_name, child in module.named_modules():
                if child_name and type(child) is nn.Linear:
                    kept[f"{name}.{child_name}" if name else child_name] = (
                        f"inside {type(module).__name__}, whose fast path reads float Linear weights "
                        "and passes nested tensors, which quantized Linear cannot take")
    return kept


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2 and kin): ``x @ weight + bias``, weight (in, out)."""
    kind = type(module)
    weight = getattr(module, "weight", None)
    return (kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers")
            and isinstance(weight, torch.Tensor) and weight.dim() == 2)


def conv1d_as_linear(model: nn.Module) -> list[str]:
    """Replace every HF ``Conv1D`` in ``model`` (a copy) by the ``nn.Linear`` it is.

    ``Conv1D`` computes ``x @ W + b`` with ``W`` of shape (in, out): an ``nn.Linear`` with
    weight ``W.T``, the same math, which quantize_dynamic then converts (it converts only
    ``nn.Linear``, so GPT-2 would otherwise keep every attention and MLP matmul float).
    A Conv1D whose weight another module shares is left as it is. Returns the names.
    """
    owners = param_owners(model)
    converted = []
    for name, module in list(model.named_modules()):
        if not is_hf_conv1d(module) or own_and_shared(module, name, owners)[1]:
            continue
        weight = module.weight.detach()
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=getattr(module, "bias", None) is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.t())
            if linear.bias is not None:
                linear.bias.copy_(module.bias.detach())
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, linear)
        converted.append(name)
    return converted


def quantize(model: nn.Module) -> nn.Module:
    """An int8 inference copy of ``model``; the original is untouched."""
    float_copy = copy.deepcopy(model).cpu().eval()
    conv1d_as_linear(float_copy)
    with warnings.catch_warnings():
        # quantize_dynamic (and importing its modules, which use torch.jit.script_method)
        # warns that it moves to torchao; the row names the API instead.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        import torch.ao.quantization

        spec: dict[Any, Any] = {t: torch.ao.quantization.default_dynamic_qconfig for t in QUANTIZABLE}
        spec.update({name: None for name in kept_float(float_copy)})  # a module name wins over its type
        return torch.ao.quantization.quantize_dynamic(float_copy, spec, dtype=torch.qint8)


def _why_float(name: str, module: nn.Module, kept: dict[str, str]) -> str:
    if name in kept:
        return kept[name]
    kind = type(module)
    if is_hf_conv1d(module):
        return "its weight is tied to another module's, so it was not converted to an nn.Linear copy"
    if isinstance(module, nn.Linear):
        return f"{kind.__name__} is a Linear subclass torch excludes from dynamic quantization"
    if isinstance(module, nn.MultiheadAttention):
        return "its input projection is a raw parameter, not a Linear"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "an embedding is a lookup, not a matmul; quantize_dynamic's default set leaves it float"
    return (f"{kind.__name__} is not among the types quantize_dynamic converts "
            "(Linear, LSTM, GRU, RNN cells)")


@dataclass(frozen=True)
class LayerReport:
    quantized: tuple[str, ...]  # 'name (Type→int8)'
    left_float: tuple[str, ...]  # 'name (Type)', layers that hold weights
    reasons: tuple[str, ...]  # one line per reason: 'N× Type (names…): why'
    matmul_reasons: tuple[str, ...]  # the same, for float layers with a matrix weight (the ones that cost)
    tied: tuple[str, ...]  # quantized layers whose weight another module shares, 'name ↔ owner'


def layer_report(float_model: nn.Module, quantized: nn.Module) -> LayerReport:
    """Which layers became int8, which stayed float (and why), which tied weights were split."""
    done, left = [], []
    groups: dict[tuple[str, str], list[str]] = {}
    matmul: set[tuple[str, str]] = set()
    float_modules = dict(float_model.named_modules())
    kept = kept_float(float_model)
    owners = param_owners(float_model)
    tied = []
    for name, module in quantized.named_modules():
        if not name:
            continue
        if name not in float_modules:
            continue  # helpers the conversion added, such as fc._packed_params
        original = float_modules[name]
        if ".quantized." in type(module).__module__:
            via = "→Linear" if is_hf_conv1d(original) else ""
            done.append(f"{name} ({type(original).__name__}{via}→int8)")
            _, shared = own_and_shared(original, name, owners)
            tied += [f"{name} ↔ {owner}" for owner in shared]
        elif any(True for _ in module.parameters(recurse=False)):
            left.append(f"{name} ({type(module).__name__})")
            key = (type(module).__name__, _why_float(name, module, kept))
            groups.setdefault(key, []).append(name)
            # Norm scales and biases are vectors and an embedding is a lookup: what a reader
            # wants named is a layer that multiplies by a matrix and stayed float.
            if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and any(
                    p.dim() >= 2 for p in module.parameters(recurse=False)):
                matmul.add(key)

    def line(key: tuple[str, str]) -> str:
        names = groups[key]
        return f"{len(names)}× {key[0]} ({', '.join(names[:3])}{' …' if len(names) > 3 else ''}): {key[1]}"

    return LayerReport(tuple(done), tuple(left), tuple(line(k) for k in groups),
                       tuple(line(k) for k in groups if k in matmul), tuple(tied))


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
        why = not_quantizable(scenario.model)
        if why is not None:
            return why
        if not any(isinstance(m, QUANTIZABLE) for m in scenario.model.modules()):
            return "no Linear/LSTM/GRU layers to quantize"
        return None

    def batch_note(self, ctx: BenchContext) -> str:
        return f"inference batch size {ctx.eval_batches[0].size}"

    def numerics(self, scenario: Scenario) -> Numerics:
        if scenario.device.type != "cpu":
            raise UsageError(f"{self.name} (dynamic quantization) runs on CPU only; use --device cpu.")
        why = not_quantizable(scenario.model)
        if why is not None:
            raise UsageError(f"{self.name}: {why}.")
        return Numerics(quantize(scenario.model), None, False)

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
        layers = layer_report(model, int8)
        extras: dict[str, Any] = {
            "api": API,
            "engine": torch.backends.quantized.engine,
            "quantized_layers": list(layers.quantized),
            "float_layers": list(layers.left_float),
            "float_reasons": list(layers.reasons),
            "size_fp32_bytes": state_dict_bytes(model),
            "size_int8_bytes": state_dict_bytes(int8),
            **agreement(scenario, model, int8, batches),
        }
        extras["size_ratio"] = extras["size_fp32_bytes"] / max(extras["size_int8_bytes"], 1)
        warnings_: list[str] = [f"left float: {line}" for line in layers.matmul_reasons]
        via = [q.split(" ")[0] for q in layers.quantized if "Conv1D→Linear" in q]
        if via:
            warnings_.append(f"{len(via)} transformers Conv1D layer(s) ({', '.join(via[:3])}{' …' if len(via) > 3 else ''}) "
                             "quantized as the nn.Linear they are (weight transposed, same math): "
                             "quantize_dynamic converts nn.Linear only")
        if not layers.quantized:
            warnings_.append("quantize_dynamic converted no layer; timings compare fp32 with itself")
        if layers.tied:
            warnings_.append(
                f"tied weights split: {', '.join(layers.tied)}; the int8 copy is stored besides the float "
                "weight its owner keeps, so the model grows by it"
                + (f" (size ÷{extras['size_ratio']:.2f})" if extras["size_ratio"] < 1 else ""))
        elif extras["size_ratio"] < 1:
            warnings_.append(f"the int8 state dict is larger than the fp32 one (÷{extras['size_ratio']:.2f}): "
                             "packed int8 weights carry scales and offsets, and little was quantized")
        if extras.get("compared"):
            warnings_.append(f"quality measured on the output field '{extras['compared']}'")
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


def main_output(output: Any) -> tuple[torch.Tensor, str]:
    """(the output tensor to score as a dense float tensor, its field name when the output
    also carries a loss the model computed, else "").

    What the model computed, not its loss: a ``ModelOutput`` with ``loss`` and ``logits`` is
    scored on the logits. A nested output is zero-padded (both sides are padded alike, so
    the padding agrees exactly and adds no error).
    """
    t = first_tensor(output)
    field = "" if output_loss(output)[0] is None else next(
        (n for n, v in output_tensors(output).items() if v is t), "")
    return dense(t)[0].float(), field


@torch.no_grad()
def agreement(scenario: Scenario, fp32: nn.Module, int8: nn.Module, batches: list[Any]) -> dict[str, Any]:
    """Max abs output error and, for class scores, how often argmax agrees."""
    max_err = 0.0
    same = total = 0
    classes = True
    compared = ""
    for batch in batches:
        a, compared = main_output(call(scenario, fp32, batch))
        b, _ = main_output(call(scenario, int8, batch))
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
        "compared": compared,
    }
