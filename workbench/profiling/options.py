"""What one profile records: the schedule and the profiler's options."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import UsageError


@dataclass(frozen=True)
class ProfileOptions:
    wait: int = 1
    warmup: int = 1
    active: int = 3
    memory: bool = False  # profile_memory: [memory] events, memory curve
    shapes: bool = False  # record_shapes: input shapes in the operator table
    stack: bool = False  # with_stack (+ with_modules): Python stacks, nn.Module ranges
    gzip: bool = False

    def __post_init__(self) -> None:
        if self.wait < 0 or self.warmup < 0:
            raise UsageError(f"--wait and --warmup must be >= 0, got {self.wait} and {self.warmup}.")
        if self.active < 1:
            raise UsageError(f"--active must be >= 1 (steps recorded in the trace), got {self.active}.")

    @property
    def steps(self) -> int:
        return self.wait + self.warmup + self.active
