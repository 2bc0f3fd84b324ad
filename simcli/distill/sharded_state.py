"""Sharded states (training.sharding fsdp): each process writes its shard of the networks and optimisers with
torch.distributed.checkpoint (DCP), and any number of processes, sharded or not, reads them back.

A sharded state is the folder state-<kimg>.dcp/ (simcli.rundir.layout): DCP's files (one per process, and the
.metadata that rank 0 writes once every process's shard is written) and header.pt, the counters, spec and
architecture. It is written as `.state-<kimg>.dcp.tmp-PID/` and renamed into place by rank 0 once DCP has finished,
so a state folder is complete or absent, as a state file is.

The tensors are saved and read with torch's state-dict helpers (torch.distributed.checkpoint.state_dict), whose keys
are the parameters' names whether the networks are sharded or not: a sharded state resumes on one process without
sharding, and a state file written without sharding resumes sharded (load_whole_state).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from simcli.errors import WriteFailed
from simcli.rundir.atomic import write_error
from simcli.rundir.layout import sharded_state_path
from simcli.rundir.snapshots import SHARDED_HEADER_FILE
from simcli.world import World

TRAINED = ("generator", "online")
NETWORKS = ("generator", "online", "ema")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def complete_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter of an Adam optimiser the state Adam gives it at its first gradient (step 0, zero moments)
    where it has none yet (a parameter that never had a gradient, or an optimiser not stepped yet), so that a sharded
    state holds an entry for every parameter and the entries to read are known before reading: Adam skips parameters
    without a gradient, so the added entries change nothing until they are first used, and then as Adam's own."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param not in optimizer.state or not optimizer.state[param]:
                optimizer.state[param] = {"step": torch.zeros((), dtype=torch.float32),
                                          "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                                          "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}


@contextlib.contextmanager
def all_trainable(nets: Any) -> Iterator[None]:
    """The trained networks' parameters marked trainable while the block runs (torch's state-dict helpers pass over
    the optimiser entries of frozen parameters, and the loop freezes the online model between its updates)."""
    flags = [(p, p.requires_grad) for name in TRAINED for p in getattr(nets, name).parameters()]
    for param, _ in flags:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def network_states(nets: Any, opts: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """The networks' and optimisers' state dicts keyed by parameter names (shards for sharded networks); every
    parameter has its optimiser entries (complete_adam_state)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    for optimizer in opts.values():
        complete_adam_state(optimizer)
    states: dict[str, Any] = {name: get_model_state_dict(getattr(nets, name)) for name in NETWORKS}
    with all_trainable(nets):
        for name in TRAINED:
            states[f"opt_{name}"] = get_optimizer_state_dict(getattr(nets, name), opts[name])
    return states


def save_sharded_state(run_dir: Path, images_seen: int, header: dict[str, Any], nets: Any,
                       opts: dict[str, torch.optim.Optimizer], world: World) -> Path:
    """Every process writes its shard into a temporary folder; rank 0 adds the header and renames the folder into
    place once all shards are written (a collective: every process calls it). Returns the state's folder."""
    import torch.distributed.checkpoint as dcp

    final = sharded_state_path(run_dir, images_seen)
    tmp = Path(world.broadcast(str(final.with_name(f".{final.name}.tmp-{os.getpid()}"))))
    try:
        if world.is_main:
            tmp.mkdir()
            with open(tmp / SHARDED_HEADER_FILE, "wb") as f:
                torch.save(header, f)
        world.barrier()
        dcp.save(network_states(nets, opts), checkpoint_id=str(tmp), no_dist=not _distributed())
        if world.is_main:
            _move_into_place(tmp, final)
        world.barrier()
    except WriteFailed:
        raise
    except Exception as exc:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        cause = write_error(exc, run_dir)
        if cause is None:
            raise
        raise WriteFailed(final, cause) from exc
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder to its name; a folder already there (the same images seen, written again) is
    moved aside first and removed after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.tmp-old-{os.getpid()}")
        final.rename(old)
    tmp.rename(final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_sharded_state(path: Path, nets: Any, opts: dict[str, torch.optim.Optimizer]) -> None:
    """Read a sharded state's tensors into the networks and optimisers, sharded or not, with any number of
    processes (every process calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    states = network_states(nets, opts)
    with warnings.catch_warnings():  # one process reading shards is what is meant here, not a mistake to warn of
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(states, checkpoint_id=str(path), no_dist=not _distributed())
    for name in NETWORKS:
        set_model_state_dict(getattr(nets, name), states[name])
    with all_trainable(nets):
        for name in TRAINED:
            set_optimizer_state_dict(getattr(nets, name), opts[name], states[f"opt_{name}"])


def named_optimizer_state(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimiser state dict keyed by parameter indices (torch.optim's own) re-keyed by parameter names, as torch's
    state-dict helpers take it; `names`: the network's parameter names in the optimiser's order."""
    return {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]],
    }


def load_whole_state(state: dict[str, Any], nets: Any, opts: dict[str, torch.optim.Optimizer]) -> None:
    """Read a state file written without sharding (every process holds it whole) into sharded networks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    whole = StateDictOptions(full_state_dict=True)
    for name in NETWORKS:
        set_model_state_dict(getattr(nets, name), state[name], options=whole)
    with all_trainable(nets):
        _load_whole_optimizers(state, nets, opts, whole)


def _load_whole_optimizers(state: dict[str, Any], nets: Any, opts: dict[str, torch.optim.Optimizer], whole: Any) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    for name in TRAINED:
        net = getattr(nets, name)
        params = dict(net.named_parameters())
        named = named_optimizer_state(state[f"opt_{name}"], list(params))
        for key, param in params.items():  # parameters that never had a gradient: Adam's first state (see above)
            named["state"].setdefault(key, {"step": torch.zeros((), dtype=torch.float32),
                                            "exp_avg": torch.zeros(param.shape, dtype=param.dtype),
                                            "exp_avg_sq": torch.zeros(param.shape, dtype=param.dtype)})
        complete_adam_state(opts[name])  # the shards the whole state is cut into
        set_optimizer_state_dict(net, opts[name], named, options=whole)
