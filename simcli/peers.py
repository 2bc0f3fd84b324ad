"""Processes that stop answering, in a distributed run (simcli.world's collectives wait through this module).

Every process beats a counter in torchrun's store once a second from a thread, so a killed or stopped (SIGSTOP)
process falls silent while a busy one (rank 0 writing a snapshot, fitting a network) does not. Every collective runs
asynchronously and is waited for in short slices (`wait_for`); between them the waiting process reads the counters
and its stop request (simcli.distill.stop.StopRequest):
- rank 0 gives up when a process was silent for the collective timeout (`training.collective_timeout_min`), when
  the collective failed (a killed process closes its connections: the processes that stopped beating are named),
  or, once a stop was asked, as soon as a process is silent for STOP_SILENCE_S (or after STOP_WAIT_S in all). It
  raises PeerLost; the loop saves the last finished iteration and stops with one line naming the processes.
- the other processes wait for rank 0's verdict (it publishes it as it leaves the world) and then end quietly;
  when rank 0 itself falls silent, the lowest process still answering says so.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from simcli.errors import SimcliError

COLLECTIVE_TIMEOUT_MIN = 5.0
"""The default of training.collective_timeout_min: how long a process may be silent while others wait for it."""
BEAT_EVERY_S = 1.0
"""How often every process beats its counter in the store."""
SLICE_S = 0.5
"""A waiting collective looks at the stop request at least this often (a second Ctrl-C is served within it)."""
QUIET_S = 2.0
"""A collective that waited this long starts reading the counters (quicker ones never touch the store)."""
OBSERVE_S = 5.0
"""After a failed collective: how long to watch the counters to tell which processes stopped beating."""
STOP_SILENCE_S = 5.0
"""Once a stop is asked: a process silent this long is taken as hung, and rank 0 saves without it."""
STOP_WAIT_S = 20.0
"""Once a stop is asked: the longest rank 0 waits for a collective even while every process beats (torchrun kills
its workers 30 s after passing on a SIGTERM)."""
STORE_TIMEOUT_S = 10.0


class PeerFailed(SimcliError):
    """Another process of the run (rank 0) failed at a step all of them take together; that process reports why.

    Carries the failing process's exit code; the CLI exits with it without printing a second message."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class PeerLost(SimcliError):
    """This process gave up a collective: processes of the run stopped answering (killed or hung), or a stop was asked
    while a collective waited for a silent one. The world is not used again.

    `ranks`: the silent processes (empty when none could be told); `how`: what was seen; `stopped`: given up for the
    stop request (rank 0 saves and stops with the request's exit code, `exit_code`); `report`: this process says it
    (rank 0; when rank 0 is lost, the lowest process still answering). Exit code 1 otherwise."""

    exit_code = 1

    def __init__(self, ranks: Sequence[int], how: str, *, stopped: bool = False, report: bool = True,
                 exit_code: int = 1):
        self.ranks, self.how, self.stopped, self.report = tuple(ranks), how, stopped, report
        who = describe_ranks(self.ranks) if self.ranks else "a process of the run"
        super().__init__(f"{who} stopped answering (killed or hung): {how}",
                         hint=None if stopped else "run the same command again to resume")
        self.exit_code = exit_code

    def explained(self, more: str, hint: str | None = None) -> PeerLost:
        """The same, with `more` added to the message (what the run directory keeps, how to go on)."""
        out = PeerLost(self.ranks, self.how + more, stopped=self.stopped, report=self.report, exit_code=self.exit_code)
        out.hint = hint
        return out


def describe_ranks(ranks: Sequence[int]) -> str:
    """'rank 1', 'ranks 1 and 3', 'ranks 1, 2 and 5' (the first 8, then how many more)."""
    ranks = sorted(ranks)
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    shown = [str(r) for r in ranks[:8]] + ([f"{len(ranks) - 8} more"] if len(ranks) > 8 else [])
    return f"ranks {', '.join(shown[:-1])} and {shown[-1]}"


def _short(exc: BaseException) -> str:
    """A gloo/NCCL error in a few words: its first sentence without the source location."""
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    text = text.split(". ")[0].strip().rstrip(".")
    return (text or type(exc).__name__)[:160]


# ---------------------------------------------------------------------------------------------- the watch


