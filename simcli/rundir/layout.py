"""The names of everything in a run directory, and reading them back: the one place that spells them.

    config.json                     the resolved run spec (written before iteration 0)
    metrics.jsonl                   one JSON record per line (status, eval, spec_change)
    state-<kimg>.pt                 a resumable state, named by images seen
    state-<kimg>.dcp/               a sharded one (training.sharding fsdp): each process's shard, torch's
                                    distributed-checkpoint files, and header.pt with the counters and spec
    generator-<kimg>.safetensors    the EMA generator of that state (what `sample` and `eval` read)
    generator-best.safetensors      the EMA generator with the best in-training evaluation so far
    grid-<kimg>.png                 the EMA generator's sample grid at that snapshot
    teacher-grid.png                the teacher sampler's grid (once per run)
    teacher-fit.safetensors         the network fitted to an analytic teacher (reused by a resume)
    .simcli.lock                    the lock of the process that runs in the directory
    .simcli-write-probe             made and removed at once, to check the directory is writable
    .NAME.tmp-PID                   a file (or a sharded state's folder) being written, renamed to NAME when complete
                                    (simcli.rundir.atomic)
    discarded-<time>/               what --restart moved aside

<kimg> is thousands of images seen with three decimals, zero-padded so that names sort by images seen.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
BEST_GENERATOR_FILE = "generator-best.safetensors"
TEACHER_GRID_FILE = "teacher-grid.png"
TEACHER_FIT_FILE = "teacher-fit.safetensors"
LOCK_FILE = ".simcli.lock"
WRITE_PROBE_FILE = ".simcli-write-probe"
DISCARDED_PREFIX = "discarded-"

_TAG = r"(\d+\.\d{3})"
STATE_RE = re.compile(rf"^state-{_TAG}\.(pt|dcp)$")
SHARDED_STATE_SUFFIX = ".dcp"
GENERATOR_RE = re.compile(rf"^generator-{_TAG}\.safetensors$")
GRID_RE = re.compile(rf"^grid-{_TAG}\.png$")


def kimg_tag(images_seen: int) -> str:
    """File-name tag for a number of images seen: thousands with three decimals, zero-padded to sort."""
    return f"{images_seen / 1000:011.3f}"


def state_path(run_dir: Path, images_seen: int) -> Path:
    return Path(run_dir) / f"state-{kimg_tag(images_seen)}.pt"


def sharded_state_path(run_dir: Path, images_seen: int) -> Path:
    return Path(run_dir) / f"state-{kimg_tag(images_seen)}{SHARDED_STATE_SUFFIX}"


def is_sharded_state(path: Path) -> bool:
    return Path(path).suffix == SHARDED_STATE_SUFFIX


def remove_state(path: Path) -> None:
    """Delete a state file, or a sharded state's folder."""
    import shutil

    if Path(path).is_dir():
        shutil.rmtree(path)
    else:
        Path(path).unlink()


def generator_path(run_dir: Path, images_seen: int) -> Path:
    return Path(run_dir) / f"generator-{kimg_tag(images_seen)}.safetensors"


def grid_path(run_dir: Path, images_seen: int) -> Path:
    return Path(run_dir) / f"grid-{kimg_tag(images_seen)}.png"


def images_seen_of(path: Path) -> int:
    """Images seen from a state, generator or grid file name (ValueError for any other name)."""
    for pattern in (STATE_RE, GENERATOR_RE, GRID_RE):
        match = pattern.match(Path(path).name)
        if match:
            return round(float(match.group(1)) * 1000)
    raise ValueError(f"{Path(path).name} is not a state, generator or grid file name")


def state_step(path: Path, batch_size: int) -> int:
    """The iteration a state file was written at, from its name (images seen / batch size)."""
    return round(images_seen_of(path) / batch_size)


def newest_state(run_dir: Path, batch_size: int) -> tuple[Path, int] | None:
    """The newest state file and the iteration it was written at; None when there is none."""
    states = list_states(run_dir)
    return (states[-1], state_step(states[-1], batch_size)) if states else None


def generator_of_state(path: Path) -> Path:
    """The generator snapshot written with a state file."""
    return generator_path(Path(path).parent, images_seen_of(path))


def _listed(run_dir: Path, pattern: re.Pattern[str]) -> list[Path]:
    found = [p for p in run_dir.iterdir() if pattern.match(p.name)] if run_dir.is_dir() else []
    return sorted(found, key=images_seen_of)


def list_states(run_dir: Path) -> list[Path]:
    """State files and sharded states' folders, oldest first."""
    return _listed(Path(run_dir), STATE_RE)


def list_generators(run_dir: Path) -> list[Path]:
    """Generator snapshots (not generator-best), oldest first."""
    return _listed(Path(run_dir), GENERATOR_RE)


def list_grids(run_dir: Path) -> list[Path]:
    """The EMA generator's grids (not the teacher's), oldest first."""
    return _listed(Path(run_dir), GRID_RE)


def is_foreign(name: str) -> bool:
    """Whether a file in a directory without a run belongs to no run: anything but hidden files, folders moved aside
    and a teacher fit copied in from another run (which a new run reuses)."""
    return not (name.startswith((".", DISCARDED_PREFIX)) or name == TEACHER_FIT_FILE)
