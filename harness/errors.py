"""Exceptions that carry meaning for the runner and the CLI.

Trials raise :class:`Unavailable` or :class:`Unsupported` to end a unit with that status and a
reason; the CLI turns :class:`UserError` into one clear line and exit code 2.
"""

from __future__ import annotations

from harness.results import Status


class UserError(Exception):
    """Bad input from the user (a suite, a parameter, a path). Printed as one line, exit code 2."""


def cannot_write(path: object, exc: OSError) -> UserError:
    """The one line for an ``--out`` file the OS refused (a directory, a file where a directory
    belongs, a read-only or missing place): the path it refused and why."""
    return UserError(f"--out: cannot write {exc.filename or path}: {exc.strerror or exc}")


class UnitStatusError(Exception):
    """Base for exceptions that end a unit with a specific, non-failure status."""

    status = Status.FAILED

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Unavailable(UnitStatusError):
    """The unit cannot run on this machine (no CUDA, backend not installed, dataset absent)."""

    status = Status.UNAVAILABLE


class Unsupported(UnitStatusError):
    """The combination is not supported (e.g. fp16 convolution on this CPU)."""

    status = Status.UNSUPPORTED


class UnitTimeout(Exception):
    """Raised inside a unit when its time limit is reached."""
