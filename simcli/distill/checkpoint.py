"""A run's snapshot points: the resumable state and the EMA generator's snapshot, whole (rank 0 writes them) or
sharded (every process writes its shard of the state; the generator is gathered on rank 0), and the grids drawn
after them."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from simcli.config.spec import RunSpec
from simcli.distill.outputs import Grids, generator_tensors, write_snapshot
from simcli.distill.setup import Networks
from simcli.distill.sharded_state import save_sharded_state
from simcli.distill.sharding import gathered
from simcli.distill.state import Progress, state_dict, state_header
from simcli.rundir.layout import state_path
from simcli.rundir.snapshots import save_state
from simcli.world import World


def save_checkpoint(run_dir: Path, spec: RunSpec, images_seen: int, meta: dict[str, Any], nets: Networks,
                    opts: dict[str, torch.optim.Optimizer], progress: Progress, world: World, sharded: bool
                    ) -> tuple[Path | None, Path]:
    """Write the state and the generator snapshot, keeping the newest only; returns (the generator snapshot, None on
    the processes other than rank 0, and the state's path, where rank 0 writes it). Every process calls it."""
    if not sharded and not world.is_main:
        return None, state_path(run_dir, images_seen)
    ema_state = generator_tensors(nets.ema, spec)  # sharded: gathered on rank 0

    def write_state() -> Path:
        if sharded:
            return save_sharded_state(run_dir, images_seen, state_header(spec, nets, progress), nets, opts, world)
        return save_state(run_dir, images_seen, state_dict(spec, nets, opts, progress))

    if not world.is_main:
        return None, write_state()
    return write_snapshot(run_dir, spec, images_seen, meta, write_state, ema_state)


def draw_grids(grids: Grids | None, nets: Networks, world: World, sharded: bool, images_seen: int) -> None:
    """Rank 0's grids of the EMA generator (and, once per run, of the teacher's sampler); a sharded run gathers the
    networks rank 0 draws with on every process first. Every process calls it."""
    if not sharded:
        if grids is not None:
            grids.write(nets.ema, images_seen)
        return
    with_teacher = world.broadcast(grids is not None and grids.needs_teacher())
    with gathered(nets.ema, world), gathered(nets.teacher, world) if with_teacher else nullcontext():
        if grids is not None:
            grids.write(nets.ema, images_seen)
