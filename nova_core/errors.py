"""Errors a user sees: one or two sentences, what is wrong and what to do next."""

from __future__ import annotations


class NovaError(Exception):
    """An error meant for the user; the CLI prints it without a traceback.

    :param message: what is wrong.
    :param hint: what to do about it (optional, printed on its own line).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class NovaFileError(NovaError):
    """The NovaFile is invalid; carries every problem found, each with its location."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        count = len(problems)
        head = f"{path}: {count} error{'s' if count != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


class DriverNotFound(NovaError):
    """No installed distribution provides the requested driver."""


class DriverLoadError(NovaError):
    """The driver is installed but failed to import or initialise."""


class DriverConflict(NovaError):
    """Two distributions claim the same driver name."""


class StateError(NovaError):
    """The state database cannot be used (locked, newer schema, corrupt)."""


class ApplyError(NovaError):
    """A step of ``nova up`` / ``nova down`` failed; what was done is recorded."""
