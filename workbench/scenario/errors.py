"""The one error type of the scenario layer."""

from __future__ import annotations


class ScenarioError(Exception):
    """A scenario could not be loaded, built or run as the contract requires.

    ``path`` and ``line`` locate the problem when known; ``str(error)`` is a
    complete message for the user.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class ScenarioUnavailable(ScenarioError):
    """The scenario needs a package this machine does not have (``missing``).

    Not a bug in the scenario: ``list`` and ``check`` show it as skipped, with
    the package to install.
    """

    def __init__(self, message: str, *, missing: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message, path=path, line=line)
        self.missing = missing
