"""A stop request: set by a signal handler, checked by the loop after each iteration (and once the set-up is done).

The engine installs nothing itself: the CLI points SIGTERM, SIGUSR1 and SIGINT at `StopRequest.handle` (and
restores the old handlers afterwards). The first signal only sets the flag; the loop finishes its iteration,
writes a state and a generator snapshot and raises simcli.errors.Stopped with the signal's exit code. A first
Ctrl-C is acknowledged at once on stderr (what happens next, and how to quit without saving), since the iteration
may take a while. A SIGINT after that (a second Ctrl-C) raises KeyboardInterrupt at once, as Python's own handler
would.

Under torchrun a stop is served while a collective waits too (simcli.world): when a process stops answering, rank
0 gives the collective up half-way through an iteration, and `LastFinished` puts back what that iteration had
already changed, so that the state it saves is the last finished iteration's.

A time budget (`simcli distill --max-minutes`) is a stop request too: the loop asks `due_to_time_limit` after each
iteration whether what the next iteration and a snapshot need still fits before the deadline; when it does not,
the run stops the same way, with exit code 75 (EX_TEMPFAIL: "try again"), before the budget (and the job's time
limit behind it) runs out.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

TIME_LIMIT_EXIT_CODE = 75
"""Exit code of a run stopped by its time budget (sysexits' EX_TEMPFAIL): a job script requeues on it."""

TORCHRUN_DUPLICATE_S = 0.25
"""Under torchrun a terminal's Ctrl-C reaches every process twice (from the terminal and passed on by torchrun): a
second SIGINT this soon after the first is that copy, not a second Ctrl-C."""

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

    def __init__(self, max_seconds: float | None = None, clock: Callable[[], float] = time.monotonic,
                 announce: Callable[[str], None] | None = None) -> None:
        self.signum: int | None = None
        self.time_limit = False
        self.clock = clock
        self.max_seconds = max_seconds
        self.deadline = None if max_seconds is None else clock() + max_seconds
        self.announce = announce if announce is not None else announce_on_stderr
        self.activity = "iteration"
        """What a stop waits for (the acknowledgement names it): the loop's iteration, or a step of the teacher fit."""
        self.asked_at: float | None = None  # when the first signal came (time.monotonic)
        try:
            several = int(os.environ.get("WORLD_SIZE", "1")) > 1
        except ValueError:
            several = False
        self.duplicate_window_s = TORCHRUN_DUPLICATE_S if several else 0.0

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
        """A signal handler: the first signal sets the flag (a first Ctrl-C is acknowledged at once); a SIGINT after
        any stop request aborts at once (under torchrun, not the copy of the first that torchrun passes on)."""
        if self.requested and signum == signal.SIGINT:
            if self.asked_at is not None and time.monotonic() - self.asked_at < self.duplicate_window_s:
                return  # torchrun passing on the terminal's Ctrl-C, which reached this process directly too
            raise KeyboardInterrupt
        first = not self.requested
        self.request(signum)
        if first:
            self.asked_at = time.monotonic()
        if first and signum == signal.SIGINT:
            # Not printed here: the handler may have interrupted a write to stderr (a reentrant write raises). A
            # thread waits for the stream's lock like any other writer, and the live table shows its line above.
            threading.Thread(target=self.announce, args=(self.acknowledgement(),), name="simcli-stop-ack",
                             daemon=True).start()

    def acknowledgement(self) -> str:
        """The line a first Ctrl-C prints at once."""
        return (f"simcli: Ctrl-C: stopping after this {self.activity} and saving; "
                "press Ctrl-C again to quit at once without saving")

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


def announce_on_stderr(text: str) -> None:
    """Print a line on stderr, on rank 0 only under torchrun (every process gets a terminal's Ctrl-C)."""
    if os.environ.get("RANK", "0") not in ("0", ""):
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: nothing to tell
        pass


class LastFinished:
    """Rank 0's copy of what an iteration changes before its last collective, taken as the iteration starts: the
    networks updated first, with their optimisers' state and loss scalers (in the loop's order, the online model;
    with online.sample_source generator-step, the generator too). When a stop or a lost process makes rank 0 give a
    collective up half-way through an iteration, `restore` puts the last finished iteration back, and the state
    saved is the one an uninterrupted run had at that iteration. It costs, per network kept, three copies of its
    parameters (weights and Adam's two moments) in the memory where they live.

    `parts`: (network, optimizer, loss scaler or None) for each network to keep."""

    def __init__(self, parts: list[tuple[Any, Any, Any]]) -> None:
        self.parts = parts
        self.step: int | None = None
        self.copies: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]] = []

    def keep(self, step: int) -> None:
        """Copy the parts as iteration `step` starts (before anything in it changes them)."""
        self.step = step
        self.copies = [
            ({k: v.detach().clone() for k, v in net.state_dict().items()}, copy.deepcopy(opt.state_dict()),
             dataclasses.asdict(scaler) if scaler is not None else None)
            for net, opt, scaler in self.parts
        ]

    def restore(self, step: int) -> bool:
        """Put the copies back when iteration `step` is the one they were taken at (it did not finish); returns
        whether they were (False: the iteration finished, nothing to undo)."""
        if self.step is None or step != self.step:
            return False
        for (net, opt, scaler), (weights, opt_state, scaler_state) in zip(self.parts, self.copies, strict=True):
            net.load_state_dict(weights)
            opt.load_state_dict(opt_state)
            if scaler is not None and scaler_state is not None:
                for key, value in scaler_state.items():
                    setattr(scaler, key, value)
        return True