class Watch:
    """This process's heartbeat in the store and its view of the others' (see the module's docstring)."""

    def __init__(self, rank: int, size: int, backend: str, timeout_s: float, stop: Any, store: Any, prefix: str):
        self.rank, self.size, self.backend, self.timeout_s, self.stop = rank, size, backend, timeout_s, stop
        self.store, self.prefix = store, prefix
        self.broken = False  # a collective was given up: the world is not used (nor torn down) again
        self.verdict: int | None = None  # rank 0: the exit code it gave up with, published as it leaves
        self._closed = threading.Event()
        self.store.add(self._beat_key(rank), 1)  # every process has a counter before join_world returns
        self._thread = threading.Thread(target=self._beat, name="simcli-heartbeat", daemon=True)
        self._thread.start()

    def _beat_key(self, rank: int) -> str:
        return f"{self.prefix}beat/{rank}"

    def _beat(self) -> None:
        key = self._beat_key(self.rank)
        while not self._closed.wait(BEAT_EVERY_S):
            try:
                self.store.add(key, 1)
            except Exception:  # the store is gone: the run is ending (or its host is lost: the others tell)
                return

    def beats(self, ranks: Sequence[int]) -> dict[int, int]:
        """The ranks' counters (adding 0 reads one without waiting for it to exist)."""
        return {r: int(self.store.add(self._beat_key(r), 0)) for r in ranks}

    def ended(self) -> int:
        """Rank 0's verdict once it left the world (its exit code), else 0."""
        return int(self.store.add(f"{self.prefix}ended", 0))

    def close(self, exit_code: int | None = None) -> None:
        """Stop beating. Rank 0 leaving on an error (`exit_code`) or after giving a collective up publishes its exit
        code: the others, which may wait in a collective for it, then end quietly with it."""
        code = self.verdict if self.verdict is not None else exit_code
        if self.rank == 0 and code is not None:
            try:
                self.store.add(f"{self.prefix}ended", max(1, int(code)))
            except Exception:
                pass
        self._closed.set()

    # ------------------------------------------------------------------ waiting

    def wait(self, work: Any) -> None:
        """Wait for an asynchronous collective; raise PeerLost (or PeerFailed) when giving it up."""
        start = time.monotonic()
        seen = _Silence(self, start)
        failure: BaseException | None = None
        stop_since: float | None = None
        try:
            while True:
                if failure is None:
                    try:
                        if self._finished(work):
                            return
                    except RuntimeError as exc:  # gloo: a connection closed or reset; NCCL: an error or abort
                        failure = exc
                else:
                    time.sleep(SLICE_S)
                now = time.monotonic()
                stopping = self.stop is not None and self.stop.requested
                if stopping and stop_since is None:
                    stop_since = now
                if failure is None and now - start < QUIET_S and not stopping:
                    continue
                if self.rank == 0:
                    self._judge_as_main(seen, failure, stop_since, now)
                else:
                    self._judge_as_other(seen, failure, stopping)
        except BaseException as exc:
            self.broken = True  # (a second Ctrl-C too: the collective is left unfinished)
            if self.rank == 0 and self.verdict is None:
                self.verdict = 130 if isinstance(exc, KeyboardInterrupt) else int(getattr(exc, "exit_code", 1))
            raise

    def _finished(self, work: Any) -> bool:
        """Whether the collective finished within a slice (raises its error when it failed)."""
        import datetime

        if self.backend == "gloo":
            try:
                return bool(work.wait(datetime.timedelta(seconds=SLICE_S)))
            except RuntimeError:
                if not work.is_completed():  # the slice ran out ("Operation timed out!"): still waiting
                    return False
                work.wait()  # finished meanwhile: returns, or raises its own error
                return True
        # NCCL: work.wait() does not block the CPU, so poll, sleeping a little longer each time
        deadline, pause = time.monotonic() + SLICE_S, 1e-4
        while time.monotonic() < deadline:
            if work.is_completed():
                work.wait()
                return True
            time.sleep(pause)
            pause = min(2 * pause, 0.01)
        return False

    def _give_up(self, exc: PeerLost) -> PeerLost:
        if self.rank == 0:
            self.verdict = exc.exit_code
        return exc

    def _judge_as_main(self, seen: _Silence, failure: BaseException | None, stop_since: float | None, now: float) -> None:
        others = range(1, self.size)
        if failure is not None:
            lost = seen.not_beating(others, OBSERVE_S)
            how = ("its connection closed" if len(lost) == 1 else "their connections closed") if lost else \
                f"a collective failed ({_short(failure)})"
            raise self._give_up(PeerLost(lost, how))
        silent = seen.silence(others)
        if stop_since is not None:
            hung = [r for r, s in silent.items() if s >= STOP_SILENCE_S]
            if hung or now - stop_since >= STOP_WAIT_S:
                how = (f"no sign of life for {max(silent[r] for r in hung):.0f} s" if hung else
                       f"every process answered, but a collective still waited {now - stop_since:.0f} s after the stop request")
                raise self._give_up(PeerLost(hung, how, stopped=True, exit_code=self.stop.exit_code))
        lost = [r for r, s in silent.items() if s >= self.timeout_s]
        if lost:
            raise self._give_up(PeerLost(lost, f"no sign of life for {max(silent[r] for r in lost):.0f} s "
                                               f"(training.collective_timeout_min {self.timeout_s / 60:g})"))

    def _judge_as_other(self, seen: _Silence, failure: BaseException | None, stopping: bool) -> None:
        code = self.ended()
        if code:  # rank 0 gave up and said why
            raise PeerFailed("rank 0 ended the run", code)
        limit = OBSERVE_S if failure is not None else STOP_SILENCE_S if stopping else self.timeout_s
        if seen.silence([0])[0] < limit:
            return  # rank 0 answers: it decides (a failure here reaches it too)
        code = self.ended()
        if code:
            raise PeerFailed("rank 0 ended the run", code)
        everyone = [r for r in range(self.size) if r != self.rank]
        lost = seen.not_beating(everyone, OBSERVE_S)
        answering = [r for r in range(self.size) if r not in lost]
        how = f"no sign of life for {seen.silence([0])[0]:.0f} s"
        raise PeerLost(lost if 0 in lost else [0, *lost], how, report=self.rank == min(answering))


