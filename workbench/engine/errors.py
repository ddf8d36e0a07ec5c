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
        import os

        import torch

        import workbench

        library = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (torch, workbench))
        frames = traceback.extract_tb(self.original.__traceback__)
        for frame in reversed(frames):
            if not frame.filename.startswith(library):
                return f"{frame.filename}:{frame.lineno} in {frame.name}"
        return None
