"""Run-directory snapshots: resumable states and slim generator files, named by images seen.

- `state-<kimg>.pt`: everything needed to resume (weights, optimiser states, counters); plain tensors and
  Python data only, so it loads with torch.load(weights_only=True).
- `generator-<kimg>.safetensors`: the EMA generator's weights with the run spec and architecture in the
  metadata; all that `sample` and `eval` need.
Both are written atomically (simcli.rundir.atomic), so an interrupted write never replaces a good file. Their names
are simcli.rundir.layout's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from simcli.errors import RunFailed, UsageError, WriteFailed
from simcli.rundir.atomic import atomic_write
from simcli.rundir.layout import (
    DISCARDED_PREFIX,
    is_sharded_state,
    list_generators,
    list_states,
    remove_state,
    state_path,
)
from simcli.rundir.network_file import GENERATOR_FORMAT, load_network_file, save_network_file

SHARDED_HEADER_FILE = "header.pt"
"""In a sharded state's folder: the counters, spec and architecture (what a state file holds besides tensors)."""
DCP_METADATA_FILE = ".metadata"
"""Written by torch.distributed.checkpoint once every process's shard is written: a folder without it is incomplete."""
SHARDED_STATE_KEY = "sharded_state"
"""In a loaded sharded state's dict: the folder its tensors are read from (simcli.distill.sharded_state)."""


def save_state(run_dir: Path, images_seen: int, state: dict[str, Any]) -> Path:
    """Atomically write a resumable state file."""
    path = state_path(run_dir, images_seen)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # through a Python file, so a full disk raises OSError (WriteFailed)
            torch.save(state, f)

    atomic_write(path, write)
    return path


def read_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A state file's contents (tensors and plain data only: weights_only); for a sharded state's folder, its header
    with the folder under SHARDED_STATE_KEY (the tensors are read into the networks when they are restored)."""
    if not is_sharded_state(path):
        return torch.load(path, map_location=map_location, weights_only=True)
    if not (path / DCP_METADATA_FILE).is_file():
        raise FileNotFoundError(f"{path.name} has no {DCP_METADATA_FILE}: its shards were not all written")
    header = torch.load(path / SHARDED_HEADER_FILE, map_location="cpu", weights_only=True)
    return {**header, SHARDED_STATE_KEY: str(path)}


def load_state_file(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A state's contents (read_state), or one line when it cannot be read."""
    try:
        return read_state(path, map_location)
    except Exception as exc:  # corrupt, truncated or not a state: one line
        raise RunFailed(f"cannot read state file {path} ({type(exc).__name__})",
                        hint="the run directory must be on a filesystem every process of the run can read") from None


def load_latest_state(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path, list[str]] | None:
    """Newest state that loads; returns (state, path, warnings about unreadable newer ones) or None."""
    warnings = []
    for path in reversed(list_states(run_dir)):
        try:
            return read_state(path, map_location), path, warnings
        except Exception as exc:  # a corrupt file: fall back to the previous one
            warnings.append(f"skipped unreadable {path.name} ({type(exc).__name__})")
    return None


def move_aside(run_dir: Path, paths: list[Path]) -> Path:
    """Move files into a new `discarded-<YYYYmmdd-HHMMSS>/` folder inside run_dir (nothing is deleted); returns it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = run_dir / f"{DISCARDED_PREFIX}{stamp}", 1
    while folder.exists():
        n += 1
        folder = run_dir / f"{DISCARDED_PREFIX}{stamp}-{n}"
    try:
        folder.mkdir()
        for path in paths:
            path.rename(folder / path.name)
    except OSError as exc:
        raise WriteFailed(folder, exc) from exc
    return folder


def prune_states(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` state files."""
    for path in list_states(run_dir)[:-keep]:
        remove_state(path)


def save_generator(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Atomically write generator weights with JSON-encoded metadata."""
    save_network_file(path, state_dict, metadata, GENERATOR_FORMAT)


def prune_generators(run_dir: Path, keep: int | None) -> list[Path]:
    """Keep the newest `keep` generator snapshots (None: all); generator-best is never pruned. Returns the removed."""
    if keep is None:
        return []
    removed = list_generators(run_dir)[:-keep]
    for path in removed:
        path.unlink()
    return removed


def resolve_generator_path(path: str | Path) -> Path:
    """A generator file, or the newest snapshot in a run directory."""
    path = Path(path)
    if path.is_dir():
        snapshots = list_generators(path)
        if not snapshots:
            raise UsageError(f"no generator snapshot in {path}", hint="run 'simcli distill' into it first")
        return snapshots[-1]
    if not path.is_file():
        raise UsageError(f"generator not found: {path}", hint="pass a run directory or a generator-*.safetensors file")
    return path


def load_generator_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a generator snapshot: (state_dict, decoded metadata)."""
    return load_network_file(path, GENERATOR_FORMAT)


READ_ATTEMPTS = 5


def read_generator(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """(state_dict, metadata, file) of a generator file, or of the newest snapshot in a run directory.

    A run with `logging.keep_generators` removes old snapshots while it writes new ones: a snapshot removed between
    listing the directory and reading it is not an error, the directory is listed again (the newer one is there)."""
    for _ in range(READ_ATTEMPTS):
        file = resolve_generator_path(path)
        try:
            tensors, meta = load_generator_file(file)
        except UsageError:
            if file.exists() or not Path(path).is_dir():
                raise
            continue  # pruned under us: list again
        return tensors, meta, file
    raise RunFailed(f"the newest generator snapshot in {path} was removed while being read, {READ_ATTEMPTS} times in a row",
                    hint="a run is replacing its snapshots faster than they can be read; run the command again")
