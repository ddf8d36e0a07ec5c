"""StepError: a user exception raised inside one phase of a training step."""

from __future__ import annotations

import traceback

from workbench.engine.records import Phase


class StepError(Exception):
    """The scenario's own code raised during ``phase`` of ``step``.

    ``original`` is the user's exception and ``traceback_text`` its formatted
    traceback; the engine that raised this is still usable (history intact,
    the next call starts a fresh step).
    """

    def __init__(self, phase: Phase, step: int, original: BaseException) -> None:
        self.phase = phase
        self.step = step
        self.original = original
        self.traceback_text = "".join(
            traceback.format_exception(type(original), original, original.__traceback__)
        )
        super().__init__(
            f"step {step}, {phase.value} phase: {type(original).__name__}: {original}"
        )

    @property
    def user_frame(self) -> str | None:
        """'file:line in function' of the innermost frame outside torch and the engine."""
        frames = traceback.extract_tb(self.original.__traceback__)
        for frame in reversed(frames):
            name = frame.filename.replace("\\", "/")
            if "/torch/" in name or "/workbench/engine/" in name:
                continue
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
        return None
