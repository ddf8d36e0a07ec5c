"""Turning exceptions into one clear paragraph and an exit code (no UI imports)."""

from __future__ import annotations

from workbench.report.files import OutputPathError


class UsageError(Exception):
    """A bad command-line value (unknown variant, steps <= 0 ...): exit 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [UsageError, OutputPathError]
    try:
        from workbench.scenario import ScenarioError

        errors.append(ScenarioError)
    except ImportError:  # pragma: no cover - torch missing
        pass
    return tuple(errors)


USER_ERRORS = _user_errors()


def describe(exc: BaseException) -> tuple[str, int]:
    """The message a user sees and the exit code for an exception."""
    if isinstance(exc, USER_ERRORS):
        return str(exc), 2
    return f"{type(exc).__name__}: {exc}", 2
