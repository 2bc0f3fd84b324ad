"""A stop request: set by a signal handler, checked by the loop after each iteration (and once the set-up is done).

The engine installs nothing itself: the CLI points SIGTERM, SIGUSR1 and SIGINT at `StopRequest.handle` (and
restores the old handlers afterwards). The first signal only sets the flag; the loop finishes its iteration,
writes a state and a generator snapshot and raises simcli.errors.Stopped with the signal's exit code. A SIGINT
after that (a second Ctrl-C) raises KeyboardInterrupt at once, as Python's own handler would.

A time budget (`simcli distill --max-minutes`) is a stop request too: the loop asks `due_to_time_limit` after each
iteration whether what the next iteration and a snapshot need still fits before the deadline; when it does not,
the run stops the same way, with exit code 75 (EX_TEMPFAIL: "try again"), before the budget (and the job's time
limit behind it) runs out.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

TIME_LIMIT_EXIT_CODE = 75
"""Exit code of a run stopped by its time budget (sysexits' EX_TEMPFAIL): a job script requeues on it."""

STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None), signal.SIGINT) if s is not None)


def exit_code_of(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (143 SIGTERM, 130 SIGINT)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """Whether (and why: a signal or the time budget) the run was asked to stop at its next iteration boundary.

    `max_seconds`: the time budget, counted from the request's creation (the CLI creates it first thing, so
    loading the teacher counts); None: no budget. `clock`: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, max_seconds: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.signum: int | None = None
        self.time_limit = False
        self.clock = clock
        self.max_seconds = max_seconds
        self.deadline = None if max_seconds is None else clock() + max_seconds

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.time_limit

    def request(self, signum: int) -> None:
        """Ask the run to stop (the first request's signal decides the exit code)."""
        if not self.requested:
            self.signum = int(signum)

    def request_time_limit(self) -> None:
        """Ask the run to stop because its time budget is (nearly) spent (unless a signal asked first)."""
        if not self.requested:
            self.time_limit = True

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (negative once past it); None without a budget."""
        return None if self.deadline is None else self.deadline - self.clock()

    def due_to_time_limit(self, needed_seconds: float) -> bool:
        """Request a stop when fewer than needed_seconds remain (the next iteration plus a snapshot, with a margin);
        returns whether a stop is requested now, for whatever reason."""
        left = self.seconds_left()
        if left is not None and left < needed_seconds:
            self.request_time_limit()
        return self.requested

    def handle(self, signum: int, frame: object = None) -> None:
        """A signal handler: the first signal sets the flag; a SIGINT after any stop request aborts at once."""
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signum)

    @property
    def exit_code(self) -> int:
        if self.signum is not None:
            return exit_code_of(self.signum)
        return TIME_LIMIT_EXIT_CODE if self.time_limit else 0

    @property
    def name(self) -> str:
        if self.signum is not None:
            return signal_name(self.signum)
        if self.time_limit:
            return f"the time limit (--max-minutes {self.max_seconds / 60:g})"
        return "request"
