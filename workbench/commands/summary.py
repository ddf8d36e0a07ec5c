"""workbench summary SCENARIO: a torchinfo-like model summary (shapes, params, FLOPs, bytes)."""

from __future__ import annotations

import argparse

NAME = "summary"
ORDER = 15
HELP = "model summary: per-layer output shape, parameters, FLOPs and activation bytes"
DESCRIPTION = (
    "One forward pass on the scenario's first batch (eval mode, no gradients; the model, "
    "BatchNorm statistics and RNG are left untouched) under torch.utils.flop_counter, then a "
    "table per layer: output shape, parameters, trainable, forward FLOPs (matmul/conv/"
    "attention), activation bytes; and totals."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario file, file.py:function or module")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--depth", type=int, default=None, help="hide layers nested deeper than this")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from workbench.errors import UsageError, exception_text, user_location
    from workbench.files import atomic_write_json, check_writable, scenario_inputs

    if args.depth is not None and args.depth < 0:
        raise UsageError(f"--depth must be >= 0, got {args.depth}.")
    if args.json:
        check_writable(args.json, inputs=scenario_inputs(args.scenario))


    from workbench.engine.summary import summarize
    from workbench.report.summary import summary_renderable
    from workbench.report.text import plain_console
    from workbench.scenario import ScenarioError, load

    from workbench.isolation import ProcessGuard

    guard = ProcessGuard()  # the build and the forward may replace the std streams
    scenario = load(args.scenario, args.device)
    try:
        summary = summarize(scenario)
    except ScenarioError:
        raise
    except Exception as exc:
        raise ScenarioError(
            f"{args.scenario}: the summary's forward pass raised {exception_text(exc)}"
            f"{f' at {at}' if (at := user_location(exc)) else ''}. "
            "Run `workbench run` on it for the traceback."
        ) from exc
    finally:
        guard.check()
    if args.json:  # before the table: a reader of stdout that leaves early (`| head`) ends the printing
        atomic_write_json(args.json, summary, schema="workbench.summary/1")
    plain_console().print(summary_renderable(summary, args.depth))
    return 0
