"""What a run directory keeps when a run stops or fails, and the repairs a resume makes (rank 0 only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.rundir.layout import (
    TEACHER_FIT_FILE,
    generator_of_state,
    generator_path,
    list_states,
    newest_state,
    remove_state,
    state_step,
)
from simcli.rundir.snapshots import load_generator_file, save_generator


def roll_back_streak(run_dir: Path, good_step: int, batch_size: int) -> str:
    """Remove the states (and their generator snapshots) written after iteration good_step, where a non-finite
    streak began (by an earlier process, before it was stopped), so a rerun starts before the streak; says what is kept."""
    removed = [s for s in list_states(run_dir) if state_step(s, batch_size) > good_step]
    for state in removed:
        generator_of_state(state).unlink(missing_ok=True)
        remove_state(state)
    left = newest_state(run_dir, batch_size)
    kept = (f"the last state before the streak, {left[0].name} (iteration {left[1]}), is kept"
            if left else f"no state from before the streak is left in {run_dir}")
    if removed:
        kept += f"; removed {', '.join(s.name for s in removed)}, written during the streak"
    return kept


def kept_after_stop(run_dir: Path, batch_size: int, in_streak: bool) -> tuple[str, str]:
    """(what the run directory keeps, how to go on) when a run stops without writing a new state."""
    newest = newest_state(run_dir, batch_size)
    if newest:
        why = " (no snapshot during a non-finite streak)" if in_streak else ""
        return (f"kept {newest[0].name} (iteration {newest[1]}) in {run_dir}{why}", "run the same command again to resume")
    fit = " (the teacher fit is saved in " + TEACHER_FIT_FILE + ")" if (run_dir / TEACHER_FIT_FILE).is_file() else ""
    return f"no state was written yet{fit}", "run the same command again to start"


def generator_damage(run_dir: Path, images_seen: int) -> str | None:
    """What is wrong with the generator snapshot of the state resumed from: 'missing', 'unreadable', or None."""
    path = generator_path(run_dir, images_seen)
    if not path.is_file():
        return "missing"
    try:
        load_generator_file(path)
    except UsageError:
        return "unreadable"
    return None


def repair_generator(run_dir: Path, images_seen: int, ema_state: dict[str, Any], meta: dict[str, Any], source: Path,
                     damage: str) -> str:
    """Rewrite the generator snapshot of the state resumed from (source), `damage` as generator_damage found it;
    says so."""
    path = generator_path(run_dir, images_seen)
    save_generator(path, ema_state, meta)
    return f"{path.name} was {damage}; rewrote it from {source.name}"