class _Silence:
    """How long each process's counter has not moved, as seen by one waiting process since its wait began."""

    def __init__(self, watch: Watch, start: float):
        self.watch, self.start = watch, start
        self.last: dict[int, tuple[int, float]] = {}

    def silence(self, ranks: Sequence[int]) -> dict[int, float]:
        now = time.monotonic()
        try:
            beats = self.watch.beats(ranks)
        except Exception as exc:  # the store is gone with the process that held it
            raise PeerLost(_store_holders(), f"the run's store stopped answering ({_short(exc)})",
                           report=self.watch.rank == 1 or self.watch.rank == 0) from None
        out = {}
        for r, count in beats.items():
            before = self.last.get(r)
            if before is None:  # not known when it last moved: at the wait's start, or (read late) a little before now
                self.last[r] = (count, max(self.start, now - 2 * BEAT_EVERY_S))
            elif before[0] != count:
                self.last[r] = (count, now)
            out[r] = now - self.last[r][1]
        return out

    def not_beating(self, ranks: Sequence[int], within: float) -> list[int]:
        """The ranks whose counters do not move within `within` seconds (fewer seconds once all the others moved)."""
        try:
            first = self.watch.beats(ranks)
            deadline, pending = time.monotonic() + within, set(ranks)
            while pending and time.monotonic() < deadline:
                time.sleep(0.2)
                now = self.watch.beats(sorted(pending))
                pending = {r for r in pending if now[r] == first[r]}
        except Exception as exc:
            raise PeerLost(_store_holders(), f"the run's store stopped answering ({_short(exc)})",
                           report=self.watch.rank == 1 or self.watch.rank == 0) from None
        return sorted(pending)


def _store_holders() -> list[int]:
    """Who holds the store: torchrun's agent (not a rank) or, started without torchrun's agent, rank 0."""
    return [] if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true" else [0]


WATCH: list[Watch] = []
"""The watch of this process's joined world (simcli.world.join_world sets it, leave_world takes it)."""


def wait_for(work: Any) -> None:
    """Wait for an asynchronous collective: watched in a joined world, plainly otherwise."""
    if WATCH:
        WATCH[0].wait(work)
    else:
        work.wait()
