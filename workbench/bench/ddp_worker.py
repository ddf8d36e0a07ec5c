"""One DDP rank under torchrun (or any launcher that sets the torch.distributed env).

    torchrun --nproc-per-node 2 -m workbench.bench.ddp_worker scenarios/cnn_image.py --steps 10
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --master-port 29500 \\
             --nproc-per-node 4 -m workbench.bench.ddp_worker scenarios/cnn_image.py --device cuda

Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the
environment (init_method env://), runs the same ``run_rank`` as
``workbench bench --variants ddp-N``, and prints one ``RANK_RESULT {json}``
line per rank; rank 0 also prints a summary. Exit code 2 for bad input,
1 when the rank failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict

from workbench.bench.ddp import DDPJob, run_rank
from workbench.bench.timing import Plan

REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.bench.ddp_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", help="scenario file or module, as for `workbench bench`")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="collective timeout, seconds")
    args = parser.parse_args(argv)

    missing = [k for k in REQUIRED_ENV if k not in os.environ]
    if missing:
        print(f"error: {', '.join(missing)} not set. Launch with torchrun "
              "(torchrun --nproc-per-node N -m workbench.bench.ddp_worker SCENARIO), "
              "or use `workbench bench SCENARIO --variants ddp-N` for a local run.", file=sys.stderr)
        return 2
    from workbench.scenario import ScenarioError, load_source, resolve_device

    try:
        source = load_source(args.scenario)
        device = resolve_device(args.device).type
        plan = Plan(warmup=args.warmup, steps=args.steps)
    except (ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    try:
        result = run_rank(rank, world, DDPJob(source, device, plan, timeout_s=args.timeout),
                          "env://", local_rank=local)
    except Exception as exc:
        print(f"error: rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("RANK_RESULT " + json.dumps(asdict(result)), flush=True)
    if rank == 0:
        import statistics

        step = statistics.median(result.samples)
        share = max(result.synced_s - result.local_s, 0.0) / result.synced_s if result.synced_s else 0.0
        print(f"ddp-{world} ({result.backend}): {step * 1e3:.1f} ms/step, "
              f"{result.shard_size * world / step:.0f} samples/s global, "
              f"exposed all-reduce ≈ {share:.0%} of fwd+bwd, final loss {result.final_loss:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
