"""Errors that the engine raises and the CLI turns into one-line messages and exit codes.

Every layer may import this module; it imports nothing from simcli.
"""

from __future__ import annotations


class SimcliError(Exception):
    """Base class: a known failure with a one-line message and an optional hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(SimcliError):
    """Bad input from the user: unknown names, bad values, missing or malformed files. Exit code 2."""

    exit_code = 2


class RunFailed(SimcliError):
    """A run that started but could not go on (for example, too many non-finite steps). Exit code 1."""

    exit_code = 1


class WriteFailed(RunFailed, OSError):
    """The OS refused a write (disk full, I/O error, quota, ...); the file it was replacing is kept. Exit code 1.

    Also an OSError (with the cause's errno and strerror, and the path as filename), so code that handles
    OSError from a write keeps working.
    """

    def __init__(self, path: object, cause: OSError):
        why = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(
            f"cannot write {path}: {why}",
            hint="the files already there are kept; fix the cause and run the same command again",
        )
        self.errno, self.strerror, self.filename = cause.errno, cause.strerror, str(path)

    def __str__(self) -> str:
        return self.message


class Stopped(SimcliError):
    """The run stopped on a signal (SIGTERM, SIGUSR1, SIGINT) after finishing its iteration and saving a snapshot.

    Not a failure: the message says what was saved and how to go on; the exit code is the signal's (128 + its
    number: 143 for SIGTERM, 138 for SIGUSR1, 130 for SIGINT), which a job script can use to requeue the job.
    """

    def __init__(self, message: str, exit_code: int, hint: str | None = None):
        super().__init__(message, hint)
        self.exit_code = exit_code
