"""Known errors become one line on stderr and an exit code: 0 ok, 1 run failed, 2 bad input, 130 interrupted.

An OSError that reaches the CLI (disk full, I/O error) is one line with the path and the cause, exit code 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from simcli.errors import SimcliError

EXIT_INTERRUPTED = 130


def format_error(message: str, hint: str | None = None) -> str:
    """One line: 'simcli: error: <message> (hint: <hint>)'."""
    line = f"simcli: error: {message}"
    return f"{line} (hint: {hint})" if hint else line


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn known errors into a one-line message and typer.Exit with the right code."""
    try:
        yield
    except SimcliError as exc:
        if os.environ.get("SIMCLI_DEBUG"):
            traceback.print_exc()
        print(format_error(exc.message, exc.hint), file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:  # a read or write the engine did not map itself (disk full, I/O error): not a bug
        if os.environ.get("SIMCLI_DEBUG"):
            traceback.print_exc()
        why = exc.strerror or str(exc) or type(exc).__name__
        print(format_error(f"{exc.filename}: {why}" if exc.filename else why), file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        print("simcli: interrupted; the last snapshot in the run directory is kept", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
