"""ddp-N: DistributedDataParallel with N local ranks (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, ClassVar

from workbench.bench.context import BenchContext
from workbench.bench.ddp import launch_local
from workbench.bench.results import Hardware, Timing, VariantResult
from workbench.bench.variants.base import Variant
from workbench.distributed import ddp_unavailable
from workbench.scenario import Scenario


@dataclass(frozen=True)
class DDPVariant(Variant):
    name: str = "ddp-2"
    description: str = "DistributedDataParallel, N local ranks, batch split across ranks"
    world_size: int = 2
    # A row fails when no rank reports (start-up, a step, a result) for this long.
    timeout_s: float = 120.0
    isolatable: ClassVar[bool] = False  # each rank measures its own peak

    def applicable(self, scenario: Scenario, hardware: Hardware) -> str | None:
        reason = ddp_unavailable(scenario.device.type, self.world_size, len(hardware.gpus))
        if reason is not None:
            return reason
        size = getattr(scenario.data, "batch_size", None)
        if isinstance(size, int) and size < self.world_size:
            return f"a batch of {size} samples cannot be split across {self.world_size} ranks"
        return None

    def batch_note(self, ctx: BenchContext) -> str:
        return f"global batch size {ctx.batch_size} ({ctx.batch_size / self.world_size:g} per rank)"

    def run(self, ctx: BenchContext) -> VariantResult:
        # The bench's own batches go to the ranks: a shuffled DataLoader drawn again there would
        # shuffle anew, and this row would train (and be scored) on other batches than fp32.
        ranks, wall = launch_local(ctx.source, self.world_size, ctx.device.type, ctx.plan,
                                   batches=ctx.batches, timeout_s=self.timeout_s, tick=ctx.tick)
        lead = ranks[0]
        # Ranks step in lockstep (the all-reduce waits for the slowest), so a
        # rank's step time is the global step time for the whole batch.
        timing = Timing(lead.samples, ctx.plan.block, ctx.batch_size, planned_steps=ctx.plan.steps,
                        timed_steps=lead.timed_steps, budget_s=ctx.plan.budget_s)
        digests = {r.param_digest for r in ranks}
        share = max(lead.synced_s - lead.local_s, 0.0) / lead.synced_s if lead.synced_s else 0.0
        per_rank: list[dict[str, Any]] = []
        for r in ranks:
            median = statistics.median(r.samples)
            per_rank.append({"rank": r.rank, "median_s": median, "samples_per_s": r.shard_size / median,
                             "samples": list(r.samples), "peak_memory": r.peak_memory,
                             "init_s": r.init_s})
        warnings = [] if len(digests) == 1 else [
            f"parameters differ across ranks after training ({len(digests)} distinct digests)"
        ]
        peaks = [r.peak_memory for r in ranks if r.peak_memory is not None]
        return self.ok(
            timing=timing,
            peak_memory=max(peaks) if peaks else None,
            memory_method=lead.memory_method,
            final_loss=lead.final_loss,
            steps_trained=ctx.plan.warmup + lead.timed_steps,
            extras={
                "backend": lead.backend,
                "world_size": self.world_size,
                "launcher": "torch.multiprocessing spawn, 127.0.0.1, free port",
                "threads_per_rank": 1 if ctx.device.type == "cpu" else None,
                "launch_wall_s": wall,
                "timeout_s": self.timeout_s,
                "allreduce_share": share,
                "fwd_bwd_synced_s": lead.synced_s,
                "fwd_bwd_no_sync_s": lead.local_s,
                "params_identical": len(digests) == 1,
                "per_rank": per_rank,
            },
            warnings=tuple(warnings),
        )
