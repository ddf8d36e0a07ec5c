"""Single-process training variants: fp32, AMP, accumulation, channels-last, compile, DataParallel."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from workbench.bench.context import BenchContext
from workbench.bench.results import Hardware, VariantResult
from workbench.bench.steps import accum_step_fn, train_step_fn
from workbench.bench.variants.base import Numerics, Prepared, Variant, run_training
from workbench.scenario import Batch, Scenario
from workbench.scenario.step import instrumented


@dataclass(frozen=True)
class FP32(Variant):
    name: str = "fp32"
    description: str = "baseline: float32 training step"

    def run(self, ctx: BenchContext) -> VariantResult:
        return run_training(self, ctx, lambda s, b: Prepared(train_step_fn(s, b)))

    def numerics(self, scenario: Scenario) -> Numerics:
        return Numerics(scenario.model, None, True)


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# What oneDNN raises when it has no kernel for an operation in the requested dtype.
NO_ONEDNN_KERNEL = "could not create a primitive descriptor"
LSTM_ADVICE = ("run this row on a GPU (--device cuda), or keep the LSTM in fp32 in your forward: "
               "`with torch.autocast('cpu', enabled=False): out, _ = self.lstm(x.float())`")


def short_dtype(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype).removeprefix("torch."))


def lstm_without_kernel(model: nn.Module, dtype: torch.dtype) -> tuple[str, str] | None:
    """(name, error) of the model's first ``nn.LSTM`` that CPU autocast to ``dtype`` cannot run, or None.

    nn.LSTM on CPU runs oneDNN's kernel, and on CPUs where this torch build's oneDNN has no
    bf16/fp16 LSTM (AVX2 CPUs without native bf16 among them) its forward raises "could not create a primitive
    descriptor" at once, with no fallback. Each LSTM runs one step of one sample, in eval mode
    without gradients and without its hooks (microseconds), first in fp32: only a failure
    that fp32 does not have counts.
    """
    for name, module in model.named_modules():
        if not isinstance(module, nn.LSTM):
            continue
        param = next(module.parameters(), None)
        if param is None or param.device.type != "cpu":
            continue
        x = torch.zeros(1, 1, module.input_size, dtype=param.dtype)
        with instrumented(module, train=False, grad=False):
            try:
                nn.LSTM.forward(module, x)
            except RuntimeError:
                continue  # fails in fp32 too: not a missing kernel; the row says what happens
            try:
                with torch.autocast("cpu", dtype):
                    nn.LSTM.forward(module, x)
            except RuntimeError as exc:
                return name or type(module).__name__, " ".join(str(exc).split(".")[0].split())
    return None


@dataclass(frozen=True)
class AMP(Variant):
    """Mixed precision. CUDA: fp16 + GradScaler (or bf16 without scaler). CPU: bf16."""

    name: str = "amp"
    description: str = "torch.autocast: fp16 + GradScaler on CUDA, bf16 on CPU"
    dtype: str = "auto"  # "auto" (fp16 on CUDA, bf16 on CPU), "bf16" or "fp16"

    def autocast_dtype(self, device: torch.device) -> torch.dtype:
        """The one rule for which dtype this row autocasts to on ``device``."""
        if self.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.bfloat16
        return torch.float16 if self.dtype == "fp16" else torch.bfloat16

    def applicable(self, scenario: Scenario, hardware: Hardware) -> str | None:
        if self.dtype == "bf16":
            if scenario.device.type != "cuda":
                return "on CPU `amp` already runs bf16; this row is for CUDA bf16"
            if not torch.cuda.is_bf16_supported():
                return f"{torch.cuda.get_device_name(scenario.device)} does not support bf16"
        if scenario.device.type == "cpu":  # cuDNN has fp16 and bf16 LSTMs; oneDNN not on every CPU
            dtype = self.autocast_dtype(scenario.device)
            missing = lstm_without_kernel(scenario.model, dtype)
            if missing is not None:
                name, error = missing
                short = short_dtype(dtype)
                return (f"`{name}` (nn.LSTM) cannot run under CPU {short} autocast: this torch build's oneDNN "
                        f"has no {short} LSTM kernel for this CPU (\"{error}\"); {LSTM_ADVICE}")
        return None

    def failure_advice(self, exc: BaseException, ctx: BenchContext) -> str | None:
        # The probe in applicable() covers nn.LSTM modules; this, the same gap met elsewhere
        # (an LSTM called through torch._VF, another oneDNN operation without the dtype).
        if ctx.device.type == "cpu" and NO_ONEDNN_KERNEL in str(exc):
            short = short_dtype(self.autocast_dtype(ctx.device))
            return (f"an operation here has no {short} kernel in this CPU's oneDNN (an LSTM under CPU "
                    f"{short} autocast is one): {LSTM_ADVICE}")
        return None

    def numerics(self, scenario: Scenario) -> Numerics:
        return Numerics(scenario.model, self.autocast_dtype(scenario.device), True)

    def run(self, ctx: BenchContext) -> VariantResult:
        cuda = ctx.device.type == "cuda"
        dtype = self.autocast_dtype(ctx.device)
        use_fp16 = dtype is torch.float16
        extras: dict[str, Any] = {"autocast_dtype": str(dtype).removeprefix("torch."),
                                  "api": f"torch.autocast('{ctx.device.type}')"}
        warnings: list[str] = []
        if use_fp16 and not cuda:
            warnings.append("fp16 autocast on CPU has few fast kernels: this row reproduces fp16 numerics "
                            "(and GradScaler's skipped steps), not a GPU's speed")
        elif not cuda and not cpu_has_native_bf16():
            warnings.append(
                "this CPU has no native bf16 (oneDNN reports none): autocast emulates it, "
                "expect a slowdown here and a speedup on CPUs with AVX512-BF16/AMX"
            )
        extras["native_bf16"] = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()

        def prepare(scenario: Scenario, batches: Sequence[Batch]) -> Prepared:
            if not use_fp16:
                return Prepared(train_step_fn(scenario, batches, autocast=dtype), extras=extras,
                                warnings=tuple(warnings))
            scaler = torch.amp.GradScaler(ctx.device.type)
            init_scale = scaler.get_scale()
            extras["grad_scaler"] = f"torch.amp.GradScaler('{ctx.device.type}')"

            def finish(out: dict[str, Any]) -> None:
                # The scale halves on every skipped step and doubles only after
                # growth_interval good steps, so while fewer steps than that
                # ran, log2(initial / final) counts the skipped steps without a
                # per-step sync inside the timed loop.
                final = scaler.get_scale()  # .item() inside: a sync, after timing
                out["grad_scale_final"] = final
                if ctx.plan.total < scaler.get_growth_interval() and final > 0:
                    out["gradscaler_skipped_steps"] = round(math.log2(init_scale / final))
                else:
                    out["gradscaler_skipped_steps"] = None

            return Prepared(train_step_fn(scenario, batches, autocast=dtype, scaler=scaler),
                            extras=extras, finish=finish, warnings=tuple(warnings))

        return run_training(self, ctx, prepare)


@dataclass(frozen=True)
class Accumulate(Variant):
    """Gradient accumulation at the same effective batch: micro-batch = batch / k."""

    name: str = "accum-4"
    description: str = "gradient accumulation: k micro-batches per optimizer step"
    k: int = 4

    def applicable(self, scenario: Scenario, hardware: Hardware) -> str | None:
        size = _first_batch_size(scenario)
        if size is not None and size < self.k:
            return f"a batch of {size} samples cannot be split into {self.k} micro-batches"
        return None

    def batch_note(self, ctx: BenchContext) -> str:
        return f"batch size {ctx.batch_size} (micro-batch {micro_batches(ctx.batch_size, self.k)})"

    def run(self, ctx: BenchContext) -> VariantResult:
        micro = ctx.batch_size / self.k
        return run_training(
            self, ctx,
            lambda s, b: Prepared(accum_step_fn(s, b, self.k),
                                  extras={"micro_batches": self.k, "micro_batch_size": micro,
                                          "micro_batch_sizes": micro_batch_sizes(ctx.batch_size, self.k),
                                          # Its normalisation sees each micro-batch alone: the loss
                                          # differs from fp32's by that, not only by rounding.
                                          "batchnorm_per_micro_batch": has_batchnorm(s.model)}),
        )


def micro_batch_sizes(batch: int, k: int) -> list[int]:
    """The sizes Batch.split gives ``k`` micro-batches of ``batch`` samples (differing by at most one)."""
    return [batch // k + (1 if i < batch % k else 0) for i in range(k)]


def micro_batches(batch: int, k: int) -> str:
    """'4', or '3, 3, 2' when ``batch`` does not divide by ``k``."""
    sizes = micro_batch_sizes(batch, k)
    return str(sizes[0]) if len(set(sizes)) == 1 else ", ".join(map(str, sizes))


def _first_batch_size(scenario: Scenario) -> int | None:
    size = getattr(scenario.data, "batch_size", None)
    return size if isinstance(size, int) else None


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@dataclass(frozen=True)
class ChannelsLast(Variant):
    name: str = "channels-last"
    description: str = "NHWC memory format for model and 4-D inputs"

    def applicable(self, scenario: Scenario, hardware: Hardware) -> str | None:
        if "cnn" in scenario.tags or has_conv2d(scenario.model):
            return None
        return "only for CNN scenarios (no Conv2d in the model and no 'cnn' tag)"

    def run(self, ctx: BenchContext) -> VariantResult:
        def to_nhwc(t: torch.Tensor) -> torch.Tensor:
            # Inputs are converted once, outside timing, like a loader would deliver them.
            return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

        def prepare(scenario: Scenario, batches: Sequence[Batch]) -> Prepared:
            scenario.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit it
            return Prepared(train_step_fn(scenario, batches))

        return run_training(self, ctx, prepare, convert=to_nhwc)


@dataclass(frozen=True)
class Compile(Variant):
    name: str = "compile"
    description: str = "torch.compile (inductor); compile time reported apart"

    def applicable(self, scenario: Scenario, hardware: Hardware) -> str | None:
        if not hasattr(torch, "compile"):
            return f"torch {torch.__version__} has no torch.compile"
        return None

    def run(self, ctx: BenchContext) -> VariantResult:
        if ctx.plan.warmup < 1:
            raise ValueError("compile needs at least one warm-up step (it compiles there)")

        def prepare(scenario: Scenario, batches: Sequence[Batch]) -> Prepared:
            compiled = torch.compile(scenario.model)

            def finish(out: dict[str, Any]) -> None:
                out["backend"] = "inductor"

            # Score with the plain module: same parameters, and eval mode would recompile.
            # torch.compile of a Module returns an OptimizedModule (a Module); typed as a callable.
            return Prepared(train_step_fn(scenario, batches, model=cast(nn.Module, compiled)), finish=finish)

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # Inductor imports torch.ao modules that warn about torch.jit.script_method:
            # torch's own noise, not the user's.
            warnings.filterwarnings("ignore", ".*torch.jit.script_method.*", DeprecationWarning)
            result = run_training(self, ctx, prepare)
        extras = dict(result.extras, wall_s=time.perf_counter() - t0)
        first = extras.get("first_step_s")
        if first is not None and result.timing is not None:
            # The first step traces and compiles; what it took beyond a normal step is compile time.
            extras["compile_s"] = max(first - result.timing.median, 0.0)
        return dataclasses.replace(result, extras=extras)


@dataclass(frozen=True)
class DataParallel(Variant):
    name: str = "dataparallel"
    description: str = "nn.DataParallel across all CUDA devices"

    def applicable(self, scenario: Scenario, hardware: Hardware) -> str | None:
        found = len(hardware.gpus)
        if found < 2:
            # nn.DataParallel with no GPUs silently runs the bare module: never report that.
            return f"needs ≥2 CUDA devices, found {found}"
        if scenario.device.type != "cuda":
            return f"runs on CUDA; this bench uses {scenario.device} (pass --device cuda)"
        return None

    def run(self, ctx: BenchContext) -> VariantResult:
        def prepare(scenario: Scenario, batches: Sequence[Batch]) -> Prepared:
            wrapped = nn.DataParallel(scenario.model)
            return Prepared(
                train_step_fn(scenario, batches, model=wrapped),
                extras={"device_ids": list(wrapped.device_ids)},
            )

        return run_training(self, ctx, prepare)
