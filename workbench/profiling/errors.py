"""ProfileStepError: the user's code raised inside a phase range of the profiled loop.

A StepError (phase, step, the original exception, the user's frames) worded for
``workbench profile``: the scenario file and line, the profiler range it failed in
("dataloader": the forward phase's fetch of the batch, as in the engine) and, once
the profiler has flushed them, the traces of the steps before it. Its own module,
imported when a step fails: it imports torch (through the engine's errors) and
``profiling.loop`` must not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from workbench.engine.errors import StepError
from workbench.engine.records import Phase
from workbench.errors import exception_text, exit_description, is_user_exit

# The loop's range names are the engine's phases, but for "dataloader": the engine fetches a
# step's batch at the start of its forward phase, and so does this error (with data_loading).
_PHASE_OF_RANGE = {p.value: p for p in Phase}


class ProfileStepError(StepError):
    """The ``range_name`` phase range of ``step`` raised ``original``.

    ``where`` names the scenario (its file, or its name), ``path`` its file when it
    has one and ``line`` the innermost line of that file on the traceback (None when
    the scenario's own code is not on it, e.g. a torch loss that rejects the shapes).
    """

    def __init__(self, range_name: str, step: int, original: BaseException, *, where: str,
                 path: str | None) -> None:
        self.range_name = range_name
        self.where = where
        self.path = path
        self.kept = ""  # set by keep_traces
        super().__init__(_PHASE_OF_RANGE.get(range_name, Phase.FORWARD), step, original,
                         data_loading=range_name == "dataloader")

    @property
    def line(self) -> int | None:
        if self.path is None:
            return None
        real = os.path.realpath(self.path)
        mine = [f for f in self.frames if os.path.realpath(f.filename) == real]
        return mine[-1].lineno if mine else None

    def keep_traces(self, files: Sequence[Path], run_dir: Path) -> None:
        """Say that the steps before the failing one were traced (the profiler flushed them)."""
        self.kept = " " + kept_traces(files, run_dir)
        self.args = (self._message(),)

    def _message(self) -> str:
        line = self.line
        at = f"{self.where}:{line}" if line else self.where
        if is_user_exit(self.original):  # sys.exit(3), a BaseException of its own: said as the engine says it
            what = (f"{exit_description(self.original)}: user code must not end the workbench's process "
                    "(return or raise an exception instead)")
        else:
            what = f"raised {exception_text(self.original)}"
        return (f"{at}: the {self.range_name} phase of step {self.step} {what}. Fix the scenario "
                f"(run with --verbose for the full traceback).{self.kept}")


def kept_traces(files: Sequence[Path], run_dir: Path) -> str:
    """The sentence that says a failed profile's earlier steps are in ``files``."""
    names = ", ".join(str(f) for f in files)
    return (f"The steps before it were traced and kept (the failing step's range ends at the error): {names} "
            f"(workbench profile --analyze {run_dir}).")
