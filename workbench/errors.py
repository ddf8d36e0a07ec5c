"""Turning exceptions into one clear paragraph and an exit code (no UI imports).

Nothing here imports torch at module level: commands that must set
environment variables before torch loads (the profiler's log levels) can
import this module first.
"""

from __future__ import annotations

from workbench.report.files import OutputPathError


class UsageError(Exception):
    """A bad command-line value (unknown variant, steps <= 0 ...): exit 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is complete for a user (no traceback hint)."""
    import sys

    errors: list[type[BaseException]] = [UsageError, OutputPathError]
    # Only look at the scenario module if something already imported it: an
    # error raised by it implies it is loaded, and we never pull torch in here.
    scenario = sys.modules.get("workbench.scenario")
    if scenario is not None:
        errors.append(scenario.ScenarioError)
    distributed = sys.modules.get("workbench.distributed")
    if distributed is not None:
        errors.append(distributed.RankFailed)  # names the rank and its error already
    return tuple(errors)


def describe(exc: BaseException) -> tuple[str, int]:
    """The message a user sees and the exit code for an exception."""
    if isinstance(exc, user_errors()):
        return str(exc), 2
    return f"{type(exc).__name__}: {exc}", 2
