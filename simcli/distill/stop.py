"""A stop request: set by a signal handler, checked by the loop after each iteration (and once the set-up is done).

The engine installs nothing itself: the CLI points SIGTERM, SIGUSR1 and SIGINT at `StopRequest.handle` (and
restores the old handlers afterwards). The first signal only sets the flag; the loop finishes its iteration,
writes a state and a generator snapshot and raises simcli.errors.Stopped with the signal's exit code. A SIGINT
after that (a second Ctrl-C) raises KeyboardInterrupt at once, as Python's own handler would.
"""

from __future__ import annotations

import signal

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
    """Whether (and by which signal) the run was asked to stop at its next iteration boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        """Ask the run to stop (the first request's signal decides the exit code)."""
        if self.signum is None:
            self.signum = int(signum)

    def handle(self, signum: int, frame: object = None) -> None:
        """A signal handler: the first signal sets the flag; a SIGINT after any stop request aborts at once."""
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signum)

    @property
    def exit_code(self) -> int:
        return exit_code_of(self.signum) if self.signum is not None else 0

    @property
    def name(self) -> str:
        return signal_name(self.signum) if self.signum is not None else "request"
