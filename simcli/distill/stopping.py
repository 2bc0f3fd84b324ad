"""How a run stops: every process agrees on a stop request, and one line says where the run stopped, what it saved
(or what the run directory keeps) and how to go on; a process lost in a collective is named (simcli.peers).

RunStops is the part of simcli.distill.loop.Distillation that does this; it uses the run's progress, spec, world,
run directory, stop request and snapshot().
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from simcli.distill.recovery import kept_after_stop
from simcli.distill.stop import TIME_LIMIT_EXIT_CODE
from simcli.errors import RunFailed, Stopped
from simcli.peers import PeerLost
from simcli.rundir.layout import generator_path


class RunStops:
    """Stopping a run (see the module's docstring)."""

    progress: Any
    spec: Any
    world: Any
    run_dir: Path
    stop: Any
    started: Any
    device: Any
    last_finished: Any
    sharded: bool
    images_seen: int
    snapshot: Callable[[], Path]

    def _given_up(self, exc: PeerLost) -> NoReturn:
        """Rank 0 gave a collective up (simcli.world): it saves the last finished iteration and stops with one line
        naming the processes that stopped answering. The others end quietly, unless rank 0 is the one lost: then the
        lowest process still answering says so, with what the run directory keeps."""
        p, total = self.progress, self.spec.training.total_steps
        if not self.world.is_main:
            if not exc.report:
                raise exc
            what, how = kept_after_stop(self.run_dir, self.spec.training.batch_size, bool(p.nonfinite_consecutive))
            raise exc.explained(f", during iteration {p.step + 1} of {total}; {what}; {how}")
        unfinished = self.last_finished is not None and self.last_finished.restore(p.step)
        saved = None if p.nonfinite_consecutive or self.sharded else self.snapshot()
        if exc.stopped:
            self._stopped(saved, f" ({exc.message})")
        where = f"during iteration {p.step + 1}" if unfinished else f"after iteration {p.step}"
        if saved is not None:
            what = f"saved {saved.name}, the last finished iteration ({p.step})"
            how = f"run the same command again to resume from {saved.name}"
        else:
            what, how = kept_after_stop(self.run_dir, self.spec.training.batch_size, bool(p.nonfinite_consecutive))
            if self.sharded:
                what += " (a sharded state needs every process's shard: nothing newer could be saved)"
        raise RunFailed(f"{exc.message}, {where} of {total}; {what}; {how}")

    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop; every process then stops for the same reason (rank 0 decides the
        exit code when they differ), so none waits in a collective for the others."""
        code = self.world.max_int(self.stop.exit_code if self.stop.requested else 0, self.device)
        if code and not self.stop.requested:
            if code == TIME_LIMIT_EXIT_CODE:
                self.stop.request_time_limit()
            else:
                self.stop.request(code - 128)
        return code > 0

    def _stopped(self, saved: Path | None, why: str = "") -> NoReturn:
        """Raise Stopped with one line: what was saved (or is kept) and how to go on (`why`: added to where it stopped)."""
        p, how = self.progress, "run the same command again to resume"
        if p.step > self.started.start_step:
            where = f"at iteration {p.step} of {self.spec.training.total_steps}"
        else:
            where = "before its first iteration" + (f" (resuming at iteration {p.step})" if p.step else "")
        where += why
        if saved is not None:
            gen = generator_path(self.run_dir, self.images_seen).name
            what = f"saved {saved.name} (iteration {p.step}) and {gen} in {self.run_dir}"
        else:
            what, how = kept_after_stop(self.run_dir, self.spec.training.batch_size, bool(p.nonfinite_consecutive))
        raise Stopped(f"stopped by {self.stop.name} {where}: {what}; {how}", self.stop.exit_code)
