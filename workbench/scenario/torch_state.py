"""torch's process-wide settings a scenario's code may change, saved and put back.

User code runs in our process: a ``build()`` or a forward that calls
``torch.set_default_dtype(torch.float64)`` or ``torch.set_grad_enabled(False)`` changes
them for everything run after it. A command that runs several things on one scenario
(bench's rows) starts each from the settings it began with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TorchState:
    default_dtype: torch.dtype
    grad_enabled: bool
    anomaly: tuple[bool, bool]  # detect_anomaly on, and its check_nan
    deterministic: tuple[bool, bool]  # use_deterministic_algorithms on, and its warn_only
    threads: int  # intra-op threads: a forward's set_num_threads(1) would time every later row on one
    # Not the fp32 matmul precision: once a build() used the per-backend API, torch's one-value
    # getter raises ("a mix of the legacy and new APIs"), and setting it back would be the mix.

    @classmethod
    def now(cls) -> TorchState:
        return cls(
            default_dtype=torch.get_default_dtype(),
            grad_enabled=torch.is_grad_enabled(),
            anomaly=(torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
            deterministic=(torch.are_deterministic_algorithms_enabled(),
                           torch.is_deterministic_algorithms_warn_only_enabled()),
            threads=torch.get_num_threads(),
        )

    def changed(self) -> list[str]:
        """The settings that differ now from these, by name (for a note or a test)."""
        now = TorchState.now()
        return [name for name in ("default_dtype", "grad_enabled", "anomaly", "deterministic", "threads")
                if getattr(now, name) != getattr(self, name)]

    def restore(self) -> None:
        """Put every setting back (only those that changed: each setter is cheap, but not free)."""
        changed = self.changed()
        if "default_dtype" in changed:
            torch.set_default_dtype(self.default_dtype)
        if "grad_enabled" in changed:
            torch.set_grad_enabled(self.grad_enabled)
        if "anomaly" in changed:
            torch.set_anomaly_enabled(*self.anomaly)
        if "deterministic" in changed:
            torch.use_deterministic_algorithms(self.deterministic[0], warn_only=self.deterministic[1])
        if "threads" in changed:
            torch.set_num_threads(self.threads)
