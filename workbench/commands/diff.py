"""workbench diff SCENARIO: two variants layer by layer on identical batches; where do they part?"""

from __future__ import annotations

import argparse

NAME = "diff"
ORDER = 55
HELP = "compare two bench variants (fp32, amp, bf16, fp16, int8 ...) layer by layer: where do they diverge?"
DESCRIPTION = (
    "Build the scenario twice with the same seed (identical weights), run both variants in eval "
    "mode on the same batches, and compare every module's output (and, for training variants, every "
    "parameter's gradient): relative error, max |difference|, cosine. Names the first module, in "
    "execution order, past --threshold. Variants: every bench variant with numerics of its own: "
    "fp32, amp (bf16 on CPU, fp16 on CUDA), amp-bf16, amp-fp16, int8-dynamic (CPU, forward only), and "
    "the short names bf16, fp16, int8 for the last three. Exit codes: 0 within the threshold everywhere, "
    "1 past it somewhere, 2 bad input."
)


# The names workbench.bench.divergence.diff_variants() gives, and its default threshold (a test keeps
# them equal); spelled out for the help because importing the registry loads torch, and
# `workbench --help` must not. An unknown name is refused by compare_variants with the list.
VARIANTS = ("fp32", "amp", "amp-bf16", "amp-fp16", "int8-dynamic", "bf16", "fp16", "int8")
DEFAULT_THRESHOLD = 1e-2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario file, file.py:function or module")
    names = ", ".join(VARIANTS)
    p.add_argument("--a", default="fp32", metavar="VARIANT", help=f"the reference variant (default fp32): {names}")
    p.add_argument("--b", default="amp", metavar="VARIANT", help="the variant checked against it (default amp)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--batches", type=int, default=2, help="identical batches to compare on (default 2)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"relative error that counts as diverged (default {DEFAULT_THRESHOLD:g})")
    p.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")


def run(args: argparse.Namespace) -> int:
    from workbench.errors import exception_text
    from workbench.files import atomic_write_json, check_writable, scenario_inputs

    if args.json:
        check_writable(args.json, inputs=scenario_inputs(args.scenario))
    from workbench.report.text import plain_console

    from workbench.bench.divergence import VariantFailed, compare_variants
    from workbench.report.divergence import divergence_view
    from workbench.scenario import ScenarioError, load_source

    from workbench.isolation import ProcessGuard

    guard = ProcessGuard()  # the build and both sides' forwards may replace the std streams
    source = load_source(args.scenario)
    try:
        div = compare_variants(source, args.a, args.b, device=args.device, batches=args.batches,
                               threshold=args.threshold)
    except (ScenarioError, ValueError):
        raise
    except VariantFailed as exc:
        if exc.reference_ran:
            advice = (f"The {args.a} side ran the same batch, so it is {exc.variant} itself that fails here: an "
                      f"operation without a {exc.variant} kernel on {args.device} in this torch build (an LSTM "
                      "under CPU bf16 autocast is one). Compare another variant, or on a device that has it; "
                      "--verbose shows the traceback.")
        else:
            advice = "`workbench run` on the scenario shows whether it trains at all; --verbose shows the traceback."
        raise ScenarioError(f"{source.where}: the {exc.variant} side of {args.a} vs {args.b} raised {exc}. "
                            f"{advice}") from exc
    except RuntimeError as exc:
        raise ScenarioError(f"{source.where}: running {args.a} vs {args.b} raised {exception_text(exc)}. "
                            "--verbose shows the traceback.") from exc
    finally:
        guard.check()
    if args.json:  # before the table: a reader of stdout that leaves early (`| head`) ends the printing
        atomic_write_json(args.json, div.to_json(), schema="workbench.diff/1")
    plain_console().print(divergence_view(div))
    return 1 if div.diverged else 0
