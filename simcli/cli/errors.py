"""Known errors become one line on stderr and an exit code: 0 ok, 1 run failed, 2 bad input, 130 interrupted.

A run stopped by a signal (simcli.errors.Stopped) is one 'simcli: stopped ...' line and the signal's code:
143 SIGTERM, 138 SIGUSR1 (SLURM's warning before the time limit: a job script can requeue on it), 130 SIGINT.
A run stopped by its time budget (`distill --max-minutes`) is the same kind of line with exit code 75
(EX_TEMPFAIL, simcli.distill.stop.TIME_LIMIT_EXIT_CODE): saved, run the same command again to resume.

An OSError that reaches the CLI (disk full, I/O error) is one line with the path and the cause, exit code 1; so is
running out of memory (MemoryError, torch's out-of-memory errors on the CPU or a GPU), with what to lower.

Under torchrun, processes that stop answering (simcli.peers.PeerLost) are named in one line by rank 0 (exit code 1;
the loop adds what it saved), or, when rank 0 is the one lost, by the lowest process still answering; the other
processes end quietly.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from simcli.errors import SimcliError, Stopped, UsageError
from simcli.peers import PeerFailed, PeerLost
from simcli.world import joined

EXIT_INTERRUPTED = 130


def format_error(message: str, hint: str | None = None) -> str:
    """One line: 'simcli: error: <message> (hint: <hint>)'."""
    line = f"simcli: error: {message}"
    return f"{line} (hint: {hint})" if hint else line


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn known errors into a one-line message and typer.Exit with the right code."""
    rank = _rank()
    try:
        yield
    except (UsageError, Stopped, PeerFailed) as exc:
        # Under torchrun rank 0 says what all processes share: a failure it reports to them (PeerFailed), a stop,
        # and bad input found before the processes joined (the same on all). Bad input found after joining may be
        # one process's alone (its own cache, its GPU): that process says it, naming its rank.
        if rank and (isinstance(exc, (Stopped, PeerFailed)) or not joined()):
            raise typer.Exit(exc.exit_code) from None
        if isinstance(exc, Stopped):  # not an error: one line saying what was saved and how to go on
            print(f"simcli: {exc.message}", file=sys.stderr)
        else:
            _print_error(exc.message, exc.hint, rank)
        raise typer.Exit(exc.exit_code) from None
    except PeerLost as exc:  # one process says it: rank 0, or the lowest one answering when rank 0 is lost
        if exc.report:
            _print_error(exc.message, exc.hint, rank)
        raise typer.Exit(exc.exit_code) from None
    except SimcliError as exc:
        _print_error(exc.message, exc.hint, rank)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:  # a read or write the engine did not map itself (disk full, I/O error): not a bug
        why = exc.strerror or str(exc) or type(exc).__name__
        _print_error(f"{exc.filename}: {why}" if exc.filename else why, None, rank)
        raise typer.Exit(1) from None
    except (MemoryError, RuntimeError) as exc:  # out of memory is the run failing, not a bug; other errors are bugs
        if not out_of_memory(exc):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        _print_error(f"out of memory{': ' + first if first else ''}", OOM_HINT, rank)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        interrupted("interrupted")


OOM_HINT = ("lower --batch-gpu (or --batch-size), or --set training.activation_checkpointing=true, or --precision bf16 "
            "on a GPU; for sample and eval, a smaller --batch-size")


def out_of_memory(exc: BaseException) -> bool:
    """Whether an error says an allocation failed: MemoryError, torch.OutOfMemoryError, the CPU allocator's refusal."""
    text = str(exc)
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "CUDA out of memory" in text)


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise, or when the variable is malformed)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _print_error(message: str, hint: str | None, rank: int = 0) -> None:
    """The one-line error (with the traceback first under SIMCLI_DEBUG); ranks other than 0 say which they are."""
    if os.environ.get("SIMCLI_DEBUG"):
        traceback.print_exc()
    print(format_error(f"rank {rank}: {message}" if rank else message, hint), file=sys.stderr)


def interrupted(message: str) -> NoReturn:
    """One line and exit code 130."""
    print(f"simcli: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_INTERRUPTED) from None


@contextmanager
def stop_on_signals(stop) -> Iterator[None]:
    """Point SIGTERM, SIGUSR1 and SIGINT at stop.handle (a simcli.distill.stop.StopRequest) while the block runs,
    then restore the previous handlers. Only in the main thread (signal.signal works nowhere else)."""
    import threading

    from simcli.distill.stop import STOP_SIGNALS

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, stop.handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
